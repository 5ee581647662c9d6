r"""Recover the clean-sample prediction ``x0_hat`` from a denoiser's output, for each common parametrisation.

Notation: ``sample`` is the noisy input :math:`x_t` (unscaled, before any ``scale_model_input``),
``model_output`` the network's output, :math:`\bar\alpha_t` (``alpha_bar``) the cumulative signal
fraction of a variance-preserving (VP) schedule, :math:`\sigma` a noise level. No function clips its
result: clipping ``x0_hat`` lowers its variance and biases the hallucination score.

Scalars may be Python numbers or tensors; a 1-D tensor of length ``B`` gives one value per sample.
"""

from __future__ import annotations

from typing import Literal

import torch

from hallucfilter._checks import check_choice, check_real

__all__ = ["Prediction", "x0_from_edm", "x0_from_flow", "x0_from_sigma", "x0_from_vp"]

Prediction = Literal["epsilon", "v_prediction", "sample"]
_PREDICTIONS = ("epsilon", "v_prediction", "sample")


def _as_factor(name: str, value: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """Return ``value`` ready to broadcast against ``like`` (a per-sample 1-D tensor becomes (B, 1, ...))."""
    if not isinstance(value, torch.Tensor):
        return check_real(name, value)
    value = value.to(device=like.device, dtype=like.dtype)
    if value.dim() == 0:
        return value
    if value.dim() == 1 and value.shape[0] == like.shape[0]:
        return value.view(-1, *([1] * (like.dim() - 1)))
    raise ValueError(f"{name} must be a scalar or hold one value per sample (shape ({like.shape[0]},)), "
                     f"got shape {tuple(value.shape)}")


def _check_shapes(model_output: torch.Tensor, sample: torch.Tensor) -> None:
    if model_output.shape != sample.shape:
        raise ValueError(f"model_output has shape {tuple(model_output.shape)} but sample has {tuple(sample.shape)}; "
                         "split a learned-variance output (take the first half of the channels) first")


def x0_from_vp(model_output: torch.Tensor, sample: torch.Tensor, alpha_bar: float | torch.Tensor,
               prediction_type: Prediction = "epsilon") -> torch.Tensor:
    r"""``x0_hat`` for a VP schedule, :math:`x_t = \sqrt{\bar\alpha_t} x_0 + \sqrt{1 - \bar\alpha_t} \epsilon`.

    .. math::
        \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon}{\sqrt{\bar\alpha_t}} \ \text{(epsilon)},\quad
        \hat x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,\hat v \ \text{(v)},\quad
        \hat x_0 = \text{output} \ \text{(sample)}.

    (Ho et al. 2020, Eq. 15; Salimans & Ho 2022, Sec. 4 for v.)

    Args:
        model_output: Predicted noise, velocity or clean sample.
        sample: The noisy sample :math:`x_t`.
        alpha_bar: :math:`\bar\alpha_t` in ``(0, 1]``.
        prediction_type: What the model predicts.

    Returns:
        ``x0_hat`` with the shape of ``sample``.
    """
    check_choice("prediction_type", prediction_type, _PREDICTIONS)
    _check_shapes(model_output, sample)
    if prediction_type == "sample":
        return model_output
    ab = _as_factor("alpha_bar", alpha_bar, sample)
    if not isinstance(ab, torch.Tensor) and not 0.0 < ab <= 1.0:
        raise ValueError(f"alpha_bar must be in (0, 1], got {ab}")
    sqrt_ab = ab**0.5
    sqrt_1m_ab = (1 - ab) ** 0.5
    if prediction_type == "epsilon":
        return (sample - sqrt_1m_ab * model_output) / sqrt_ab
    return sqrt_ab * sample - sqrt_1m_ab * model_output


def x0_from_sigma(model_output: torch.Tensor, sample: torch.Tensor, sigma: float | torch.Tensor,
                  prediction_type: Prediction = "epsilon") -> torch.Tensor:
    r"""``x0_hat`` in the sigma (Karras / Euler) form, :math:`x = x_0 + \sigma \epsilon`.

    .. math::
        \hat x_0 = x - \sigma\hat\epsilon \ \text{(epsilon)},\quad
        \hat x_0 = \frac{x}{\sigma^2 + 1} - \frac{\sigma}{\sqrt{\sigma^2+1}}\,\hat v \ \text{(v)},\quad
        \hat x_0 = \text{output} \ \text{(sample)}.

    The v form is the VP one rewritten with :math:`\bar\alpha = 1 / (1 + \sigma^2)` on the unscaled sample
    (the convention of diffusers' Euler, Heun and LMS schedulers).

    Args:
        model_output: Predicted noise, velocity or clean sample.
        sample: The noisy sample at noise level ``sigma`` (not divided by :math:`\sqrt{\sigma^2+1}`).
        sigma: Noise level in ``[0, inf)``.
        prediction_type: What the model predicts.

    Returns:
        ``x0_hat`` with the shape of ``sample``.
    """
    check_choice("prediction_type", prediction_type, _PREDICTIONS)
    _check_shapes(model_output, sample)
    if prediction_type == "sample":
        return model_output
    s = _as_factor("sigma", sigma, sample)
    if prediction_type == "epsilon":
        return sample - s * model_output
    return sample / (s**2 + 1) - s / (s**2 + 1) ** 0.5 * model_output


def x0_from_flow(velocity: torch.Tensor, sample: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    r"""``x0_hat`` for rectified flow / flow matching, :math:`x_\sigma = (1-\sigma) x_0 + \sigma\epsilon`.

    The model predicts :math:`v = \epsilon - x_0`, so :math:`\hat x_0 = x_\sigma - \sigma \hat v`
    (Lipman et al. 2023; Esser et al. 2024, Eq. 2 with the diffusers sign convention).

    Args:
        velocity: The predicted velocity :math:`\hat v`.
        sample: The noisy sample :math:`x_\sigma`.
        sigma: Flow time in ``[0, 1]``.

    Returns:
        ``x0_hat`` with the shape of ``sample``.
    """
    _check_shapes(velocity, sample)
    s = _as_factor("sigma", sigma, sample)
    return sample - s * velocity


def x0_from_edm(model_output: torch.Tensor, sample: torch.Tensor, sigma: float | torch.Tensor,
                sigma_data: float = 0.5) -> torch.Tensor:
    r"""``x0_hat`` from a raw network output under EDM preconditioning (Karras et al. 2022, Eq. 7 and Table 1).

    .. math::
        D(x; \sigma) = c_{skip}(\sigma)\,x + c_{out}(\sigma)\,F, \quad
        c_{skip} = \frac{\sigma_d^2}{\sigma^2 + \sigma_d^2}, \quad
        c_{out} = \frac{\sigma\,\sigma_d}{\sqrt{\sigma^2 + \sigma_d^2}}.

    Args:
        model_output: The raw network output :math:`F` (computed on :math:`c_{in} x`).
        sample: The noisy sample :math:`x = x_0 + \sigma\epsilon`.
        sigma: Noise level in ``[0, inf)``.
        sigma_data: Standard deviation of the data, :math:`\sigma_d > 0`.

    Returns:
        ``x0_hat`` with the shape of ``sample``.
    """
    _check_shapes(model_output, sample)
    sigma_data = check_real("sigma_data", sigma_data, low=0.0, low_open=True)
    s = _as_factor("sigma", sigma, sample)
    denom = s**2 + sigma_data**2
    c_skip = sigma_data**2 / denom
    c_out = s * sigma_data / denom**0.5
    return c_skip * sample + c_out * model_output

"""Virtual adversarial training (VAT, Miyato et al., TPAMI 2018), conditional entropy and the VAADA objective.

Map from the papers to the code:
    ``p(y|x)`` clean prediction -> ``softmax(logits)``, held fixed (detached);
    ``d`` random unit direction, refined by ``power_iterations`` steps at radius ``xi``;
    ``r_adv = eps * d`` the virtual adversarial perturbation;
    ``LDS = KL(p(y|x) || p(y|x + r_adv))`` the local distributional smoothness -> :func:`vat_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from smoothopt._validation import check_int, check_real

__all__ = [
    "VAADALosses",
    "VAADAWeights",
    "conditional_entropy",
    "vaada_loss",
    "vat_loss",
    "virtual_adversarial_perturbation",
]

ModelFn = Callable[[Tensor], Tensor]


def _kl_from_logits(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """Per-sample ``KL(softmax(p) || softmax(q))`` in float32 (or the inputs' wider dtype)."""
    dtype = torch.promote_types(torch.promote_types(p_logits.dtype, q_logits.dtype), torch.float32)
    log_p = F.log_softmax(p_logits.to(dtype), dim=1)
    log_q = F.log_softmax(q_logits.to(dtype), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def _unit(d: Tensor) -> Tensor:
    """Scale each sample of ``d`` to unit L2 norm over all but the batch dimension."""
    norm = d.flatten(1).norm(dim=1).clamp_min(torch.finfo(d.dtype).tiny)
    return d / norm.view(-1, *([1] * (d.ndim - 1)))


def virtual_adversarial_perturbation(
    model: ModelFn,
    x: Tensor,
    logits: Tensor | None = None,
    *,
    xi: float = 1e-6,
    eps: float = 1.0,
    power_iterations: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""The virtual adversarial perturbation :math:`r_{adv} = \epsilon\, d` of each sample.

    :math:`d` approximates the dominant eigenvector of the Hessian of
    :math:`r \mapsto \mathrm{KL}(p(y|x) \,\|\, p(y|x + r))` at :math:`r = 0` by power iteration
    (VAT, Eq. 13): start from :math:`d \sim \mathcal{N}(0, I)` normalised, repeat
    :math:`d \leftarrow \nabla_r \mathrm{KL}\big|_{r = \xi d} / \lVert\cdot\rVert`.

    Args:
        model: Maps inputs to logits.
        x: Inputs.
        logits: ``model(x)`` if already computed (detached here); computed without grad otherwise.
        xi: Smallest finite-difference radius of the power iteration (see the note).
        eps: Radius of the final perturbation (L2 per sample); it depends on the input scale, so
            tune it per data set.
        power_iterations: Number of power iterations (VAT uses 1).
        generator: Source of the initial standard-normal direction.

    Returns:
        ``r_adv``, detached, same shape and dtype as ``x``.

    Note:
        The power iterations run with autocast disabled: at ``xi = 1e-6`` a half-precision forward
        would round the perturbation away and return a gradient of zeros or noise. For the same
        reason the radius used is ``max(xi, sqrt(machine_eps) * ||x_i||)`` per sample (about
        ``3.5e-4 * ||x_i||`` in float32), and a sample whose gradient still vanishes keeps its
        random direction. The model's
        BatchNorm statistics are updated by these forward passes; wrap the call to freeze them if
        that matters.
    """
    xi = check_real("xi", xi, 0.0, low_open=True)
    eps = check_real("eps", eps, 0.0)
    power_iterations = check_int("power_iterations", power_iterations, 1)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (N, ...), got shape {tuple(x.shape)}")
    out_dtype = x.dtype
    work = torch.promote_types(x.dtype, torch.float32) if x.is_floating_point() else torch.float32
    with torch.autocast(x.device.type, enabled=False):
        x = x.detach().to(work)
        if logits is None:
            with torch.no_grad():
                logits = model(x)
        p_logits = logits.detach()

        # Step 1: d ~ N(0, I), normalised per sample.
        draw_on = generator.device if generator is not None else x.device
        # NOTE: drawn in float32 whatever the working precision, so that the draws do not depend on it.
        d = _unit(torch.randn(x.shape, generator=generator, dtype=torch.float32, device=draw_on).to(x.device, work))

        # Step 2: the finite-difference radius, raised per sample to sqrt(machine eps) * ||x_i|| so
        # that x + xi d differs from x after rounding (the usual choice of a difference step).
        x_norm = x.flatten(1).norm(dim=1)
        radius = torch.clamp(x_norm * torch.finfo(work).eps ** 0.5, min=xi).view(-1, *([1] * (x.ndim - 1)))

        # Step 3: power iteration d <- grad_r KL(p || p(x + r)) at r = xi d, normalised (Eq. 13);
        # a sample whose gradient vanishes keeps its previous direction.
        for _ in range(power_iterations):
            r = (radius * d).requires_grad_(True)
            with torch.enable_grad():
                kl = _kl_from_logits(p_logits, model(x + r)).sum()
                (grad,) = torch.autograd.grad(kl, r)
            alive = (grad.flatten(1).norm(dim=1) > 0).view(-1, *([1] * (x.ndim - 1)))
            d = torch.where(alive, _unit(grad.detach()), d)

    # Step 4: r_adv = eps d (Eq. 12).
    return (eps * d).to(out_dtype)


def vat_loss(
    model: ModelFn,
    x: Tensor,
    logits: Tensor | None = None,
    *,
    xi: float = 1e-6,
    eps: float = 1.0,
    power_iterations: int = 1,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Virtual adversarial loss (local distributional smoothness) of a batch.

    .. math::
        \mathcal{L}_{vat} = \mathrm{KL}\big(p(y|x) \,\|\, p(y|x + r_{adv})\big)

    with :math:`p(y|x)` held fixed and :math:`r_{adv}` from :func:`virtual_adversarial_perturbation`.
    The gradient flows through the perturbed prediction only. The final forward runs under the
    caller's autocast setting; the KL is taken in float32.

    Args:
        model: Maps inputs to logits.
        x: Inputs.
        logits: ``model(x)``, if already computed.
        xi: Power-iteration radius.
        eps: Perturbation radius.
        power_iterations: Number of power iterations.
        generator: Source of the initial random direction.
        reduction: ``"mean"`` or ``"none"`` (per-sample KL).

    Returns:
        The loss.

    Shape:
        - x: ``(N, ...)``; logits: ``(N, C)``.
        - Output: scalar, or ``(N,)`` with ``reduction="none"``.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be one of 'mean', 'none'; got {reduction!r}")
    if logits is None:
        with torch.no_grad():
            logits = model(x)
    r_adv = virtual_adversarial_perturbation(model, x, logits, xi=xi, eps=eps,
                                             power_iterations=power_iterations, generator=generator)
    kl = _kl_from_logits(logits.detach(), model(x.detach() + r_adv))
    return kl.mean() if reduction == "mean" else kl


def conditional_entropy(logits: Tensor) -> Tensor:
    r"""Mean conditional entropy :math:`-\frac1N\sum_i \sum_c p_{ic} \log p_{ic}` of a batch, in float32.

    Shape:
        - logits: ``(N, C)``.
        - Output: scalar.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


@dataclass(frozen=True)
class VAADAWeights:
    """Weights of the VAADA objective (S3VAADA, Sec. 3.3); the defaults are the paper's."""

    vat_labelled: float = 1.0
    """VAT on the labelled stream (source and labelled target)."""
    vat_target: float = 0.01
    """VAT on the unlabelled target."""
    entropy_target: float = 0.01
    """Conditional entropy on the unlabelled target."""
    adversarial: float = 0.01
    """Domain-adversarial loss."""

    def __post_init__(self) -> None:
        for name in ("vat_labelled", "vat_target", "entropy_target", "adversarial"):
            check_real(name, getattr(self, name), 0.0)


class VAADALosses(NamedTuple):
    """The VAADA objective and its parts (the parts detached)."""

    total: Tensor
    cross_entropy: Tensor
    vat_labelled: Tensor
    vat_target: Tensor
    entropy_target: Tensor
    adversarial: Tensor


def vaada_loss(
    model: ModelFn,
    x_labelled: Tensor,
    y_labelled: Tensor,
    x_target: Tensor,
    *,
    logits_labelled: Tensor | None = None,
    logits_target: Tensor | None = None,
    adversarial_loss: Tensor | None = None,
    weights: VAADAWeights = VAADAWeights(),  # noqa: B008 (frozen dataclass)
    xi: float = 1e-6,
    eps: float = 1.0,
    power_iterations: int = 1,
    generator: torch.Generator | None = None,
) -> VAADALosses:
    r"""The VAADA training objective of S3VAADA.

    .. math::
        \mathcal{L} = \mathrm{CE}(x_l, y_l) + \lambda_{l}\,\mathcal{L}_{vat}(x_l)
        + \lambda_{t}\,\mathcal{L}_{vat}(x_t) + \lambda_{H}\,H(x_t) + \lambda_{adv}\,\mathcal{L}_{adv}

    with ``(x_l, y_l)`` the labelled stream (source and the labelled target so far), ``x_t`` the
    unlabelled target and the weights of :class:`VAADAWeights` (1, 0.01, 0.01, 0.01).

    Args:
        model: Maps inputs to logits.
        x_labelled: Labelled inputs.
        y_labelled: Their class indices.
        x_target: Unlabelled target inputs.
        logits_labelled: ``model(x_labelled)``, if already computed with grad.
        logits_target: ``model(x_target)``, if already computed with grad.
        adversarial_loss: The domain-adversarial loss (e.g. :class:`DANNLoss`) of this batch; 0 if None.
        weights: The weights.
        xi: VAT power-iteration radius.
        eps: VAT perturbation radius.
        power_iterations: VAT power iterations.
        generator: Source of VAT's random directions.

    Returns:
        The total (with grad) and its detached parts.
    """
    if y_labelled.shape != x_labelled.shape[:1]:
        raise ValueError(f"y_labelled must have shape {tuple(x_labelled.shape[:1])}, got {tuple(y_labelled.shape)}")
    z_l = model(x_labelled) if logits_labelled is None else logits_labelled
    z_t = model(x_target) if logits_target is None else logits_target
    ce = F.cross_entropy(z_l.float(), y_labelled)
    vat_l = vat_loss(model, x_labelled, z_l, xi=xi, eps=eps, power_iterations=power_iterations, generator=generator)
    vat_t = vat_loss(model, x_target, z_t, xi=xi, eps=eps, power_iterations=power_iterations, generator=generator)
    ent_t = conditional_entropy(z_t)
    adv = adversarial_loss if adversarial_loss is not None else ce.new_zeros(())
    total = (ce + weights.vat_labelled * vat_l + weights.vat_target * vat_t
             + weights.entropy_target * ent_t + weights.adversarial * adv)
    return VAADALosses(total, ce.detach(), vat_l.detach(), vat_t.detach(), ent_t.detach(), adv.detach())


"""Streaming (Welford) variance of the predicted clean sample over the last reverse steps.

Aithal et al., "Understanding Hallucinations in Diffusion Models through Mode Interpolation",
NeurIPS 2024, Sec. 5: a sample is likely hallucinated when the prediction ``x0_hat`` keeps moving
during the final steps of the reverse process. Its score is the population variance of ``x0_hat``
over a window of K steps, averaged over the sample's dimensions.

Map from the paper to the code: ``x0_hat`` (the clean-sample prediction at one step, the scheduler's
``pred_original_sample``), ``K`` (``last_k``), ``Var`` (``m2 / count``, Welford).
"""

from __future__ import annotations

import logging
import warnings
from typing import Literal

import torch

from hallucfilter._checks import check_choice, check_real
from hallucfilter.window import Window

__all__ = ["Reduction", "TrajectoryVariance"]

logger = logging.getLogger(__name__)

Reduction = Literal["mean", "max", "quantile"]
_REDUCTIONS = ("mean", "max", "quantile")
_DEFAULT_LAST_K = 10


class TrajectoryVariance:
    r"""Per-sample streaming variance of ``x0_hat`` over a window of the reverse process (Aithal et al. 2024).

    For each element of each sample, Welford's recurrence keeps the running mean and the sum of squared
    deviations of the ``x0_hat`` values seen inside the window, so memory is two tensors the size of one
    batch of samples however long the window is, and nothing is copied to the host until
    :meth:`scores` or :meth:`variance_map` is called. The score of sample :math:`b` is

    .. math::
        s_b = \frac{1}{D} \sum_{d=1}^{D} \frac{1}{K} \sum_{k=1}^{K}
              \bigl(\hat x_{0,b,d}^{(k)} - \bar x_{0,b,d}\bigr)^2,

    the population variance over the :math:`K` recorded steps averaged over the :math:`D` non-batch
    elements (``numpy.var(trajectory, axis=0).mean()`` on a stored trajectory). A higher score means the
    sample is more likely hallucinated.

    Args:
        last_k: Window by position: the last ``last_k`` steps of the schedule, the output step included.
            ``None`` (with no noise cut) records every update. Not used when ``timestep_below`` or
            ``sigma_below`` is given (leave it at its default or pass ``None``).
        timestep_below: Window by noise level: record steps whose timestep is ``< timestep_below``.
        sigma_below: Window by noise level: record steps whose sigma is ``< sigma_below``.
        dtype: Accumulation dtype; by default ``x0_hat``'s dtype promoted to at least float32.

    Raises:
        ValueError: If two window criteria are given or a bound is out of range.

    Note:
        In float32 the relative error of the variance grows like ``1e-7 * |x0_hat| / std``, ``std`` being
        how much ``x0_hat`` moves over the window; when it moves little compared with its magnitude (a
        random network gave ``|x0_hat| ~ 100``, ``std ~ 1e-3`` and errors near ``1e-4``), pass
        ``dtype=torch.float64``.

    Shape:
        - ``x0_hat``: :math:`(B, *)`, the same shape at every update.
        - :meth:`scores`: :math:`(B,)`; :meth:`variance_map`: :math:`(B, *)`.

    Example:
        >>> tracker = TrajectoryVariance(last_k=2)
        >>> for i, x0_hat in enumerate(torch.tensor([[0.0], [5.0], [1.0], [3.0]])):
        ...     _ = tracker.update(x0_hat[None], step=i, num_steps=4)
        >>> tracker.scores()
        tensor([1.])
    """

    def __init__(self, last_k: int | None = _DEFAULT_LAST_K, *, timestep_below: float | None = None,
                 sigma_below: float | None = None, dtype: torch.dtype | None = None) -> None:
        if timestep_below is not None or sigma_below is not None:
            if last_k not in (None, _DEFAULT_LAST_K):
                raise ValueError(f"last_k={last_k} conflicts with a noise-level window "
                                 f"(timestep_below={timestep_below}, sigma_below={sigma_below}); give only one")
            last_k = None
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.window = Window(last_k=last_k, timestep_below=timestep_below, sigma_below=sigma_below)
        self.dtype = dtype
        self.reset()

    @property
    def last_k(self) -> int | None:
        """The position window, or ``None`` for a noise-level window."""
        return self.window.last_k

    @property
    def count(self) -> int:
        """Number of steps recorded so far (the same for every sample)."""
        return self._count

    def reset(self) -> None:
        """Forget every recorded step (call it between sampling runs)."""
        self._count = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None
        self._finite: torch.Tensor | None = None

    def in_window(self, *, step: int | None = None, num_steps: int | None = None,
                  timestep: float | None = None, sigma: float | None = None) -> bool:
        """Whether a step with these coordinates would be recorded (see :class:`~hallucfilter.window.Window`)."""
        return self.window.contains(step=step, num_steps=num_steps, timestep=timestep, sigma=sigma)

    @torch.no_grad()
    def update(self, x0_hat: torch.Tensor, step: int | None = None, num_steps: int | None = None, *,
               timestep: float | None = None, sigma: float | None = None) -> bool:
        """Record ``x0_hat`` of one reverse step if that step lies in the window.

        Args:
            x0_hat: The clean-sample prediction of this step, unclipped.
            step: 0-based index of the reverse step in the sampling loop (needed by ``last_k``).
            num_steps: Number of reverse steps in the schedule (needed by ``last_k``).
            timestep: The step's timestep (needed by ``timestep_below``).
            sigma: The step's noise level (needed by ``sigma_below``).

        Returns:
            ``True`` if the step was recorded.

        Raises:
            TypeError: If ``x0_hat`` is not a floating tensor.
            ValueError: If the window is longer than the schedule, the step is out of range, the quantity the
                window needs is missing, or the shape differs from the steps recorded before.
        """
        if not isinstance(x0_hat, torch.Tensor) or not x0_hat.is_floating_point():
            raise TypeError(f"x0_hat must be a floating-point tensor, got {type(x0_hat).__name__}"
                            + (f" of dtype {x0_hat.dtype}" if isinstance(x0_hat, torch.Tensor) else ""))
        if x0_hat.dim() < 1:
            raise ValueError("x0_hat must have a batch dimension, got a 0-d tensor")
        if not self.window.contains(step=step, num_steps=num_steps, timestep=timestep, sigma=sigma):
            return False
        self._accumulate(x0_hat.detach())
        return True

    def _accumulate(self, x: torch.Tensor) -> None:
        # Welford (1962): for the n-th value x, delta = x - mean_{n-1}; mean_n = mean_{n-1} + delta / n;
        # M2_n = M2_{n-1} + delta * (x - mean_n). Non-finite values are flagged per sample, on device.
        if self._mean is None:
            dtype = self.dtype or torch.promote_types(x.dtype, torch.float32)
            self._mean = torch.zeros(x.shape, dtype=dtype, device=x.device)
            self._m2 = torch.zeros_like(self._mean)
            self._finite = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        elif x.shape != self._mean.shape:
            raise ValueError(f"x0_hat has shape {tuple(x.shape)} but earlier steps had {tuple(self._mean.shape)}; "
                             "the batch and sample shape must stay fixed within one sampling run (call reset())")
        assert self._m2 is not None and self._finite is not None
        x = x.to(self._mean.dtype)
        self._count += 1

        delta = x - self._mean
        self._mean.add_(delta, alpha=1.0 / self._count)
        self._m2.addcmul_(delta, x - self._mean)

        self._finite &= torch.isfinite(x).flatten(1).all(dim=1) if x.dim() > 1 else torch.isfinite(x)

    def _require_steps(self) -> None:
        if self._count == 0 or self._mean is None:
            raise RuntimeError("no step has been recorded yet: call update() inside the window (or run the "
                               f"sampler with the hook attached) before asking for scores; window: {self.window}")

    def mean_map(self) -> torch.Tensor:
        """Per-element mean of ``x0_hat`` over the recorded window, shape ``(B, *)``."""
        self._require_steps()
        assert self._mean is not None
        return self._mean.clone()

    def variance_map(self) -> torch.Tensor:
        """Per-element population variance of ``x0_hat`` over the recorded window, shape ``(B, *)``.

        Samples whose ``x0_hat`` was ever NaN or inf are filled with ``inf`` (with a warning).

        Raises:
            RuntimeError: If no step has been recorded.
        """
        self._require_steps()
        assert self._m2 is not None and self._finite is not None
        var = self._m2 / self._count
        bad = ~self._finite
        if bool(bad.any()):  # the one host synchronisation, when results are asked for
            idx = bad.nonzero().flatten().tolist()
            msg = f"x0_hat was NaN or inf for sample(s) {idx}; their scores are set to inf"
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            logger.warning(msg)
            var = var.clone()
            var[bad] = float("inf")
        return var

    def scores(self, reduction: Reduction = "mean", *, q: float = 0.99) -> torch.Tensor:
        """One hallucination score per sample: the variance map reduced over non-batch dimensions.

        Args:
            reduction: ``"mean"`` (the paper's score), ``"max"``, or ``"quantile"`` (the ``q`` quantile of the
                per-element variances, a top-quantile score for images where hallucinations are local).
            q: Quantile for ``reduction="quantile"``, in ``[0, 1]``.

        Returns:
            Scores of shape ``(B,)`` in the accumulation dtype; ``inf`` for samples with a non-finite ``x0_hat``.

        Raises:
            RuntimeError: If no step has been recorded.
            ValueError: If ``reduction`` or ``q`` is invalid.
        """
        check_choice("reduction", reduction, _REDUCTIONS)
        q = check_real("q", q, low=0.0, high=1.0)
        var = self.variance_map()
        if var.dim() == 1:
            return var
        var = var.flatten(1)
        if reduction == "mean":
            return var.mean(dim=1)
        if reduction == "max":
            return var.amax(dim=1)
        return torch.quantile(var, q, dim=1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.window}, count={self._count})"

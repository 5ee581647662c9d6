"""Focal loss (Lin et al., ICCV 2017, arXiv 1708.02002), multi-class, with per-class weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from smoothopt._validation import check_real
from smoothopt.losses._common import Reduction, WeightedLoss, check_logits_and_target, compute_dtype, weighted_reduce

__all__ = ["FocalLoss"]


class FocalLoss(WeightedLoss):
    r"""Focal loss of Lin et al. (2017): cross-entropy damped on well-classified samples.

    .. math::

        p_y = \operatorname{softmax}(z)_y, \qquad \ell(z, y) = -w_y (1 - p_y)^{\gamma} \log p_y.

    Note:
        The modulating factor :math:`(1 - p_y)^\gamma` is computed from the unweighted probability.
        The focal loss shipped with LDAM's code derives it from the *weighted* cross-entropy, so its
        factor changes with the class weights; that quirk is not reproduced here.

    Args:
        gamma: Focusing exponent, in ``[0, inf)``; ``0`` is cross-entropy. LDAM's code uses ``1``.
        weight: Per-class weights ``w``, shape ``(C,)``, or ``None``; change it between epochs with
            :meth:`set_weight`.
        reduction: ``"none"``, ``"mean"`` (divided by the sum of the selected weights, as in
            :func:`torch.nn.functional.cross_entropy`) or ``"sum"``.

    Raises:
        ValueError: If ``gamma`` is negative or ``reduction`` is unknown.

    Shape:
        - Input: logits ``(N, C)``, any floating dtype; fp16/bf16 are computed in float32.
        - Target: ``(N,)`` integer class indices in ``[0, C)``.
        - Output: scalar, or ``(N,)`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> from smoothopt.losses import FocalLoss
        >>> loss = FocalLoss(gamma=1.0)(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    """

    def __init__(
        self,
        gamma: float = 1.0,
        weight: Tensor | Sequence[float] | None = None,
        reduction: Reduction = "mean",
    ) -> None:
        self.gamma = check_real("gamma", gamma, 0.0)
        super().__init__(weight, reduction, num_classes=None)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the focal loss of ``logits`` against the class indices ``target``."""
        target = check_logits_and_target(logits, target, None if self.weight is None else self.weight.numel())
        dtype = compute_dtype(logits.dtype)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            z = logits.to(dtype)

            # 1. log p_y of the target class, from a stable log-softmax.
            log_p = -F.cross_entropy(z, target, reduction="none")

            # 2. Modulating factor (1 - p_y)^gamma. 1 - p_y is computed as -expm1(log p_y) for accuracy near
            #    p_y = 1 and kept above the smallest normal number so that gamma < 1 has a finite gradient.
            one_minus_p = (-torch.expm1(log_p)).clamp_min(torch.finfo(dtype).tiny)
            per_sample = -one_minus_p.pow(self.gamma) * log_p

            # 3. Weight by w_y and reduce like F.cross_entropy.
            return weighted_reduce(per_sample, target, self.weight, self.reduction)

    def extra_repr(self) -> str:
        """Summarise the settings for ``repr``."""
        return f"gamma={self.gamma}, " + super().extra_repr()

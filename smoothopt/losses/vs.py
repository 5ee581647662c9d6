"""Vector-scaling loss (Kini et al., NeurIPS 2021, arXiv 2103.01550) and its special cases.

Logit adjustment (Menon et al., ICLR 2021) is VS with ``gamma = 0``; class-dependent temperatures
(CDT, Ye et al., 2020) is VS with ``tau = 0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from smoothopt._validation import check_real
from smoothopt.losses._common import (
    Reduction,
    WeightedLoss,
    as_class_counts,
    check_logits_and_target,
    compute_dtype,
    weighted_reduce,
)

__all__ = ["CDTLoss", "LogitAdjustedLoss", "VSLoss"]


class VSLoss(WeightedLoss):
    r"""Vector-scaling loss of Kini et al. (2021): multiplicative and additive logit adjustment.

    Each logit is scaled by :math:`\Delta_j` and shifted by :math:`\iota_j` before cross-entropy:

    .. math::

        \Delta_j = \left(\frac{n_j}{n_{\max}}\right)^{\gamma}, \qquad
        \iota_j = \tau \log \pi_j, \quad \pi_j = \frac{n_j}{\sum_k n_k}, \qquad
        \ell(z, y) = -w_y \log \frac{e^{\Delta_y z_y + \iota_y}}{\sum_j e^{\Delta_j z_j + \iota_j}}.

    Code names: ``delta`` = :math:`\Delta`, ``iota`` = :math:`\iota`.

    Args:
        cls_num_list: Training images per class, ``n_j``; positive integers, one per class.
        gamma: Exponent of the multiplicative scale, in ``[0, inf)``; ``0`` gives logit adjustment.
        tau: Weight of the additive log-prior, in ``[0, inf)``; ``0`` gives CDT; both ``0`` give cross-entropy.
        weight: Per-class weights ``w``, shape ``(C,)``, or ``None``; change it between epochs with
            :meth:`set_weight`.
        reduction: ``"none"``, ``"mean"`` (divided by the sum of the selected weights, as in
            :func:`torch.nn.functional.cross_entropy`) or ``"sum"``.

    Raises:
        ValueError: If a count is not a positive integer, ``gamma`` or ``tau`` is negative, or
            ``reduction`` is unknown.

    Shape:
        - Input: logits ``(N, C)``, any floating dtype; fp16/bf16 are computed in float32.
        - Target: ``(N,)`` integer class indices in ``[0, C)``.
        - Output: scalar, or ``(N,)`` with ``reduction="none"``; float32 (float64 for float64 input).

    Example:
        >>> import torch
        >>> from smoothopt.losses import VSLoss
        >>> criterion = VSLoss([500, 50, 5], gamma=0.3, tau=1.0)
        >>> loss = criterion(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    """

    delta: Tensor
    iota: Tensor

    def __init__(
        self,
        cls_num_list: Sequence[int] | Tensor,
        gamma: float = 0.3,
        tau: float = 1.0,
        weight: Tensor | Sequence[float] | None = None,
        reduction: Reduction = "mean",
    ) -> None:
        counts = as_class_counts(cls_num_list)
        self.gamma = check_real("gamma", gamma, 0.0)
        self.tau = check_real("tau", tau, 0.0)
        super().__init__(weight, reduction, num_classes=counts.numel())
        delta = (counts / counts.max()).pow(self.gamma)
        iota = self.tau * torch.log(counts / counts.sum())
        self.register_buffer("delta", delta.to(torch.float32))
        self.register_buffer("iota", iota.to(torch.float32))
        if self.weight is not None:
            self.weight = self.weight.to(self.delta.device)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the VS loss of ``logits`` against the class indices ``target``."""
        target = check_logits_and_target(logits, target, self.num_classes)
        dtype = compute_dtype(logits.dtype)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            z = logits.to(dtype)

            # 1. Adjusted logits Delta_j * z_j + iota_j, the VS logits of Kini et al.
            z = self.delta.to(device=z.device, dtype=dtype) * z + self.iota.to(device=z.device, dtype=dtype)

            # 2. Per-sample cross-entropy, weighted by w_y and reduced like F.cross_entropy.
            per_sample = F.cross_entropy(z, target, reduction="none")
            return weighted_reduce(per_sample, target, self.weight, self.reduction)

    def extra_repr(self) -> str:
        """Summarise the settings for ``repr``."""
        return f"num_classes={self.num_classes}, gamma={self.gamma}, tau={self.tau}, " + super().extra_repr()


class LogitAdjustedLoss(VSLoss):
    r"""Logit-adjusted cross-entropy of Menon et al. (2021): :class:`VSLoss` with ``gamma = 0``.

    .. math::

        \ell(z, y) = -w_y \log \frac{e^{z_y + \tau \log \pi_y}}{\sum_j e^{z_j + \tau \log \pi_j}}.

    Args:
        cls_num_list: Training images per class; positive integers, one per class.
        tau: Weight of the log-prior, in ``[0, inf)``.
        weight: Per-class weights, shape ``(C,)``, or ``None``.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Shape:
        As :class:`VSLoss`.

    Example:
        >>> import torch
        >>> from smoothopt.losses import LogitAdjustedLoss
        >>> loss = LogitAdjustedLoss([90, 9, 1])(torch.randn(2, 3), torch.tensor([2, 0]))
    """

    def __init__(
        self,
        cls_num_list: Sequence[int] | Tensor,
        tau: float = 1.0,
        weight: Tensor | Sequence[float] | None = None,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__(cls_num_list, gamma=0.0, tau=tau, weight=weight, reduction=reduction)


class CDTLoss(VSLoss):
    r"""Class-dependent temperatures loss of Ye et al. (2020): :class:`VSLoss` with ``tau = 0``.

    .. math::

        \ell(z, y) = -w_y \log \frac{e^{\Delta_y z_y}}{\sum_j e^{\Delta_j z_j}}, \qquad
        \Delta_j = (n_j / n_{\max})^{\gamma}.

    Args:
        cls_num_list: Training images per class; positive integers, one per class.
        gamma: Exponent of the per-class scale, in ``[0, inf)``.
        weight: Per-class weights, shape ``(C,)``, or ``None``.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Shape:
        As :class:`VSLoss`.

    Example:
        >>> import torch
        >>> from smoothopt.losses import CDTLoss
        >>> loss = CDTLoss([90, 9, 1], gamma=0.2)(torch.randn(2, 3), torch.tensor([2, 0]))
    """

    def __init__(
        self,
        cls_num_list: Sequence[int] | Tensor,
        gamma: float = 0.3,
        weight: Tensor | Sequence[float] | None = None,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__(cls_num_list, gamma=gamma, tau=0.0, weight=weight, reduction=reduction)

"""LDAM: label-distribution-aware margin loss (Cao et al., NeurIPS 2019, arXiv 1906.07413)."""

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

__all__ = ["LDAMLoss"]


class LDAMLoss(WeightedLoss):
    r"""Label-distribution-aware margin loss of Cao et al. (2019).

    Each class ``j`` gets a margin proportional to :math:`n_j^{-1/4}`, rescaled so that the rarest
    class gets ``max_m``. The margin of the target class is subtracted from the target logit only,
    then every logit is multiplied by ``s`` and cross-entropy is taken:

    .. math::

        m_j = \text{max\_m} \cdot \frac{n_j^{-1/4}}{\max_k n_k^{-1/4}}, \qquad
        \ell(z, y) = -w_y \log \frac{e^{s (z_y - m_y)}}{e^{s (z_y - m_y)} + \sum_{j \ne y} e^{s z_j}}.

    Code names map to the paper as ``margins`` = :math:`m`, ``s`` = the scale, ``max_m`` = :math:`C`
    in the paper's :math:`m_j = C / n_j^{1/4}` once :math:`C` is fixed by the rarest class.

    Note:
        The margins and the scale ``s = 30`` assume logits in ``[-1, 1]``: use
        :class:`~smoothopt.losses.CosineClassifier` as the last layer. On a plain linear head the
        logits are unbounded, ``s`` multiplies them, and training diverges.

    Args:
        cls_num_list: Training images per class, ``n_j``; positive integers, one per class.
        max_m: Margin of the rarest class, in ``[0, inf)``. ``0`` with ``s = 1`` is cross-entropy.
        s: Logit scale, in ``(0, inf)``; 30 in the CIFAR-LT recipe.
        weight: Per-class weights ``w``, shape ``(C,)``, or ``None``. Change it between epochs with
            :meth:`set_weight` (deferred re-weighting).
        reduction: ``"none"``, ``"mean"`` (divided by the sum of the selected weights, as in
            :func:`torch.nn.functional.cross_entropy`) or ``"sum"``.

    Raises:
        ValueError: If a count is not a positive integer, ``max_m < 0``, ``s <= 0`` or ``reduction`` is unknown.

    Shape:
        - Input: logits ``(N, C)``, any floating dtype; fp16/bf16 are computed in float32.
        - Target: ``(N,)`` integer class indices in ``[0, C)``.
        - Output: scalar, or ``(N,)`` with ``reduction="none"``; float32 (float64 for float64 input).

    Example:
        >>> import torch
        >>> from smoothopt.losses import CosineClassifier, LDAMLoss
        >>> head = CosineClassifier(16, 3)
        >>> criterion = LDAMLoss([100, 10, 1], max_m=0.5, s=30.0)
        >>> loss = criterion(head(torch.randn(8, 16)), torch.tensor([0, 1, 2, 0, 0, 1, 0, 2]))
        >>> loss.shape
        torch.Size([])
    """

    margins: Tensor

    def __init__(
        self,
        cls_num_list: Sequence[int] | Tensor,
        max_m: float = 0.5,
        s: float = 30.0,
        weight: Tensor | Sequence[float] | None = None,
        reduction: Reduction = "mean",
    ) -> None:
        counts = as_class_counts(cls_num_list)
        self.max_m = check_real("max_m", max_m, 0.0)
        self.s = check_real("s", s, 0.0, low_open=True)
        margins = counts.pow(-0.25)
        margins = margins * (self.max_m / margins.max())
        super().__init__(weight, reduction, num_classes=counts.numel())
        self.register_buffer("margins", margins.to(torch.float32))
        if self.weight is not None:
            self.weight = self.weight.to(self.margins.device)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the LDAM loss of ``logits`` against the class indices ``target``."""
        target = check_logits_and_target(logits, target, self.num_classes)
        dtype = compute_dtype(logits.dtype)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            z = logits.to(dtype)

            # 1. Subtract the class margin m_y from the target logit only (the margin of Cao et al.).
            m_y = self.margins.to(device=z.device, dtype=dtype)[target]
            z = z - F.one_hot(target, z.shape[1]).to(dtype) * m_y.unsqueeze(1)

            # 2. Scale all logits by s and take the per-sample cross-entropy.
            per_sample = F.cross_entropy(self.s * z, target, reduction="none")

            # 3. Weight by w_y and reduce like F.cross_entropy.
            return weighted_reduce(per_sample, target, self.weight, self.reduction)

    def extra_repr(self) -> str:
        """Summarise the settings for ``repr``."""
        return f"num_classes={self.num_classes}, max_m={self.max_m}, s={self.s}, " + super().extra_repr()

"""Class-balanced weights (Cui et al., CVPR 2019) and deferred re-weighting (Cao et al., NeurIPS 2019)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from smoothopt._validation import check_int, check_real
from smoothopt.losses._common import as_class_counts, resolve_start_epoch

__all__ = ["DeferredReweighting", "class_balanced_weights"]


def class_balanced_weights(
    cls_num_list: Sequence[int] | Tensor, beta: float = 0.9999, *, dtype: torch.dtype = torch.float32
) -> Tensor:
    r"""Per-class weights from the effective number of samples of Cui et al. (2019).

    .. math::

        E_j = \frac{1 - \beta^{n_j}}{1 - \beta}, \qquad
        w_j = \frac{C \, E_j^{-1}}{\sum_k E_k^{-1}}, \qquad \sum_j w_j = C.

    ``beta = 0`` gives equal weights (all ones); ``beta -> 1`` approaches inverse class frequency.

    Args:
        cls_num_list: Training images per class, ``n_j``; positive integers, one per class.
        beta: Hyperparameter of the effective number, in ``[0, 1)``.
        dtype: Floating dtype of the result; the weights are computed in float64.

    Returns:
        The weights ``w``, shape ``(C,)``, on the CPU, summing to ``C``.

    Raises:
        ValueError: If a count is not a positive integer or ``beta`` is outside ``[0, 1)``.

    Example:
        >>> from smoothopt.losses import class_balanced_weights
        >>> w = class_balanced_weights([1000, 100, 10], beta=0.999)
        >>> round(float(w.sum()), 4)
        3.0
    """
    counts = as_class_counts(cls_num_list)
    beta = check_real("beta", beta, 0.0, 1.0, high_open=True)

    # 1. Inverse effective number (1 - beta) / (1 - beta^n); 1 - beta^n = -expm1(n log beta) keeps
    #    the digits that 1 - 0.9999^n would lose for small n.
    if beta == 0.0:
        inv_effective = torch.ones_like(counts)
    else:
        inv_effective = (1.0 - beta) / -torch.expm1(counts * math.log(beta))

    # 2. Normalise to sum to the number of classes.
    weights = inv_effective * (counts.numel() / inv_effective.sum())
    return weights.to(dtype)


class DeferredReweighting:
    r"""Deferred re-weighting (DRW) of Cao et al. (2019) as a schedule of per-class weights.

    Training is unweighted until the start epoch, then uses :func:`class_balanced_weights`:

    .. math::

        w(e) = \begin{cases} \text{None (unweighted)} & e < e_{\text{start}} \\
        \text{class\_balanced\_weights}(n, \beta) & e \ge e_{\text{start}} \end{cases}

    Epochs count from 0. With ``start`` a fraction, :math:`e_{\text{start}} =
    \operatorname{round}(\text{start} \cdot \text{total\_epochs})`: ``0.8`` of 200 epochs starts at
    epoch 160 (the CIFAR-LT recipe), ``2 / 3`` of 90 at epoch 60 (ImageNet-LT).

    Before the start :meth:`weights` returns ``None``, which is what the losses'
    ``set_weight`` and ``weight=`` take for "unweighted"; this equals all-ones weights for every
    reduction here and avoids building a tensor each epoch.

    Args:
        cls_num_list: Training images per class; positive integers, one per class.
        total_epochs: Length of training in epochs, in ``[1, inf)``.
        start: Start of re-weighting: a float in ``(0, 1)`` is a fraction of ``total_epochs``, an int in
            ``[0, total_epochs]`` is the epoch itself (``total_epochs`` = never).
        beta: ``beta`` of :func:`class_balanced_weights`, in ``[0, 1)``.

    Raises:
        TypeError: If ``start`` is neither an int nor a float.
        ValueError: If an argument is outside its range.

    Example:
        >>> from smoothopt.losses import DeferredReweighting, LDAMLoss
        >>> drw = DeferredReweighting([500, 50, 5], total_epochs=10, start=0.8)
        >>> criterion = LDAMLoss([500, 50, 5])
        >>> for epoch in range(10):
        ...     criterion.set_weight(drw.weights(epoch))
        >>> drw.start_epoch, drw.active(7), drw.active(8)
        (8, False, True)
    """

    def __init__(
        self,
        cls_num_list: Sequence[int] | Tensor,
        total_epochs: int,
        start: float | int = 0.8,
        beta: float = 0.9999,
    ) -> None:
        self.cls_num_list = [int(n) for n in as_class_counts(cls_num_list).tolist()]
        self.total_epochs = check_int("total_epochs", total_epochs, 1)
        self.beta = check_real("beta", beta, 0.0, 1.0, high_open=True)
        self.start_epoch = resolve_start_epoch(self.total_epochs, start)
        self.start = start
        self._weights = class_balanced_weights(self.cls_num_list, self.beta)

    def active(self, epoch: int) -> bool:
        """Return whether re-weighting is on at ``epoch`` (counted from 0)."""
        return check_int("epoch", epoch, 0) >= self.start_epoch

    def weights(self, epoch: int) -> Tensor | None:
        """Return the class weights for ``epoch`` (counted from 0): ``None`` before the start, else a new tensor.

        Raises:
            ValueError: If ``epoch`` is negative.
        """
        return self._weights.clone() if self.active(epoch) else None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={len(self.cls_num_list)}, total_epochs={self.total_epochs}, "
            f"start={self.start!r}, start_epoch={self.start_epoch}, beta={self.beta})"
        )

"""Per-class accuracy and its many / medium / few and head / tail summaries for long-tailed data."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from smoothopt._validation import check_int, check_real
from smoothopt.losses._common import as_class_counts

__all__ = ["group_accuracy", "head_tail_accuracy", "per_class_accuracy"]


def per_class_accuracy(preds_or_logits: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Top-1 accuracy of each class, as a fraction in ``[0, 1]``.

    Args:
        preds_or_logits: Predicted class indices ``(N,)`` (integer tensor), or scores ``(N, num_classes)``
            (floating point) whose argmax is the prediction.
        targets: True class indices, integer tensor of shape ``(N,)`` with values in ``[0, num_classes)``.
        num_classes: Number of classes ``C``, in ``[1, inf)``.

    Returns:
        Accuracy of each class, float64, shape ``(C,)``, on the CPU; NaN for a class with no sample in
        ``targets``.

    Raises:
        TypeError: If ``targets`` (or 1-D predictions) is not an integer tensor.
        ValueError: If the shapes disagree or an index is outside ``[0, num_classes)``.

    Example:
        >>> import torch
        >>> from smoothopt.evaluation import per_class_accuracy
        >>> per_class_accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 3)
        tensor([0.5000, 1.0000,    nan], dtype=torch.float64)
    """
    num_classes = check_int("num_classes", num_classes, 1)
    _check_indices("targets", targets, num_classes)
    if preds_or_logits.dim() == 2:
        if not preds_or_logits.is_floating_point():
            raise TypeError(f"2-D preds_or_logits must be floating-point scores, got dtype {preds_or_logits.dtype}")
        if preds_or_logits.shape[1] != num_classes:
            raise ValueError(
                f"preds_or_logits has {preds_or_logits.shape[1]} columns but num_classes is {num_classes}"
            )
        preds = preds_or_logits.argmax(dim=1)
    else:
        _check_indices("preds_or_logits", preds_or_logits, num_classes)
        preds = preds_or_logits
    if preds.shape[0] != targets.shape[0]:
        raise ValueError(f"preds_or_logits has {preds.shape[0]} samples but targets has {targets.shape[0]}")
    targets = targets.detach().cpu().long()  # uint8 labels must not index as a mask
    correct = (preds.detach().cpu().long() == targets).to(torch.float64)
    hits = torch.bincount(targets, weights=correct, minlength=num_classes)
    totals = torch.bincount(targets, minlength=num_classes).to(torch.float64)
    return hits / totals  # 0 / 0 = NaN marks a class absent from targets


def group_accuracy(
    per_class_acc: Tensor | Sequence[float],
    cls_num_list: Sequence[int] | Tensor,
    many_threshold: int = 100,
    few_threshold: int = 20,
) -> dict[str, float]:
    """Mean per-class accuracy over the many-, medium- and few-shot classes (the ImageNet-LT split).

    A class with ``n`` training images is *many* if ``n > many_threshold``, *few* if
    ``n < few_threshold`` and *medium* otherwise (more than 100 / 20-100 / fewer than 20 by default).
    Each group's accuracy is the unweighted mean over its classes, skipping classes whose accuracy is
    NaN (no test sample); an empty group gives NaN.

    Args:
        per_class_acc: Accuracy of each class, shape ``(C,)``, e.g. from :func:`per_class_accuracy`.
        cls_num_list: Training images per class; positive integers, one per class.
        many_threshold: Classes with more training images than this are many-shot.
        few_threshold: Classes with fewer training images than this are few-shot; at most
            ``many_threshold + 1``.

    Returns:
        ``{"many": ..., "medium": ..., "few": ...}``, floats on the scale of ``per_class_acc``.

    Raises:
        ValueError: If the lengths disagree or the thresholds are out of order.

    Example:
        >>> from smoothopt.evaluation import group_accuracy
        >>> group_accuracy([0.75, 0.5, 0.25], [500, 50, 5])
        {'many': 0.75, 'medium': 0.5, 'few': 0.25}
    """
    acc, counts = _acc_and_counts(per_class_acc, cls_num_list)
    many_threshold = check_int("many_threshold", many_threshold, 0)
    few_threshold = check_int("few_threshold", few_threshold, 0, many_threshold + 1)
    many = counts > many_threshold
    few = counts < few_threshold
    return {"many": _masked_mean(acc, many), "medium": _masked_mean(acc, ~many & ~few), "few": _masked_mean(acc, few)}


def head_tail_accuracy(
    per_class_acc: Tensor | Sequence[float],
    cls_num_list: Sequence[int] | Tensor,
    head_fraction: float = 0.5,
) -> dict[str, float]:
    """Mean per-class accuracy over the head (most frequent) and tail (the rest) classes.

    Classes are ranked by training count, largest first, ties broken by class index; the first
    ``round(head_fraction * C)`` are the head. With 10 classes and the default, classes ranked 1-5 are
    the head and 6-10 the tail.

    Args:
        per_class_acc: Accuracy of each class, shape ``(C,)``.
        cls_num_list: Training images per class; positive integers, one per class.
        head_fraction: Share of classes counted as head, in ``(0, 1)``.

    Returns:
        ``{"head": ..., "tail": ...}``, unweighted means skipping NaN entries; NaN for an empty group.

    Raises:
        ValueError: If the lengths disagree or ``head_fraction`` is outside ``(0, 1)``.

    Example:
        >>> from smoothopt.evaluation import head_tail_accuracy
        >>> head_tail_accuracy([1.0, 0.5, 0.75, 0.25], [100, 50, 10, 1])
        {'head': 0.75, 'tail': 0.5}
    """
    acc, counts = _acc_and_counts(per_class_acc, cls_num_list)
    head_fraction = check_real("head_fraction", head_fraction, 0.0, 1.0, low_open=True, high_open=True)
    num_head = int(round(head_fraction * counts.numel()))
    # Stable sort on the negated counts: largest first, equal counts in class order.
    order = torch.sort(-counts, stable=True).indices
    head = torch.zeros(counts.numel(), dtype=torch.bool)
    head[order[:num_head]] = True
    return {"head": _masked_mean(acc, head), "tail": _masked_mean(acc, ~head)}


def _check_indices(name: str, t: Tensor, num_classes: int) -> None:
    if not isinstance(t, Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        kind = t.dtype if isinstance(t, Tensor) else type(t).__name__
        raise TypeError(f"{name} must be an integer tensor of class indices, got {kind}")
    if t.dim() != 1:
        raise ValueError(f"{name} must have shape (N,), got {tuple(t.shape)}")
    if t.numel() > 0:
        lo, hi = torch.stack(torch.aminmax(t)).tolist()
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} must hold class indices in [0, {num_classes - 1}], got {bad}")


def _acc_and_counts(
    per_class_acc: Tensor | Sequence[float], cls_num_list: Sequence[int] | Tensor
) -> tuple[Tensor, Tensor]:
    counts = as_class_counts(cls_num_list)
    if isinstance(per_class_acc, Tensor):
        acc = per_class_acc.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    else:
        acc = torch.as_tensor(per_class_acc, dtype=torch.float64).reshape(-1)
    if acc.numel() != counts.numel():
        raise ValueError(f"per_class_acc has {acc.numel()} classes but cls_num_list has {counts.numel()}")
    return acc, counts


def _masked_mean(acc: Tensor, mask: Tensor) -> float:
    selected = acc[mask & ~torch.isnan(acc)]
    return float(selected.mean()) if selected.numel() > 0 else math.nan

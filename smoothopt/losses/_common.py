"""Private helpers shared by the long-tail losses: argument checks, the weighted reduction, a base class.

Every loss here reduces like :func:`torch.nn.functional.cross_entropy`: with per-class weights ``w``,
``"mean"`` divides the sum of ``w[y_i] * loss_i`` by the sum of the selected weights ``w[y_i]``, not
by the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from smoothopt._validation import check_choice, check_int, check_real

__all__ = [
    "Reduction",
    "WeightedLoss",
    "as_class_counts",
    "check_logits_and_target",
    "compute_dtype",
    "resolve_start_epoch",
    "weighted_reduce",
]

Reduction = Literal["none", "mean", "sum"]
_REDUCTIONS = ("none", "mean", "sum")


def as_class_counts(cls_num_list: Sequence[int] | Tensor | Any, name: str = "cls_num_list") -> Tensor:
    """Return per-class training counts as a float64 tensor after checking them.

    Args:
        cls_num_list: Training images per class, one positive integer per class. A list, tuple,
            NumPy array or tensor; integer-valued floats (``3.0``) are accepted, fractions are not.
        name: Argument name used in error messages.

    Returns:
        The counts, shape ``(C,)``, dtype ``float64``, on the CPU.

    Raises:
        TypeError: If the counts are not numbers (strings, booleans, complex values).
        ValueError: If there are fewer than one class, or a count is zero, negative, non-finite or
            not an integer.
    """
    if not isinstance(cls_num_list, Tensor) and hasattr(cls_num_list, "__array__"):
        try:
            cls_num_list = torch.as_tensor(cls_num_list)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must hold integers, got an array that torch cannot read ({err})") from err
    if isinstance(cls_num_list, Tensor):
        if cls_num_list.dtype == torch.bool or cls_num_list.is_complex():
            raise TypeError(f"{name} must hold real numbers, got a tensor of dtype {cls_num_list.dtype}")
        counts = cls_num_list.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        if cls_num_list.dim() != 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {tuple(cls_num_list.shape)}")
    else:
        try:
            values = list(cls_num_list)
        except TypeError as err:
            kind = type(cls_num_list).__name__
            raise TypeError(f"{name} must be a sequence of per-class counts, got {kind}") from err
        for v in values:
            if isinstance(v, (bool, str, bytes)) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
                raise TypeError(f"{name} must hold integers, got {v!r} of type {type(v).__name__}")
            if isinstance(v, complex):
                raise TypeError(f"{name} must hold integers, got complex {v!r}")
        counts = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if counts.numel() == 0:
        raise ValueError(f"{name} must hold at least one class count, got an empty sequence")
    for j, v in enumerate(counts.tolist()):
        if not math.isfinite(v) or v != math.floor(v):
            raise ValueError(f"{name}[{j}] must be a positive integer, got {v!r}")
        if v <= 0:
            raise ValueError(
                f"{name}[{j}] must be in [1, inf), got {int(v)}; drop classes without training images"
            )
    return counts


def resolve_start_epoch(total_epochs: int, start: float | int, name: str = "start") -> int:
    """Turn a phase start given as a fraction of training (float) or an epoch (int) into an epoch index.

    Args:
        total_epochs: Length of training in epochs, in ``[1, inf)``.
        start: A float in ``(0, 1)``, rounded to ``round(start * total_epochs)``, or an int epoch in
            ``[0, total_epochs]`` (``total_epochs`` means the phase never starts).
        name: Argument name used in error messages.

    Returns:
        The first epoch (counted from 0) of the phase.

    Raises:
        TypeError: If ``start`` is neither an int nor a float.
        ValueError: If ``total_epochs`` or ``start`` is outside its range.
    """
    total_epochs = check_int("total_epochs", total_epochs, 1)
    if isinstance(start, bool) or not isinstance(start, (int, float)):
        raise TypeError(f"{name} must be a float fraction in (0, 1) or an int epoch, got {type(start).__name__}")
    if isinstance(start, int):
        return check_int(name, start, 0, total_epochs)
    fraction = check_real(name, start, 0.0, 1.0, low_open=True, high_open=True)
    return int(round(fraction * total_epochs))


def check_logits_and_target(logits: Tensor, target: Tensor, num_classes: int | None = None) -> Tensor:
    """Check a batch of logits of shape ``(N, C)`` and integer labels of shape ``(N,)``; return the labels as long.

    Args:
        logits: Unnormalised scores, floating point, shape ``(N, C)``.
        target: Class indices, an integer tensor of shape ``(N,)`` with values in ``[0, C)``.
        num_classes: Number of classes the loss was built for, or ``None`` to take ``C`` from ``logits``.

    Returns:
        ``target`` as ``torch.long`` (any integer dtype is accepted; ``uint8`` would otherwise index as a mask).

    Raises:
        TypeError: If ``logits`` is not floating point or ``target`` is not an integer tensor.
        ValueError: If the shapes disagree, ``C`` differs from ``num_classes`` or a label is out of range.
    """
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        kind = logits.dtype if isinstance(logits, Tensor) else type(logits).__name__
        raise TypeError(f"logits must be a floating-point tensor, got {kind}")
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be an integer tensor of class indices, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"target must be an integer tensor of class indices (torch.long), got dtype {target.dtype}; "
            "soft or one-hot labels are not supported"
        )
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"target must have shape ({logits.shape[0]},) to match logits, got {tuple(target.shape)}")
    c = logits.shape[1]
    if num_classes is not None and c != num_classes:
        raise ValueError(f"logits has {c} columns but the loss was built for {num_classes} classes (cls_num_list)")
    if target.numel() > 0:
        # One host synchronisation for both bounds.
        lo, hi = torch.stack(torch.aminmax(target)).tolist()
        if lo < 0 or hi >= c:
            bad = lo if lo < 0 else hi
            raise ValueError(f"target must hold class indices in [0, {c - 1}], got {bad}")
    return target.long()


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype a loss computes in: float32 at least, float64 kept."""
    return torch.promote_types(dtype, torch.float32)


def weighted_reduce(per_sample: Tensor, target: Tensor, weight: Tensor | None, reduction: str) -> Tensor:
    """Weight per-sample losses by ``weight[target]`` and reduce them like ``F.cross_entropy``.

    Args:
        per_sample: Unweighted loss of each sample, shape ``(N,)``.
        target: Class indices, shape ``(N,)``.
        weight: Per-class weights, shape ``(C,)``, or ``None`` for ones.
        reduction: ``"none"`` (weighted per-sample losses), ``"sum"``, or ``"mean"`` (weighted sum divided
            by the sum of the selected weights; an empty batch gives NaN, as in ``F.cross_entropy``).

    Returns:
        The reduced loss, a scalar, or shape ``(N,)`` for ``"none"``.
    """
    if weight is None:
        if reduction == "none":
            return per_sample
        return per_sample.sum() if reduction == "sum" else per_sample.mean()
    w = weight.to(device=per_sample.device, dtype=per_sample.dtype)[target]
    weighted = w * per_sample
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    return weighted.sum() / w.sum()


class WeightedLoss(nn.Module):
    """Base class of the losses: an optional per-class ``weight`` buffer and a ``reduction``.

    ``weight`` is a buffer when set (it follows ``.to()``, lands in ``state_dict`` and survives
    ``deepcopy``) and ``None`` otherwise. Change it between epochs with :meth:`set_weight`, e.g. with
    the output of :meth:`smoothopt.losses.DeferredReweighting.weights`. A ``state_dict`` saved with or
    without a weight loads into a loss in either state.
    """

    weight: Tensor | None

    def __init__(self, weight: Tensor | Sequence[float] | None, reduction: Reduction, num_classes: int | None) -> None:
        super().__init__()
        self.reduction: Reduction = check_choice("reduction", reduction, _REDUCTIONS)
        self.num_classes = num_classes
        self.register_buffer("weight", None)
        self.set_weight(weight)

    def set_weight(self, weight: Tensor | Sequence[float] | None) -> None:
        """Replace the per-class weights used from the next forward call on.

        Args:
            weight: Non-negative finite weights, shape ``(C,)``, or ``None`` for an unweighted loss.

        Raises:
            ValueError: If ``weight`` has the wrong shape, a negative or non-finite entry, or sums to 0.
        """
        if weight is None:
            self.weight = None
            return
        w = torch.as_tensor(weight).detach()
        if not w.is_floating_point():
            w = w.to(torch.float32)
        if w.dim() != 1 or (self.num_classes is not None and w.numel() != self.num_classes):
            want = "(C,)" if self.num_classes is None else f"({self.num_classes},)"
            raise ValueError(f"weight must have shape {want}, got {tuple(w.shape)}")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError(f"weight must hold finite values in [0, inf), got {w.tolist()}")
        if float(w.sum()) <= 0:
            raise ValueError("weight must have a positive sum, got all zeros")
        device = self._buffer_device()
        self.weight = w.clone().to(device) if device is not None else w.clone()

    def _buffer_device(self) -> torch.device | None:
        for name, buf in self._buffers.items():
            if buf is not None and name != "weight":
                return buf.device
        return None

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # NOTE: ``weight`` may be present or absent in either the saved or the receiving loss;
        # adopt the saved state so that a strict load never fails on it.
        saved = state_dict.get(prefix + "weight")
        self.set_weight(None if saved is None else torch.ones_like(saved, device="cpu"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        """Summarise the settings for ``repr``."""
        return f"reduction={self.reduction!r}, weighted={self.weight is not None}"

"""Multi-tensor helpers shared by the SAM family and the saddle-escape optimizers.

Every helper takes lists of tensors and issues a number of ``torch._foreach_*`` kernels that depends on the
number of (device, dtype) buckets, not on the number of tensors. Sparse gradients cannot go through foreach
kernels; callers split them off with :func:`split_sparse` and treat them one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["bucket", "dot", "global_norm", "scale_", "split_sparse"]


def bucket(*lists: Sequence[Tensor]) -> list[tuple[list[Tensor], ...]]:
    """Split parallel lists into buckets that share the device and dtype of the first list.

    Args:
        *lists: Lists of equal length; ``lists[0][i]`` decides the bucket of every ``lists[k][i]``.

    Returns:
        One tuple of lists per (device, dtype) bucket, in order of first appearance.
    """
    first = lists[0]
    if not first:
        return []
    key0 = (first[0].device, first[0].dtype)
    if all((t.device, t.dtype) == key0 for t in first):
        return [tuple(list(lst) for lst in lists)]
    out: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], ...]] = {}
    for i, t in enumerate(first):
        entry = out.setdefault((t.device, t.dtype), tuple([] for _ in lists))
        for lst, dst in zip(lists, entry):
            dst.append(lst[i])
    return list(out.values())


def split_sparse(params: list[Tensor], grads: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[int]]:
    """Return the dense (params, grads) and the indices of the sparse gradients."""
    sparse = [i for i, g in enumerate(grads) if g.is_sparse]
    if not sparse:
        return params, grads, []
    keep = set(sparse)
    dense_p = [p for i, p in enumerate(params) if i not in keep]
    dense_g = [g for i, g in enumerate(grads) if i not in keep]
    return dense_p, dense_g, sparse


def global_norm(tensors: Sequence[Tensor], device: torch.device | None = None) -> Tensor:
    """Euclidean norm of the concatenation of ``tensors``, accumulated in float32 or wider.

    Squares of float16 or bfloat16 entries overflow long before the norm does, so each bucket's partial norms
    are computed with ``dtype=float32`` (``float64`` inputs stay in float64). Sparse tensors are reduced over
    their stored values.

    Args:
        tensors: Tensors of any shape, device and floating dtype.
        device: Device of the result; the first tensor's device by default.

    Returns:
        A 0-dim tensor on ``device``.
    """
    if not tensors:
        return torch.zeros((), device=device)
    device = device if device is not None else tensors[0].device
    dense = [t for t in tensors if not t.is_sparse]
    partial: list[Tensor] = []
    for (group,) in bucket(dense):
        acc = torch.float64 if group[0].dtype == torch.float64 else torch.float32
        norms = torch._foreach_norm(group, 2, dtype=acc)
        partial.extend(norms if group[0].device == device else [n.to(device) for n in norms])
    for t in tensors:
        if t.is_sparse:
            values = t.coalesce().values()
            acc = torch.float64 if values.dtype == torch.float64 else torch.float32
            partial.append(torch.linalg.vector_norm(values, dtype=acc).to(device))
    if any(p.dtype != partial[0].dtype for p in partial):
        partial = [p.double() for p in partial]
    return torch.linalg.vector_norm(torch.stack(partial))


def dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Inner product ``sum_i <a_i, b_i>`` of two lists of dense tensors, accumulated in float32 or wider."""
    terms = [torch.sum(x * y, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
             for x, y in zip(a, b)]
    if not terms:
        return torch.zeros(())
    return torch.stack([t.to(terms[0].device) for t in terms]).sum()


def scale_(tensors: Sequence[Tensor], factor: Tensor | float) -> None:
    """Multiply every tensor in place by ``factor`` (a 0-dim tensor or a number), sparse ones included."""
    for (group,) in bucket([t for t in tensors if not t.is_sparse]):
        f = factor.to(group[0].device) if isinstance(factor, Tensor) else factor
        torch._foreach_mul_(group, f)
    for t in tensors:
        if t.is_sparse:
            t.mul_(factor.to(t.device) if isinstance(factor, Tensor) else factor)

"""Private helpers shared by the modules of :mod:`smoothopt.adapt`."""

from __future__ import annotations

import torch
from torch import Tensor


def cat_batches(*tensors: Tensor) -> Tensor:
    """Concatenate along dim 0 after promoting to a common dtype (autocast can mix half and float)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.cat([t.to(dtype) for t in tensors], dim=0)


def entropy(probs: Tensor, eps: float = 1e-12) -> Tensor:
    """Shannon entropy (nats) of each row of ``probs``, guarded against ``log(0)``."""
    return -(probs * probs.clamp_min(eps).log()).sum(dim=-1)

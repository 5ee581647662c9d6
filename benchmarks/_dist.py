"""Distributed helpers for the training loops (``torchrun``; NCCL on GPUs, gloo on CPUs).

Outside ``torchrun`` every helper degrades to the single-process case, so the same
training loop runs either way.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_indices(n: int, rank: int | None = None, world_size: int | None = None) -> torch.Tensor:
    """This rank's share of ``range(n)``: every ``world_size``-th index from ``rank``.

    Shards differ in size by at most one, and their union is exactly ``range(n)``; a rank beyond
    ``n`` gets an empty shard.

    Raises:
        ValueError: If ``n`` is negative or ``rank`` is not in ``[0, world_size)``.
    """
    if rank is None or world_size is None:
        rank, world_size = rank_and_world()
    if n < 0:
        raise ValueError(f"n must be in [0, inf), got {n}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    return torch.arange(rank, max(n, rank), world_size)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` under a process group, ``model`` otherwise."""
    _, world = rank_and_world()
    if world == 1:
        return model
    ids = None
    if device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (a no-op in a single process); returns ``t``."""
    if rank_and_world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    _, world = rank_and_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out

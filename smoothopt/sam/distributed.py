"""DistributedDataParallel and SAM: a per-replica (unsynchronised) first pass."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from smoothopt.sam.sam import SAM

__all__ = ["per_replica_first_pass"]


@contextmanager
def per_replica_first_pass(model: nn.Module, sam: SAM) -> Iterator[None]:
    """Skip DDP's gradient all-reduce for the clean backward pass of a SAM step that will perturb.

    By default a SAM step under ``DistributedDataParallel`` perturbs every replica with the synchronised gradient,
    which gives the same update as one process on the combined batch. Wrapping the first forward/backward in this
    context instead perturbs each replica with its own gradient (the m-sharpness of Foret et al. with ``m`` the
    per-replica batch) and saves one all-reduce per step; the second pass is synchronised as usual, so the
    replicas take the same descent step and stay identical.

    The block synchronises as usual when the model has no ``no_sync`` (not wrapped in DDP), when the weights are
    already perturbed (the second pass of a closure), and on steps that a schedule or LookSAM leaves unperturbed,
    whose single pass feeds the descent directly.

    Args:
        model: The DDP-wrapped model (any module is accepted; without ``no_sync`` nothing changes).
        sam: The SAM optimizer that takes the step.

    Example:
        >>> # inside a closure passed to sam.step, or around the first backward of the two-step API:
        >>> # with per_replica_first_pass(ddp_model, sam):
        >>> #     loss_fn(ddp_model(x), y).backward()
    """
    no_sync = getattr(model, "no_sync", None)
    if no_sync is None or sam.is_perturbed or not sam.will_perturb():
        yield
        return
    with no_sync():
        yield

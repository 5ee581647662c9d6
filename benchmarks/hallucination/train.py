"""Training and sampling loops; both run unchanged in one process or under ``torchrun`` (DDP).

Under ``torchrun`` each rank trains on its shard of the data (``shard_indices``) with
``batch_size / world_size`` items per step, DistributedDataParallel averages the gradients,
and sampling splits the samples across ranks and gathers them (with their scores) on every rank.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from benchmarks._dist import gather_objects, rank_and_world, shard_indices, unwrap, wrap_ddp
from benchmarks.hallucination.diffusion import LinearSchedule, StepObserver, ddpm_sample, diffusion_loss


class ScoredObserver(StepObserver, Protocol):
    """A :class:`StepObserver` that turns what it saw into one score per sample."""

    def scores(self) -> torch.Tensor:
        """``(batch,)`` scores, higher = more likely hallucinated."""


def cosine_lr(step: int, steps: int, lr: float, lr_final: float) -> float:
    """Cosine decay from ``lr`` at step 0 to ``lr_final`` at step ``steps``."""
    return lr_final + 0.5 * (lr - lr_final) * (1.0 + math.cos(math.pi * min(step, steps) / steps))


@torch.no_grad()
def ema_update_(averaged: Sequence[torch.Tensor], current: Sequence[torch.Tensor], decay: float) -> None:
    """One in-place step of an exponential moving average: ``averaged <- decay * averaged + (1 - decay) * current``.

    Raises:
        ValueError: If ``decay`` is not in ``[0, 1)``.
    """
    # NOTE: no warm-up of the decay: the runs are long enough (decay ** steps ~ 0) that the initial
    # weights leave no trace.
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    for a, c in zip(averaged, current, strict=True):
        a.lerp_(c, 1.0 - decay)


def train_denoiser(
    model: nn.Module,
    data: torch.Tensor,
    schedule: LinearSchedule,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    lr_final: float,
    seed: int,
    device: torch.device,
    t_max: int | None = None,
    ema_decay: float | None = None,
    progress: Callable[[Iterable[int]], Iterable[int]] = lambda it: it,
) -> dict[str, Any]:
    """Train ``model`` (in place) with Adam and the epsilon-prediction loss; DDP-aware.

    Each rank draws its batches uniformly with replacement from its own shard of ``data``,
    from a generator seeded by ``(seed, rank)``; timesteps are uniform on ``[0, t_max)``.

    With ``ema_decay`` the parameters' exponential moving average (updated after every
    optimiser step, starting from the initial weights) replaces the trained weights at the
    end, so that the model sampled from is the averaged one, as is usual for diffusion models.
    Every rank holds the same averaged copy (DDP keeps the ranks' weights equal).

    Returns:
        ``final_loss`` (mean loss over the last tenth of the steps, rank 0's shard, of the raw
        weights), ``wall_s`` and ``cpu_s`` (this process's cost of the loop).

    Raises:
        ValueError: If ``batch_size`` does not divide over the ranks or ``ema_decay`` is not in ``[0, 1)``.
    """
    rank, world = rank_and_world()
    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} must be divisible by the world size {world}")
    if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay}")
    t0, c0 = time.perf_counter(), time.process_time()
    shard = data[shard_indices(data.shape[0], rank, world)].to(device)
    model.to(device).train()
    schedule = schedule.to(device)
    ddp = wrap_ddp(model, device)
    opt = torch.optim.Adam(ddp.parameters(), lr=lr)
    g = torch.Generator(device=device).manual_seed(seed * 1000 + rank)
    params = list(model.parameters())
    averaged = [p.detach().clone() for p in params] if ema_decay is not None else None
    tail: list[float] = []
    for step in progress(range(steps)):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, lr_final)
        idx = torch.randint(0, shard.shape[0], (batch_size // world,), device=device, generator=g)
        loss = diffusion_loss(ddp, schedule, shard[idx], generator=g, t_max=t_max)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if averaged is not None:
            ema_update_(averaged, params, ema_decay)
        if step >= steps - max(1, steps // 10):
            tail.append(float(loss.detach()))
    if averaged is not None:
        with torch.no_grad():
            for p, a in zip(params, averaged, strict=True):
                p.copy_(a)
    unwrap(ddp).eval()
    return {"final_loss": sum(tail) / len(tail), "wall_s": round(time.perf_counter() - t0, 3),
            "cpu_s": round(time.process_time() - c0, 3)}


def sample_scored(
    model: nn.Module,
    schedule: LinearSchedule,
    n: int,
    item_shape: Sequence[int],
    *,
    make_observers: Callable[[], dict[str, ScoredObserver]],
    seed: int,
    device: torch.device,
    start: int = 300,
    num_steps: int | None = None,
    batch_size: int = 10_000,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Draw ``n`` samples with ancestral DDPM and score each with every observer; DDP-aware.

    Ranks draw interleaved shares of the ``n`` samples; the result, gathered on every rank, is
    in a fixed order (rank-major), so downstream code sees one tensor whatever the world size.

    Args:
        model: ``eps_theta(x_t, t)``, on ``device``.
        schedule: The noise schedule, on ``device``.
        n: Number of samples over all ranks.
        item_shape: Shape of one sample.
        make_observers: Builds fresh observers (name -> object with ``update`` and ``scores``)
            for each batch.
        seed: Seeds this rank's generator (with the rank).
        device: Where to sample.
        start: Sampling starts from pure noise at timestep ``start - 1``.
        num_steps: Reverse steps (default ``start``).
        batch_size: Samples drawn at once on one rank.

    Returns:
        ``(samples, scores)``: samples ``(n, *item_shape)`` on the CPU, and name -> ``(n,)`` scores.
    """
    rank, world = rank_and_world()
    mine = shard_indices(n, rank, world).numel()
    g = torch.Generator(device=device).manual_seed(seed * 1000 + rank)
    xs: list[torch.Tensor] = []
    scores: dict[str, list[torch.Tensor]] = {}
    for lo in range(0, mine, batch_size):
        m = min(batch_size, mine - lo)
        observers = make_observers()
        x = ddpm_sample(model, schedule, (m, *item_shape), start=start, num_steps=num_steps,
                        observers=list(observers.values()), generator=g, device=device)
        xs.append(x.cpu())
        for name, obs in observers.items():
            scores.setdefault(name, []).append(obs.scores().cpu())
    local = (torch.cat(xs) if xs else torch.empty(0, *item_shape),
             {k: torch.cat(v) for k, v in scores.items()})
    parts = gather_objects(local)
    samples = torch.cat([p[0] for p in parts])
    names = parts[0][1].keys()
    return samples, {k: torch.cat([p[1][k] for p in parts]) for k in names}

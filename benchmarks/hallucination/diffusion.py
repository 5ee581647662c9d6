"""The paper's DDPM: linear beta schedule, epsilon prediction, ancestral sampling from a late start.

Our own few lines rather than diffusers' ``DDPMScheduler``: the toy experiments need the
unclipped ``x0_hat`` at every step (``DDPMScheduler`` clips it to ``[-1, 1]`` by default),
a start at ``t = 300`` from pure noise and, for the cheap CPU runs, a strided
(respaced) ancestral chain; each is one line here and a configuration detour there.

Symbols: ``beta_t`` (``betas``), ``alpha_bar_t`` (``alphas_cumprod``), ``x_t``, ``eps``,
``x0_hat`` the model's prediction of the clean sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import nn


class StepObserver(Protocol):
    """Anything that watches ``x0_hat`` during sampling (``hallucfilter.TrajectoryVariance`` does)."""

    def update(self, x0_hat: torch.Tensor, *, step: int, num_steps: int, timestep: int) -> object:
        """Record ``x0_hat`` at reverse step ``step`` (0-based) of ``num_steps``, whose timestep is ``timestep``."""


class LinearSchedule(nn.Module):
    """DDPM noise schedule with ``beta_t`` linear in ``t``; the constants are buffers.

    The paper uses ``T = 1000`` and ``beta`` from ``1e-3`` to ``0.2`` (ten times the usual end
    value), so ``alpha_bar_300 ~ 7.6e-5`` and sampling may start at ``t = 300`` from ``N(0, I)``.

    Args:
        num_train_timesteps: ``T``.
        beta_start: ``beta_0``.
        beta_end: ``beta_{T-1}``.
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-3, beta_end: float = 0.2) -> None:
        super().__init__()
        if num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be at least 2, got {num_train_timesteps}")
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        self.num_train_timesteps = num_train_timesteps
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        self.register_buffer("betas", betas.float())
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, 0).float())

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps`` (Ho et al. eq. 4)."""
        ab = self.alphas_cumprod[t].view(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps

    def timesteps(self, start: int, num_steps: int) -> list[int]:
        """``num_steps`` evenly spaced timesteps from ``start - 1`` down to ``0`` (both included)."""
        if not 1 <= start <= self.num_train_timesteps:
            raise ValueError(f"start must be in [1, {self.num_train_timesteps}], got {start}")
        if not 1 <= num_steps <= start:
            raise ValueError(f"num_steps must be in [1, start={start}], got {num_steps}")
        if num_steps == 1:
            return [0]
        grid = torch.linspace(start - 1, 0, num_steps).round().long().tolist()
        return sorted(set(grid), reverse=True)


def diffusion_loss(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: LinearSchedule,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
    t_max: int | None = None,
) -> torch.Tensor:
    """The simple epsilon-prediction loss ``E ||eps - eps_theta(x_t, t)||^2`` (Ho et al. eq. 14).

    ``t`` is uniform on ``[0, t_max)`` (default ``T``). A sampler that starts at ``t = 300``
    never asks the network about later timesteps, so ``t_max = 300`` spends all training there.
    """
    t_max = schedule.num_train_timesteps if t_max is None else t_max
    if not 1 <= t_max <= schedule.num_train_timesteps:
        raise ValueError(f"t_max must be in [1, {schedule.num_train_timesteps}], got {t_max}")
    t = torch.randint(0, t_max, (x0.shape[0],), device=x0.device, generator=generator)
    eps = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
    return torch.mean((model(schedule.add_noise(x0, eps, t), t) - eps) ** 2)


@torch.no_grad()
def ddpm_sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: LinearSchedule,
    shape: Sequence[int],
    *,
    start: int = 300,
    num_steps: int | None = None,
    observers: Sequence[StepObserver] = (),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Ancestral DDPM sampling with fixed-large variance, from ``x_{start} ~ N(0, I)``.

    With ``num_steps < start`` the chain is respaced: between consecutive kept timesteps
    ``t > s`` the step uses ``beta' = 1 - alpha_bar_t / alpha_bar_s``, which is DDPM's own
    step when ``s = t - 1``. The last step (``t = 0``) returns ``x0_hat`` itself.

    Args:
        model: ``eps_theta(x_t, t)`` with ``t`` a ``(batch,)`` long tensor.
        schedule: The noise schedule.
        shape: Shape of the batch to draw.
        start: Sampling starts from pure noise at timestep ``start - 1``.
        num_steps: Number of reverse steps (default ``start``: every timestep).
        observers: Each gets ``update(x0_hat, step=i, num_steps=n, timestep=t)`` at every step ``i``.
        generator: Source of the initial and ancestral noise.
        device: Where to sample.

    Returns:
        The samples, shape ``shape``.
    """
    ts = schedule.timesteps(start, num_steps or start)
    n = len(ts)
    ab = schedule.alphas_cumprod
    x = torch.randn(tuple(shape), generator=generator, device=device)
    for i, t in enumerate(ts):
        s = ts[i + 1] if i + 1 < n else -1
        ab_t = ab[t]
        ab_s = ab[s] if s >= 0 else torch.ones_like(ab_t)
        beta = 1.0 - ab_t / ab_s
        t_batch = torch.full((x.shape[0],), t, device=device, dtype=torch.long)

        # 1. Predict the noise and the clean sample x0_hat (Ho et al. eq. 15), unclipped.
        eps = model(x, t_batch)
        x0_hat = (x - (1.0 - ab_t).sqrt() * eps) / ab_t.sqrt()
        for obs in observers:
            obs.update(x0_hat, step=i, num_steps=n, timestep=t)

        # 2. Posterior mean of q(x_s | x_t, x0_hat) (Ho et al. eq. 7).
        mean = (ab_s.sqrt() * beta / (1.0 - ab_t)) * x0_hat + ((1.0 - beta).sqrt() * (1.0 - ab_s) / (1.0 - ab_t)) * x

        # 3. Ancestral noise with sigma^2 = beta (fixed large); none at the last step.
        if s >= 0:
            x = mean + beta.sqrt() * torch.randn(x.shape, generator=generator, device=device)
        else:
            x = x0_hat
    return x

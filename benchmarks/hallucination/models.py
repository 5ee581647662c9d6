"""Denoisers: the paper's toy MLP, and a small U-Net (diffusers) for SIMPLE SHAPES."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of the timestep ``t`` into ``dim`` features."""

    freqs: torch.Tensor

    def __init__(self, dim: int, max_period: float = 10_000.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"dim must be an even number >= 2, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``(batch,)`` timesteps -> ``(batch, dim)`` features."""
        angles = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, slope: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.time = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.act = nn.LeakyReLU(slope)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.act(self.fc1(self.norm(h)) + self.time(temb)))


class ToyDenoiser(nn.Module):
    """The toy experiments' epsilon network: an MLP with a sinusoidal time embedding.

    Input projection, ``num_blocks`` residual blocks (LayerNorm, Linear, + time, LeakyReLU,
    Linear), output projection.

    Note:
        The released code builds one block and applies it three times (tied weights), by
        accident. We default to untied blocks, the architecture the paper describes; pass
        ``tied=True`` for the released behaviour.

    Args:
        dim: Data dimension (1, 2, 64 for flattened digits, ...).
        width: Hidden width (the paper: 128).
        num_blocks: Residual blocks (the paper: 3).
        slope: LeakyReLU negative slope (the paper: 0.02).
        tied: Share one block's weights across all ``num_blocks`` applications.
    """

    def __init__(self, dim: int, width: int = 128, num_blocks: int = 3, slope: float = 0.02, *,
                 tied: bool = False) -> None:
        super().__init__()
        self.embed = SinusoidalEmbedding(width)
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.LeakyReLU(slope))
        self.inp = nn.Linear(dim, width)
        n_distinct = 1 if tied else num_blocks
        self.blocks = nn.ModuleList(_ResidualBlock(width, slope) for _ in range(n_distinct))
        self.num_blocks = num_blocks
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``eps_theta(x_t, t)``: ``x`` of shape ``(batch, dim)``, ``t`` of shape ``(batch,)``."""
        temb = self.time_mlp(self.embed(t))
        h = self.inp(x)
        for k in range(self.num_blocks):
            h = self.blocks[k % len(self.blocks)](h, temb)
        return self.out(h)


class ShapesUNet(nn.Module):
    """A small diffusers ``UNet2DModel`` returning a plain tensor (``eps_theta(x_t, t)``).

    Args:
        size: Image side (a multiple of 4).
        channels: Output channels of the three resolution levels.
    """

    def __init__(self, size: int = 32, channels: tuple[int, int, int] = (32, 64, 64)) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        if size % 4:
            raise ValueError(f"size must be a multiple of 4, got {size}")
        self.unet: Any = UNet2DModel(
            sample_size=size,
            in_channels=1,
            out_channels=1,
            layers_per_block=1,
            block_out_channels=tuple(channels),
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x`` of shape ``(batch, 1, size, size)``, ``t`` of shape ``(batch,)``."""
        return self.unet(x, t).sample

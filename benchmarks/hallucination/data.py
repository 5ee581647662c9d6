"""Seeded data sets: 1D mixtures, the 2D grid (and its rotated variant), SIMPLE SHAPES, digits, MNIST.

Every generator takes a ``seed`` and returns the same data for it on any machine.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# SIMPLE SHAPES, as specified at 64x64: three 21-px columns (triangle | square | pentagon).
SHAPE_NAMES = ("triangle", "square", "pentagon")
_SPEC_SIZE = 64
_SQUARE_SIDE = 8.0
_TRIANGLE_SIDE = 11.0
_PENTAGON_RADIUS = 5.0
_JITTER_X = 2.0  # the "small horizontal" offset of a shape within its column, in 64-px units


@dataclass(frozen=True)
class Mixture:
    """A Gaussian mixture with equal weights and one isotropic ``std``: samples and where the modes are.

    Attributes:
        x: Samples, shape ``(n, dim)``, already scaled by ``1 / scale``.
        modes: Mode centres, shape ``(modes, dim)``, in the same (scaled) units as ``x``.
        std: Per-mode standard deviation in the scaled units.
        scale: The factor the raw data were divided by (1 for the 1D data).
    """

    x: torch.Tensor
    modes: torch.Tensor
    std: float
    scale: float


def _mixture(modes: torch.Tensor, std: float, n: int, seed: int, scale: float) -> Mixture:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if std <= 0:
        raise ValueError(f"std must be in (0, inf), got {std}")
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(0, modes.shape[0], (n,), generator=g)
    x = modes[which] + std * torch.randn(n, modes.shape[1], generator=g, dtype=torch.float64)
    return Mixture((x / scale).float(), (modes / scale).float(), std / scale, scale)


def mixture_1d(means: Sequence[float], n: int, seed: int, std: float = 0.05) -> Mixture:
    """The paper's 1D data: an equal-weight mixture with the given ``means``, not normalised.

    Example:
        >>> mixture_1d([1, 2, 3], 4, seed=0).x.shape
        torch.Size([4, 1])
    """
    if len(means) < 1:
        raise ValueError("means must name at least one mode")
    return _mixture(torch.tensor(sorted(means), dtype=torch.float64)[:, None], std, n, seed, 1.0)


def grid_2d(n: int, seed: int, *, std: float = 0.05, spacing: float = 2.0, side: int = 5,
            rotated: bool = False) -> Mixture:
    """The 2D grid: ``side**2`` modes at ``spacing * {-(side//2)..side//2}^2``, normalised.

    The whole array is divided by the mixture's standard deviation per coordinate,
    ``sqrt(std^2 + spacing^2 * (side^2 - 1) / 12)`` (``2.8289`` for the paper's 5x5 grid,
    spacing 2, std 0.05). ``rotated`` turns the grid by 45 degrees into a diamond.
    """
    k = torch.arange(side, dtype=torch.float64) - (side - 1) / 2
    gx, gy = torch.meshgrid(k, k, indexing="ij")
    modes = spacing * torch.stack([gx.flatten(), gy.flatten()], 1)
    if rotated:
        c = math.cos(math.pi / 4)
        modes = modes @ torch.tensor([[c, c], [-c, c]], dtype=torch.float64)
    scale = math.sqrt(std**2 + spacing**2 * (side**2 - 1) / 12.0)
    return _mixture(modes, std, n, seed, scale)


def _polygon_mask(vertices: np.ndarray, size: int) -> np.ndarray:
    """Pixels whose centre lies inside the convex polygon ``vertices`` ((x, y), either orientation)."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    left = np.ones((size, size), dtype=bool)
    right = np.ones((size, size), dtype=bool)
    nv = len(vertices)
    for i in range(nv):
        (x0, y0), (x1, y1) = vertices[i], vertices[(i + 1) % nv]
        cross = (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0)
        left &= cross >= 0
        right &= cross <= 0
    return left | right


def shape_vertices(name: str, cx: float, cy: float, unit: float = 1.0) -> np.ndarray:
    """Vertices (x, y) in image coordinates (y pointing down) of one shape centred at (cx, cy).

    ``unit`` scales the 64x64 specification (0.5 for 32x32 images).
    """
    if name == "square":
        h = _SQUARE_SIDE * unit / 2
        return np.array([[cx - h, cy - h], [cx - h, cy + h], [cx + h, cy + h], [cx + h, cy - h]])
    if name == "triangle":  # equilateral, pointing down
        a = _TRIANGLE_SIDE * unit
        r = a / math.sqrt(3)
        return np.array([[cx - a / 2, cy - r / 2], [cx, cy + r], [cx + a / 2, cy - r / 2]])
    if name == "pentagon":
        r = _PENTAGON_RADIUS * unit
        angles = -math.pi / 2 + 2 * math.pi * np.arange(5) / 5
        return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)
    raise ValueError(f"name must be one of {SHAPE_NAMES}, got {name!r}")


def column_bounds(size: int) -> list[tuple[int, int]]:
    """Pixel ranges ``[lo, hi)`` of the three columns of a ``size``-px SIMPLE SHAPES image."""
    edges = [round(size * k / 3) for k in range(4)]
    return [(edges[k], edges[k + 1]) for k in range(3)]


def render_shape(name: str, cx: float, cy: float, size: int) -> np.ndarray:
    """Boolean ``(size, size)`` mask of one shape (spec units scaled to ``size``)."""
    return _polygon_mask(shape_vertices(name, cx, cy, size / _SPEC_SIZE), size)


def simple_shapes(n: int, seed: int, size: int = 64, p: float = 0.5) -> tuple[torch.Tensor, list[dict]]:
    """SIMPLE SHAPES: binary images of up to three shapes, one per column, each present with probability ``p``.

    Column ``k`` may hold only ``SHAPE_NAMES[k]``, at a uniform vertical position (fully inside
    the image) and a small uniform horizontal offset from the column's centre. Blank images are
    skipped (redrawn), so every image holds at least one shape.

    Returns:
        ``images`` of shape ``(n, 1, size, size)``, float32 in ``{0, 1}``, and per image a dict
        ``{"shapes": [{"name", "column", "cx", "cy"}, ...]}``.
    """
    if size < 16:
        raise ValueError(f"size must be at least 16, got {size}")
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p must be in (0, 1], got {p}")
    rng = np.random.default_rng(seed)
    unit = size / _SPEC_SIZE
    margin = 6.5 * unit  # half the largest shape's height, so shapes stay inside the image
    images = np.zeros((n, size, size), dtype=np.float32)
    meta: list[dict] = []
    for i in range(n):
        present = rng.random(3) < p
        while not present.any():
            present = rng.random(3) < p
        shapes = []
        for k, (lo, hi) in enumerate(column_bounds(size)):
            if not present[k]:
                continue
            cx = (lo + hi) / 2 + rng.uniform(-_JITTER_X, _JITTER_X) * unit
            cy = rng.uniform(margin, size - margin)
            images[i] += render_shape(SHAPE_NAMES[k], cx, cy, size)
            shapes.append({"name": SHAPE_NAMES[k], "column": k, "cx": float(cx), "cy": float(cy)})
        meta.append({"shapes": shapes})
    return torch.from_numpy(np.clip(images, 0, 1)).unsqueeze(1), meta


def write_shapes(folder: str | os.PathLike, images: torch.Tensor, meta: list[dict]) -> Path:
    """Write SIMPLE SHAPES as ``00000.png`` ... plus ``metadata.json``; returns the folder."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray((img[0].numpy() * 255).astype(np.uint8), mode="L").save(folder / f"{i:05d}.png")
    (folder / "metadata.json").write_text(json.dumps({"size": int(images.shape[-1]), "images": meta}, indent=1))
    return folder


def read_shapes(folder: str | os.PathLike) -> tuple[torch.Tensor, list[dict]]:
    """Read back what :func:`write_shapes` wrote."""
    from PIL import Image

    folder = Path(folder)
    meta = json.loads((folder / "metadata.json").read_text())["images"]
    imgs = [np.asarray(Image.open(folder / f"{i:05d}.png"), dtype=np.float32) / 255.0 for i in range(len(meta))]
    return torch.from_numpy(np.stack(imgs)).unsqueeze(1), meta


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:  # 0x08: unsigned byte data
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header promises {dims}, file holds {data.size} values")
    return data.reshape(dims)


def load_mnist(folder: str | os.PathLike, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST from the IDX files in ``folder`` (``train-images-idx3-ubyte[.gz]`` etc.); never downloads.

    Returns:
        ``images`` ``(n, 1, 28, 28)`` float32 in ``[0, 1]`` and ``labels`` ``(n,)`` int64.
    """
    if split not in ("train", "t10k"):
        raise ValueError(f"split must be 'train' or 't10k', got {split!r}")
    folder = Path(folder)

    def find(stem: str) -> Path:
        for cand in (folder / stem, folder / f"{stem}.gz"):
            if cand.exists():
                return cand
        raise FileNotFoundError(f"no {stem}[.gz] in {folder}; put the MNIST IDX files there")

    x = _read_idx(find(f"{split}-images-idx3-ubyte")).astype(np.float32) / 255.0
    y = _read_idx(find(f"{split}-labels-idx1-ubyte")).astype(np.int64)
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)

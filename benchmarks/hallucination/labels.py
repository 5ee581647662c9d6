"""Labelling samples as out of support: the ground truth every detection rate is measured against.

Mixtures (1D, 2D): a sample is out of support when its distance to the nearest mode exceeds
``k`` standard deviations (``k = 6`` primary, ``4`` as a sensitivity check).

SIMPLE SHAPES: binarise, then in each column count the connected components of plausible size
and compare each with its column's template; two or more shapes in one column never occur in
the training data, so such an image is a hallucination.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.hallucination.data import SHAPE_NAMES, column_bounds, render_shape


def mode_distance(x: torch.Tensor, modes: torch.Tensor, std: float) -> torch.Tensor:
    """Distance from each sample to its nearest mode, in units of the per-mode ``std``.

    Shape:
        ``x``: ``(n, dim)``; ``modes``: ``(m, dim)``; output ``(n,)``.
    """
    if x.dim() != 2 or modes.dim() != 2 or x.shape[1] != modes.shape[1]:
        raise ValueError(f"x and modes must be (n, d) and (m, d), got {tuple(x.shape)} and {tuple(modes.shape)}")
    if std <= 0:
        raise ValueError(f"std must be in (0, inf), got {std}")
    return torch.cdist(x.double(), modes.double()).min(1).values.float() / std


def out_of_support(x: torch.Tensor, modes: torch.Tensor, std: float, k: float = 6.0) -> torch.Tensor:
    """``True`` where a sample lies more than ``k`` standard deviations from every mode."""
    return mode_distance(x, modes, std) > k


def gap_of(x: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """For 1D samples, the index ``j`` of the gap ``(means[j], means[j+1])`` holding each one; -1 outside all gaps."""
    means = means.flatten().sort().values
    v = x.flatten()
    j = torch.searchsorted(means, v) - 1
    inside = (v > means[0]) & (v < means[-1])
    return torch.where(inside, j, torch.full_like(j, -1))


def _templates(size: int) -> list[dict[str, float]]:
    """Area and bounding-box size of each column's shape when drawn at ``size`` px."""
    out = []
    for name in SHAPE_NAMES:
        m = render_shape(name, size / 2, size / 2, size)
        rows, cols = np.nonzero(m)
        out.append({"area": float(m.sum()), "h": float(np.ptp(rows) + 1), "w": float(np.ptp(cols) + 1)})
    return out


def count_shapes(images: torch.Tensor, *, threshold: float = 0.5, area_tol: float = 0.5,
                 min_fraction: float = 0.25) -> dict[str, torch.Tensor]:
    """Per-column shape counts of SIMPLE SHAPES images (binary, ``{0, 1}`` scale).

    A connected component (4-connectivity) belongs to the column holding its centroid. It
    counts as a shape when its area is at least ``min_fraction`` of the column's template
    area; it *matches* the template when, in addition, its area and bounding-box height and
    width are within ``area_tol`` (relative) of the template's.

    Args:
        images: ``(n, 1, size, size)`` or ``(n, size, size)`` in ``[0, 1]`` (map ``[-1, 1]`` first).
        threshold: Binarisation level.
        area_tol: Relative tolerance of the template check.
        min_fraction: Components smaller than this fraction of the template are specks, not shapes.

    Returns:
        ``counts`` ``(n, 3)`` shapes per column, ``matched`` ``(n, 3)`` of those matching the
        template, ``specks`` ``(n,)`` components too small to count.
    """
    from scipy import ndimage

    imgs = images.detach().float().cpu().numpy()
    if imgs.ndim == 4:
        imgs = imgs[:, 0]
    if imgs.ndim != 3 or imgs.shape[1] != imgs.shape[2]:
        raise ValueError(f"images must be (n, 1, s, s) or (n, s, s), got {tuple(images.shape)}")
    size = imgs.shape[-1]
    templates = _templates(size)
    bounds = column_bounds(size)
    n = imgs.shape[0]
    counts = np.zeros((n, 3), dtype=np.int64)
    matched = np.zeros((n, 3), dtype=np.int64)
    specks = np.zeros(n, dtype=np.int64)
    for i in range(n):
        lab, num = ndimage.label(imgs[i] > threshold)
        for c in range(1, num + 1):
            rows, cols = np.nonzero(lab == c)
            col = next(k for k, (lo, hi) in enumerate(bounds) if lo <= cols.mean() < hi or k == 2)
            tpl = templates[col]
            area = float(rows.size)
            if area < min_fraction * tpl["area"]:
                specks[i] += 1
                continue
            counts[i, col] += 1
            h, w = float(np.ptp(rows) + 1), float(np.ptp(cols) + 1)
            if all(abs(v - tpl[key]) <= area_tol * tpl[key] for key, v in (("area", area), ("h", h), ("w", w))):
                matched[i, col] += 1
    return {"counts": torch.from_numpy(counts), "matched": torch.from_numpy(matched),
            "specks": torch.from_numpy(specks)}


def shapes_hallucinated(images: torch.Tensor, **kwargs: float) -> torch.Tensor:
    """``True`` for images with two or more shapes in one column (never seen in training).

    ``kwargs`` go to :func:`count_shapes`.
    """
    return (count_shapes(images, **kwargs)["counts"] >= 2).any(1)

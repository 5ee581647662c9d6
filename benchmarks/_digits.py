"""scikit-learn's bundled 8x8 digits as tensors: the CPU-scale data set shared by the reproductions."""

from __future__ import annotations

import numpy as np
import torch


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as ``(images, labels)``.

    Returns:
        ``images`` of shape ``(1797, 1, 8, 8)``, float32 in ``[0, 1]`` (the raw 0-16 counts / 16),
        and ``labels`` of shape ``(1797,)``, int64 in ``[0, 9]``.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("the digits data need scikit-learn: `pip install smoothopt[bench]`") from err
    d = load_digits()
    x = torch.from_numpy(np.asarray(d.images, dtype=np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(np.asarray(d.target, dtype=np.int64))
    return x, y


def stratified_split(
    labels: torch.Tensor, per_class: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into ``per_class`` held-out items of each class and the rest, deterministically.

    Returns:
        ``(rest_indices, held_out_indices)``, each sorted.
    """
    g = torch.Generator().manual_seed(seed)
    held = []
    for c in labels.unique(sorted=True).tolist():
        idx = (labels == c).nonzero().flatten()
        if idx.numel() <= per_class:
            raise ValueError(f"class {c} has {idx.numel()} items, cannot hold out per_class={per_class}")
        held.append(idx[torch.randperm(idx.numel(), generator=g)[:per_class]])
    held_idx = torch.cat(held).sort().values
    mask = torch.ones(labels.numel(), dtype=torch.bool)
    mask[held_idx] = False
    return mask.nonzero().flatten(), held_idx

"""Pieces the SDAT and S3VAADA reproductions share: backbones, optimizers, evaluation, figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from benchmarks._dist import all_reduce_sum, rank_and_world, shard_indices
from benchmarks.sdat.data import in_order


class MLPBackbone(nn.Module):
    """The CPU-scale backbone: flatten, then ``Linear -> ReLU`` layers of the given widths.

    Attributes:
        out_features: Width of the features it returns (the last hidden width).
    """

    def __init__(self, in_features: int, hidden: Sequence[int]) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("hidden must name at least one layer width")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        self.net = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_backbone(model: Mapping[str, Any]) -> MLPBackbone | str:
    """The backbone a configuration's ``model`` section names.

    ``model.backbone == "mlp"`` builds :class:`MLPBackbone` (``in_features``, ``hidden``);
    any other value is a timm model name, returned as a string for the classifier wrapper
    to create (with ``pretrained=False`` unless ``model.checkpoint`` names a weights file).
    """
    if model["backbone"] == "mlp":
        return MLPBackbone(int(model["in_features"]), model["hidden"])
    return str(model["backbone"])


def inverse_decay(lr_gamma: float, lr_decay: float):
    """The DANN / SDAT learning-rate factor ``(1 + gamma * i) ** -decay`` as a ``LambdaLR`` function."""

    def factor(i: int) -> float:
        return (1.0 + lr_gamma * i) ** (-lr_decay)

    return factor


def rank_generator(seed: int, salt: int) -> torch.Generator:
    """A CPU generator for this process: distinct per rank under ``torchrun``, fixed by ``seed`` and ``salt``."""
    rank, _ = rank_and_world()
    return torch.Generator().manual_seed(1_000_003 * seed + 7_919 * salt + rank)


def seed_everything(seed: int) -> None:
    """Seed torch's global generator (model initialisation draws from it)."""
    torch.manual_seed(seed)


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Softmax probabilities of ``model`` (in eval mode) on every example of ``dataset``, in order.

    Shape:
        Output: ``(len(dataset), C)`` on the CPU.
    """
    was_training = model.training
    model.eval()
    out = []
    for x, _ in in_order(dataset, batch_size):
        logits = model(x.to(device))
        logits = logits[0] if isinstance(logits, tuple) else logits
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256) -> float:
    """Top-1 accuracy (%) on ``dataset``; under ``torchrun`` each rank scores its shard and the counts are summed."""
    rank, world = rank_and_world()
    part = Subset(dataset, shard_indices(len(dataset), rank, world).tolist()) if world > 1 else dataset  # type: ignore[arg-type]
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    for x, y in in_order(part, batch_size):
        logits = model(x.to(device))
        logits = logits[0] if isinstance(logits, tuple) else logits
        counts[0] += (logits.argmax(1) == y.to(device)).sum()
        counts[1] += y.numel()
    model.train(was_training)
    all_reduce_sum(counts)
    return float(100.0 * counts[0] / counts[1].clamp_min(1))


def plot_paired_differences(diffs: Mapping[str, Sequence[float]], path: Path, title: str, ylabel: str) -> None:
    """Strip plot of per-seed paired differences, one column per comparison, with the mean marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(diffs)
    fig, ax = plt.subplots(figsize=(1.3 + 1.25 * len(names), 3.4), dpi=100)
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        d = np.asarray(diffs[name], dtype=float)
        ax.scatter(i + rng.uniform(-0.12, 0.12, d.size), d, s=16, alpha=0.75, color="tab:blue")
        ax.hlines(d.mean(), i - 0.3, i + 0.3, color="tab:red", lw=2)
    ax.axhline(0.0, color="0.4", lw=0.8, ls="--")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


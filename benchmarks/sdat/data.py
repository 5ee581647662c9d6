"""Domain-adaptation data shared by the SDAT and S3VAADA reproductions.

Two sources of data, one shape for both (:class:`AdaptationData`):

- ``digits`` (the ``smoke`` and ``cpu`` presets): scikit-learn's 8x8 digits split in two
  halves; the source half as it is, the target half rotated by ``degrees`` and given
  Gaussian pixel noise of standard deviation ``noise``. A stratified share of the target
  half is held out as the test set and is never seen in training.
- ``folder`` (the ``paper`` presets): Office-31, Office-Home, VisDA-2017 or DomainNet as
  image folders ``root/domain/class/*.jpg`` the user gives, with the usual ImageNet
  transforms. The target domain is split the same way into a training pool and a
  held-out test share.

Everything here is deterministic given the ``seed``: the split, the pixel noise and
the batch order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from benchmarks._digits import load_digits_tensors

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


@dataclass
class AdaptationData:
    """One source -> target task.

    Attributes:
        source: Labelled source examples ``(x, y)``, training transforms.
        target: The target training pool ``(x, y)``, training transforms. Its labels are
            read only when an active-learning oracle labels an example.
        target_eval: The same pool, in the same order, with evaluation transforms (for
            scoring candidates during selection).
        test: Held-out target examples ``(x, y)``, evaluation transforms.
        num_classes: Number of classes.
        name: A short description (``"digits rot30 noise0.1"``, ``"office31 amazon->webcam"``).
    """

    source: Dataset
    target: Dataset
    target_eval: Dataset
    test: Dataset
    num_classes: int
    name: str


# ----------------------------------------------------------------------------------------
# digits


def rotate_images(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate a batch of images about their centres by ``degrees`` (bilinear, zero fill).

    Shape:
        ``x``: ``(N, C, H, W)``; the output has the same shape.
    """
    theta = math.radians(degrees)
    c, s = math.cos(theta), math.sin(theta)
    mat = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(mat.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _split_half(labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified halves of the indices (class by class, the odd item goes to the first half)."""
    first, second = [], []
    for c in labels.unique(sorted=True).tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        k = (idx.numel() + 1) // 2
        first.append(idx[:k])
        second.append(idx[k:])
    return torch.cat(first).sort().values, torch.cat(second).sort().values


def _stratified_holdout(
    labels: torch.Tensor, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rest, held_out)`` positions with ``round(fraction * n_c)`` of each class held out."""
    rest, held = [], []
    for c in labels.unique(sorted=True).tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        k = int(round(fraction * idx.numel()))
        if not 0 < k < idx.numel():
            raise ValueError(f"test_fraction={fraction} leaves class {c} ({idx.numel()} items) with an empty split")
        held.append(idx[:k])
        rest.append(idx[k:])
    return torch.cat(rest).sort().values, torch.cat(held).sort().values


def make_digits_task(seed: int, degrees: float, noise: float, test_fraction: float = 1 / 3) -> AdaptationData:
    """Digits -> rotated, noisy digits, split by ``seed``.

    Args:
        seed: Seed of the source/target split, the held-out split and the pixel noise.
        degrees: Rotation of the target images (anticlockwise, degrees).
        noise: Standard deviation of the Gaussian noise added to the target pixels (which
            are in ``[0, 1]`` before the noise; not clipped afterwards).
        test_fraction: Share of each target class held out for testing, in ``(0, 1)``.

    Returns:
        The task; every dataset is a :class:`~torch.utils.data.TensorDataset` of
        ``(N, 1, 8, 8)`` float32 images and int64 labels.

    Raises:
        ValueError: If ``noise`` is negative or ``test_fraction`` is outside ``(0, 1)``.
    """
    if noise < 0:
        raise ValueError(f"noise must be in [0, inf), got {noise}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    x, y = load_digits_tensors()
    g = torch.Generator().manual_seed(10_007 * seed + 1)

    # 1. Source and target halves, stratified by class.
    src_idx, tgt_idx = _split_half(y, g)

    # 2. The target half is rotated and made noisy (once, so its images are fixed).
    xt = rotate_images(x[tgt_idx], degrees)
    xt = xt + noise * torch.randn(xt.shape, generator=g)
    yt = y[tgt_idx]

    # 3. A held-out test share of the target, never seen in training.
    pool, test = _stratified_holdout(yt, test_fraction, g)
    target = TensorDataset(xt[pool], yt[pool])
    return AdaptationData(
        source=TensorDataset(x[src_idx], y[src_idx]),
        target=target,
        target_eval=target,
        test=TensorDataset(xt[test], yt[test]),
        num_classes=10,
        name=f"digits rot{degrees:g} noise{noise:g}",
    )


# ----------------------------------------------------------------------------------------
# image folders


def image_transforms(resize: int, crop: int, train: bool) -> Any:
    """The standard ImageNet-style transforms of the domain-adaptation benchmarks.

    Training: resize to ``resize x resize``, random crop of ``crop`` pixels, random
    horizontal flip, ImageNet normalisation. Evaluation: resize, centre crop, normalisation.
    """
    from torchvision import transforms as T

    steps: list[Any] = [T.Resize((resize, resize))]
    steps += [T.RandomCrop(crop), T.RandomHorizontalFlip()] if train else [T.CenterCrop(crop)]
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)


def _image_folder(path: Path, transform: Any) -> Any:
    from torchvision.datasets import ImageFolder

    if not path.is_dir():
        raise FileNotFoundError(f"domain folder {path} does not exist (expected root/domain/class/*.jpg)")
    return ImageFolder(str(path), transform=transform, is_valid_file=lambda p: p.lower().endswith(IMAGE_SUFFIXES))


def make_folder_task(
    root: str | Path,
    source: str,
    target: str,
    seed: int,
    *,
    test_fraction: float = 1 / 3,
    resize: int = 256,
    crop: int = 224,
) -> AdaptationData:
    """A source -> target task read from ``root/source/class/*.jpg`` and ``root/target/class/*.jpg``.

    Args:
        root: The data set's folder (for example Office-31's, holding ``amazon/``, ``dslr/``, ``webcam/``).
        source: Source domain folder name.
        target: Target domain folder name.
        seed: Seed of the held-out split of the target domain.
        test_fraction: Share of each target class held out for testing, in ``(0, 1)``.
        resize: Side the images are resized to before cropping.
        crop: Side of the (random in training, central in evaluation) crop.

    Raises:
        FileNotFoundError: If a domain folder is missing.
        ValueError: If the two domains do not have the same class folders.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if crop > resize:
        raise ValueError(f"crop must be at most resize={resize}, got {crop}")
    root = Path(root)
    train_tf, eval_tf = image_transforms(resize, crop, True), image_transforms(resize, crop, False)
    src = _image_folder(root / source, train_tf)
    tgt_train = _image_folder(root / target, train_tf)
    tgt_eval = _image_folder(root / target, eval_tf)
    if src.classes != tgt_train.classes:
        raise ValueError(
            f"domains {source!r} and {target!r} have different classes: {len(src.classes)} vs "
            f"{len(tgt_train.classes)} folders, first differences "
            f"{sorted(set(src.classes) ^ set(tgt_train.classes))[:5]}"
        )
    labels = torch.tensor(tgt_train.targets, dtype=torch.int64)
    pool, test = _stratified_holdout(labels, test_fraction, torch.Generator().manual_seed(10_007 * seed + 2))
    return AdaptationData(
        source=src,
        target=Subset(tgt_train, pool.tolist()),
        target_eval=Subset(tgt_eval, pool.tolist()),
        test=Subset(tgt_eval, test.tolist()),
        num_classes=len(src.classes),
        name=f"{root.name} {source}->{target}",
    )


def make_task(data: dict[str, Any], seed: int, setting: dict[str, Any] | None = None) -> AdaptationData:
    """The task a configuration's ``data`` section describes, with ``setting`` overriding its keys.

    ``kind`` is ``"digits"`` (keys ``degrees``, ``noise``, ``test_fraction``) or ``"folder"``
    (keys ``root``, ``source``, ``target``, ``test_fraction``, ``resize``, ``crop``).

    Raises:
        ValueError: If ``kind`` is unknown, or the folder data have no ``root``.
    """
    d = {**data, **(setting or {})}
    if d["kind"] == "digits":
        return make_digits_task(seed, float(d["degrees"]), float(d["noise"]), float(d["test_fraction"]))
    if d["kind"] == "folder":
        if not d.get("root"):
            raise ValueError("the folder data need a root: --set data.root=/path/to/dataset (domain/class/*.jpg)")
        return make_folder_task(
            d["root"], d["source"], d["target"], seed,
            test_fraction=float(d["test_fraction"]), resize=int(d["resize"]), crop=int(d["crop"]),
        )
    raise ValueError(f"data.kind must be 'digits' or 'folder', got {d['kind']!r}")


# ----------------------------------------------------------------------------------------
# batches


def labels_of(dataset: Dataset) -> torch.Tensor:
    """All labels of a dataset, without loading images where the dataset allows it."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1]
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.int64)]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets, dtype=torch.int64)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.int64)  # type: ignore[arg-type]


def forever(
    dataset: Dataset, batch_size: int, generator: torch.Generator, *, workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An endless stream of shuffled batches (reshuffled each pass, last short batch dropped).

    In-memory tensor datasets are indexed directly, which is far faster than a
    :class:`~torch.utils.data.DataLoader` for tiny examples. A dataset smaller than
    ``batch_size`` yields batches of its whole size.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("cannot draw batches from an empty dataset")
    bs = min(batch_size, n)
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors
        while True:
            perm = torch.randperm(n, generator=generator)
            for i in range(0, n - bs + 1, bs):
                idx = perm[i : i + bs]
                yield x[idx], y[idx]
    while True:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        loader = DataLoader(
            dataset, batch_size=bs, shuffle=True, drop_last=True, num_workers=workers,
            generator=torch.Generator().manual_seed(seed),
        )
        yield from loader


def in_order(dataset: Dataset, batch_size: int, *, workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The dataset's examples in order, in batches (the last one may be short)."""
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors
        for i in range(0, len(y), batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]
        return
    yield from DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)

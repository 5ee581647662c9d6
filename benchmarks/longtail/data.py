r"""Long-tailed data sets: CIFAR-10/100-LT, ImageNet-LT / iNaturalist list files, and long-tailed digits.

Every loader returns a :class:`LongTailData`: training tensors (or a list-file data set for the
ImageNet-scale sets), a balanced test set, and the per-class training counts ``cls_num_list``
that the losses and the re-weighting need. Images are never downloaded: the CIFAR loaders read
the standard python archive from a folder the user gives, the list-file loader reads
``path label`` lines and an image root.

The long-tailed profile is exponential (Cao et al. 2019):

.. math::

    n_i = \lfloor n_{max} \cdot IF^{-i / (C - 1)} \rfloor, \qquad i = 0, \dots, C - 1,

so CIFAR-10 at imbalance factor ``IF = 100`` keeps 5000, 2997, ..., 50 images (12,406 in all).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from benchmarks._digits import load_digits_tensors, stratified_split

CIFAR_MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {10: (0.2023, 0.1994, 0.2010), 100: (0.2673, 0.2564, 0.2762)}


@dataclass
class LongTailData:
    """A long-tailed training set and its balanced test set.

    Attributes:
        name: Data set name (``digits-lt``, ``cifar10-lt``, ...).
        num_classes: Number of classes ``C``.
        cls_num_list: Training images per class, class 0 (the largest) first.
        train_x: Training images ``(N, channels, H, W)`` float32, normalised; ``None`` for list-file sets.
        train_y: Training labels ``(N,)`` int64.
        test_x: Test images, same layout as ``train_x``.
        test_y: Test labels.
        augment: Augmentation of the training batches (tensor sets): ``pad`` (random shift of up to that
            many pixels), ``flip`` (random mirror), ``fill`` (per-channel value outside the image: a
            black pixel after normalisation, as when padding precedes normalisation).
        train_set: A ``torch.utils.data.Dataset`` of ``(image, label)`` for list-file sets.
        test_set: Its test counterpart.
    """

    name: str
    num_classes: int
    cls_num_list: list[int]
    train_x: torch.Tensor | None = None
    train_y: torch.Tensor | None = None
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None
    augment: dict[str, Any] = field(default_factory=dict)
    train_set: Any = None
    test_set: Any = None


def long_tail_counts(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Per-class counts of the exponential profile, ``n_i = floor(n_max * IF^(-i/(C-1)))``.

    Args:
        n_max: Images of the largest class (class 0).
        num_classes: Number of classes ``C`` (at least 2).
        imbalance_factor: ``IF = n_0 / n_{C-1}``, at least 1.

    Returns:
        ``C`` counts, non-increasing, the first equal to ``n_max``.

    Raises:
        ValueError: If an argument is out of range.
    """
    if n_max < 1:
        raise ValueError(f"n_max must be in [1, inf), got {n_max}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be in [2, inf), got {num_classes}")
    if imbalance_factor < 1:
        raise ValueError(f"imbalance_factor must be in [1, inf), got {imbalance_factor}")
    ratio = 1.0 / float(imbalance_factor)
    # NOTE: a small epsilon keeps floor() from losing an image to rounding (IF = 100: 50.0 -> 49).
    return [max(1, int(n_max * ratio ** (i / (num_classes - 1)) + 1e-9)) for i in range(num_classes)]


def long_tail_subset(labels: torch.Tensor, counts: Sequence[int], seed: int = 0) -> torch.Tensor:
    """Indices of a deterministic per-class subset: ``counts[c]`` random items of each class ``c``.

    Args:
        labels: ``(N,)`` integer labels in ``[0, len(counts))``.
        counts: Items to keep per class.
        seed: Seed of the per-class draws (the same seed gives the same subset on every machine).

    Returns:
        Sorted indices into ``labels``.

    Raises:
        ValueError: If a class has fewer items than asked for.
    """
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c, n in enumerate(counts):
        idx = (labels == c).nonzero().flatten()
        if idx.numel() < n:
            raise ValueError(f"class {c} has {idx.numel()} items, fewer than the {n} asked for")
        keep.append(idx[torch.randperm(idx.numel(), generator=g)[:n]])
    return torch.cat(keep).sort().values


# --------------------------------------------------------------------------- digits


def digits_lt(
    imbalance_factor: float = 100.0, test_per_class: int = 30, n_max: int | None = None, seed: int = 0
) -> LongTailData:
    """Long-tailed 8x8 digits (scikit-learn's bundled set): the CPU-scale stand-in for CIFAR-10-LT.

    ``test_per_class`` images of each class are held out as a balanced test set; from the rest,
    class ``i`` keeps ``n_i`` images of the exponential profile (``n_max`` defaults to all that
    class 0 has left, 148 at 30 test images per class).

    Args:
        imbalance_factor: Ratio of the largest to the smallest class.
        test_per_class: Held-out test images per class.
        n_max: Training images of class 0; ``None`` takes all of class 0's remainder.
        seed: Seed of the held-out split and of the subsets.

    Returns:
        The data; augmentation is a +-1 pixel shift (black outside the image), no flip.
    """
    x, y = load_digits_tensors()
    rest, held = stratified_split(y, test_per_class, seed)
    available = torch.bincount(y[rest], minlength=10)
    counts = long_tail_counts(int(n_max or available[0]), 10, imbalance_factor)
    sub = rest[long_tail_subset(y[rest], counts, seed)]
    mean, std = 0.3, 0.4
    norm = lambda t: (t - mean) / std  # noqa: E731
    return LongTailData(
        name="digits-lt",
        num_classes=10,
        cls_num_list=counts,
        train_x=norm(x[sub]),
        train_y=y[sub],
        test_x=norm(x[held]),
        test_y=y[held],
        augment={"pad": 1, "flip": False, "fill": [norm(torch.tensor(0.0)).item()]},
    )


# --------------------------------------------------------------------------- CIFAR


def _unpickle(path: Path) -> dict[bytes, Any]:
    with open(path, "rb") as fh:
        return pickle.load(fh, encoding="bytes")


def _find_cifar_folder(root: Path, num_classes: int) -> Path:
    sub = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    for candidate in (root, root / sub):
        marker = "test_batch" if num_classes == 10 else "test"
        if (candidate / marker).exists():
            return candidate
    raise FileNotFoundError(
        f"no CIFAR-{num_classes} python archive under {root} (looked for {sub}/ or its files there); "
        "download and extract the python version of the archive yourself"
    )


def read_cifar(root: str | Path, num_classes: Literal[10, 100]) -> tuple[torch.Tensor, ...]:
    """Read the standard CIFAR python archive (``data_batch_*``/``test_batch`` or ``train``/``test``).

    Args:
        root: The extracted folder, or the folder that holds it.
        num_classes: 10 or 100.

    Returns:
        ``(train_x, train_y, test_x, test_y)``; images uint8 ``(N, 3, 32, 32)``, labels int64.

    Raises:
        FileNotFoundError: If the archive is not there.
        ValueError: If ``num_classes`` is not 10 or 100.
    """
    if num_classes not in (10, 100):
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")
    folder = _find_cifar_folder(Path(root), num_classes)
    if num_classes == 10:
        train_files = sorted(folder.glob("data_batch_*"))
        test_files = [folder / "test_batch"]
        key = b"labels"
    else:
        train_files, test_files, key = [folder / "train"], [folder / "test"], b"fine_labels"
    if not train_files:
        raise FileNotFoundError(f"no training batches in {folder}")

    def load(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for f in files:
            d = _unpickle(f)
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[key], dtype=np.int64))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    return (*load(train_files), *load(test_files))


def cifar_lt(
    root: str | Path, num_classes: Literal[10, 100] = 10, imbalance_factor: float = 100.0, seed: int = 0
) -> LongTailData:
    """CIFAR-10-LT or CIFAR-100-LT: exponential profile over the training set, full balanced test set.

    Args:
        root: Folder with the CIFAR python archive.
        num_classes: 10 or 100.
        imbalance_factor: 100 or 10 in the paper.
        seed: Seed of the per-class subsets (0 in the paper's protocol).

    Returns:
        The data, normalised per channel; augmentation is RandomCrop(32, pad 4) and a horizontal flip.
    """
    train_x, train_y, test_x, test_y = read_cifar(root, num_classes)
    n_max = int(torch.bincount(train_y, minlength=num_classes).min())
    counts = long_tail_counts(n_max, num_classes, imbalance_factor)
    sub = long_tail_subset(train_y, counts, seed)
    mean = torch.tensor(CIFAR_MEAN[num_classes]).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD[num_classes]).view(1, 3, 1, 1)
    norm = lambda t: (t.float() / 255.0 - mean) / std  # noqa: E731
    return LongTailData(
        name=f"cifar{num_classes}-lt",
        num_classes=num_classes,
        cls_num_list=counts,
        train_x=norm(train_x[sub]),
        train_y=train_y[sub],
        test_x=norm(test_x),
        test_y=test_y,
        augment={"pad": 4, "flip": True, "fill": (-mean / std).flatten().tolist()},
    )


# --------------------------------------------------------------------------- list files


def read_list_file(path: str | Path) -> tuple[list[str], list[int]]:
    """Parse an ImageNet-LT / iNaturalist list file: one ``relative/path label`` per line.

    Raises:
        ValueError: On a line that is not ``path label``.
    """
    paths, labels = [], []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{path}:{lineno}: expected 'path label', got {line!r}")
            paths.append(parts[0])
            labels.append(int(parts[1]))
    return paths, labels


class ListImageDataset(torch.utils.data.Dataset):
    """Images named by a list file under a root folder, each with its integer label."""

    def __init__(self, root: str | Path, list_file: str | Path, transform: Any = None) -> None:
        self.root = Path(root)
        self.paths, self.labels = read_list_file(list_file)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        with Image.open(self.root / self.paths[i]) as im:
            img = im.convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, self.labels[i]


def list_file_lt(
    name: str, root: str | Path, train_list: str | Path, test_list: str | Path, image_size: int = 224
) -> LongTailData:
    """ImageNet-LT or iNaturalist 2018 from their list files (``path label``) and an image root.

    Training images get RandomResizedCrop and a horizontal flip; test images a resize and a centre
    crop; both the ImageNet normalisation.
    """
    from torchvision import transforms as T

    norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    test_tf = T.Compose([T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), norm])
    train_set = ListImageDataset(root, train_list, train_tf)
    test_set = ListImageDataset(root, test_list, test_tf)
    num_classes = max(max(train_set.labels), max(test_set.labels)) + 1
    counts = np.bincount(np.asarray(train_set.labels), minlength=num_classes).tolist()
    return LongTailData(name=name, num_classes=num_classes, cls_num_list=counts, train_set=train_set,
                        test_set=test_set)


def load_data(cfg: dict[str, Any]) -> LongTailData:
    """Build the data set a configuration's ``data`` section names."""
    kind = cfg["name"]
    if kind == "digits-lt":
        return digits_lt(cfg["imbalance_factor"], cfg.get("test_per_class", 30))
    if kind in ("cifar10-lt", "cifar100-lt"):
        if not cfg.get("root"):
            raise ValueError(f"data.root must name the folder with the CIFAR python archive for {kind}")
        return cifar_lt(cfg["root"], 10 if kind == "cifar10-lt" else 100, cfg["imbalance_factor"])
    if kind in ("imagenet-lt", "inat2018"):
        for k in ("root", "train_list", "test_list"):
            if not cfg.get(k):
                raise ValueError(f"data.{k} must be set for {kind}")
        return list_file_lt(kind, cfg["root"], cfg["train_list"], cfg["test_list"])
    known = "digits-lt, cifar10-lt, cifar100-lt, imagenet-lt, inat2018"
    raise ValueError(f"data.name must be one of {known}, got {kind!r}")

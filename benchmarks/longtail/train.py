"""One training run of the long-tail grid: a loss, a re-weighting rule and an optimizer on one seed.

The recipe follows LDAM-DRW (Cao et al. 2019) as used by Rangwani et al. (2022): SGD with
momentum, a linear warm-up, two step decays late in training, and deferred re-weighting that
switches to class-balanced weights at a fixed fraction of training. Every schedule point is a
fraction of ``epochs``, so the same configuration reads right at 200 epochs (CIFAR) and at 90
(ImageNet-LT). The optimizers, losses and re-weighting rules come from :mod:`smoothopt`; this
module only wires them together, feeds batches and evaluates the last epoch (no selection on
the test set).

Runs under ``torchrun``: every rank draws the same permutation of the training set and takes
its share of each batch (:func:`benchmarks._dist.shard_indices`); gradients are averaged by DDP.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._dist import all_reduce_sum, rank_and_world, shard_indices, unwrap, wrap_ddp
from benchmarks.longtail.data import LongTailData
from benchmarks.longtail.models import build_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    """One row of the grid.

    Attributes:
        name: Row name (``ldam_drw_sam``); used in unit keys.
        loss: ``ce``, ``ldam`` or ``vs``.
        drw: Whether deferred re-weighting switches on at ``train.drw_start``.
        optimizer: ``sgd``, ``sam``, ``pgd`` (perturbed gradient descent) or ``negcurv``
            (steps along negative curvature).
        rho: SAM radius (``sam`` only).
        rho_values: A rho schedule tied to re-weighting (``sam`` only, in place of ``rho``): the first
            value during the learning-rate warm-up, the middle one until re-weighting starts, the
            last one from then on (:meth:`smoothopt.saddle.PhasedRho.for_reweighting`).
        options: Extra keyword arguments of the optimizer (``pgd``, ``negcurv``).
    """

    name: str
    loss: str
    drw: bool = False
    optimizer: str = "sgd"
    rho: float | None = None
    rho_values: tuple[float, ...] | None = None
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_config(cls, name: str, cfg: dict[str, Any]) -> Method:
        values = cfg.get("rho_values")
        return cls(
            name=name,
            loss=cfg["loss"],
            drw=bool(cfg.get("drw", False)),
            optimizer=cfg.get("optimizer", "sgd"),
            rho=cfg.get("rho"),
            rho_values=tuple(float(r) for r in values) if values else None,
            options=tuple(sorted(cfg.get("options", {}).items())),
        )

    @property
    def head(self) -> str:
        """LDAM needs the cosine head; the others use a linear one."""
        return "cosine" if self.loss == "ldam" else "linear"


# --------------------------------------------------------------------------- schedules


def lr_factor(epoch: int, epochs: int, warmup_epochs: int, decays: list[list[float]]) -> float:
    """Learning-rate multiplier of ``epoch`` (0-based): linear warm-up, then step decays.

    ``decays`` holds ``[fraction, factor]`` pairs: from epoch ``fraction * epochs`` on the
    multiplier is ``factor`` (the last pair reached wins). LDAM-DRW's recipe at 200 epochs is
    ``[[0.8, 0.01], [0.9, 1e-4]]``: x0.01 from epoch 160 and x1e-4 from 180.
    """
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    factor = 1.0
    for fraction, f in decays:
        if epoch >= round(fraction * epochs):
            factor = f
    return factor


def drw_start_epoch(epochs: int, start: float) -> int:
    """The first re-weighted epoch (``round(start * epochs)``)."""
    return round(start * epochs)


# --------------------------------------------------------------------------- batches


def shift_and_flip(
    x: torch.Tensor, pad: int, flip: bool, fill: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (``fill`` outside the image) and an optional mirror.

    The batch form of ``RandomCrop(size, padding=pad)`` followed by ``RandomHorizontalFlip()``;
    offsets are drawn on the CPU from ``generator`` so a seed gives the same batches on any device.
    """
    n, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x - fill, (pad, pad, pad, pad)) + fill
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if flip:
        mirror = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
    return x


def _tensor_batches(
    data: LongTailData, batch_size: int, generator: torch.Generator, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    assert data.train_x is not None and data.train_y is not None  # noqa: S101 - internal invariant
    n = data.train_y.numel()
    perm = torch.randperm(n, generator=generator)
    fill = data.augment.get("fill", torch.zeros(1))
    fill = torch.as_tensor(fill, dtype=data.train_x.dtype).view(1, -1, 1, 1).to(device)
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        # every rank draws the whole batch's augmentation so the generator stays in step
        x = data.train_x[idx].to(device)
        x = shift_and_flip(x, data.augment.get("pad", 0), data.augment.get("flip", False), fill, generator)
        mine = shard_indices(idx.numel())
        yield x[mine.to(device)], data.train_y[idx][mine].to(device)


def _loader_batches(
    data: LongTailData, batch_size: int, generator: torch.Generator, device: torch.device, workers: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(data.train_set)
    perm = torch.randperm(n, generator=generator)
    rank, world = rank_and_world()
    mine = perm[shard_indices(n, rank, world)].tolist()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(data.train_set, mine), batch_size=max(1, batch_size // world), num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=False,
    )
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@torch.no_grad()
def predict(model: nn.Module, data: LongTailData, device: torch.device, batch_size: int = 512,
            workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true labels of the whole test set (eval mode; every rank predicts everything)."""
    model.eval()
    preds, labels = [], []
    if data.test_x is not None:
        assert data.test_y is not None  # noqa: S101 - internal invariant
        for start in range(0, data.test_y.numel(), batch_size):
            preds.append(model(data.test_x[start : start + batch_size].to(device)).argmax(1).cpu())
        labels.append(data.test_y)
    else:
        loader = torch.utils.data.DataLoader(data.test_set, batch_size=batch_size, num_workers=workers)
        for x, y in loader:
            preds.append(model(x.to(device)).argmax(1).cpu())
            labels.append(y)
    return torch.cat(preds), torch.cat(labels)


# --------------------------------------------------------------------------- library wiring


def build_loss(method: Method, cls_num_list: list[int], losses_cfg: dict[str, Any]) -> nn.Module:
    """The method's loss from :mod:`smoothopt` (cross-entropy from torch), unweighted to start with."""
    if method.loss == "ce":
        return nn.CrossEntropyLoss()
    if method.loss == "ldam":
        from smoothopt.losses import LDAMLoss

        return LDAMLoss(cls_num_list, **losses_cfg.get("ldam", {}))
    if method.loss == "vs":
        from smoothopt.losses import VSLoss

        return VSLoss(cls_num_list, **losses_cfg.get("vs", {}))
    raise ValueError(f"loss must be one of ce, ldam, vs, got {method.loss!r}")


def set_loss_weight(loss_fn: nn.Module, weight: torch.Tensor | None, device: torch.device) -> None:
    """Switch the per-class weights of a loss between epochs (the DRW switch; ``None`` = unweighted)."""
    if weight is not None:
        weight = weight.to(device)
    if hasattr(loss_fn, "set_weight"):
        loss_fn.set_weight(weight)
    else:  # torch's CrossEntropyLoss keeps its weight as a plain buffer
        loss_fn.weight = weight


def build_optimizer(
    method: Method, model: nn.Module, loss_fn: nn.Module, train_cfg: dict[str, Any], steps_per_epoch: int
) -> torch.optim.Optimizer:
    """SGD, or SAM / perturbed descent / negative-curvature escape from :mod:`smoothopt` around it."""
    base = dict(lr=train_cfg["lr"], momentum=train_cfg["momentum"], weight_decay=train_cfg["weight_decay"])
    params = [p for p in model.parameters() if p.requires_grad]
    options = dict(method.options)
    if method.optimizer == "sgd":
        return torch.optim.SGD(params, **base)
    if method.optimizer == "sam":
        from smoothopt.sam import SAM

        rho: float | Callable[[int], float]
        if method.rho_values is not None:
            from smoothopt.saddle import PhasedRho

            rho = PhasedRho.for_reweighting(
                train_cfg["epochs"], steps_per_epoch, start=train_cfg["drw_start"], values=method.rho_values,
                early_boundaries=(train_cfg["warmup_epochs"],) if len(method.rho_values) == 3 else (),
            )
        elif method.rho is None:
            raise ValueError(f"method {method.name!r}: optimizer 'sam' needs rho or rho_values")
        else:
            rho = float(method.rho)
        return SAM(params, torch.optim.SGD, rho=rho, **base)
    if method.optimizer == "pgd":
        from smoothopt.saddle import PerturbedGD

        return PerturbedGD(params, torch.optim.SGD, **options, **base)
    if method.optimizer == "negcurv":
        from smoothopt.hessian import NegativeCurvatureEscape

        # NOTE: the batch Hessian is probed in eval mode: in train mode smoothopt's escape (0.1.0) fails on
        # BatchNorm networks (a running-statistics buffer is modified in place between the graph's build and
        # its Hessian-vector products). Eval mode is also how the class-wise spectra are taken.
        options.setdefault("mode", "eval")
        return NegativeCurvatureEscape(torch.optim.SGD(params, **base), model, loss_fn, **options)
    raise ValueError(f"optimizer must be one of sgd, sam, pgd, negcurv, got {method.optimizer!r}")


# Where each optimizer of the grid lives; a row whose optimizer this smoothopt lacks is left out of the run.
OPTIMIZERS = {
    "sgd": ("torch.optim", "SGD"),
    "sam": ("smoothopt.sam", "SAM"),
    "pgd": ("smoothopt.saddle", "PerturbedGD"),
    "negcurv": ("smoothopt.hessian", "NegativeCurvatureEscape"),
}


def optimizer_available(kind: str) -> bool:
    """Whether the optimizer ``kind`` (a key of :data:`OPTIMIZERS`) can be imported."""
    import importlib

    module, name = OPTIMIZERS[kind]
    try:
        return hasattr(importlib.import_module(module), name)
    except ImportError:
        return False


def _norm_stats_frozen(model: nn.Module):
    """``smoothopt.freeze_norm_stats(model)``: BatchNorm statistics untouched during the perturbed pass."""
    from smoothopt.sam import freeze_norm_stats

    return freeze_norm_stats(model)


# --------------------------------------------------------------------------- the run


def train_one(
    config: dict[str, Any],
    method: Method,
    data: LongTailData,
    seed: int,
    device: torch.device,
    *,
    checkpoint: Callable[[str, nn.Module], None] | None = None,
    progress: Callable[[range], Any] | None = None,
) -> dict[str, Any]:
    """Train ``method`` on ``data`` with ``seed`` and evaluate the last epoch.

    Args:
        config: The experiment configuration (``model``, ``train``, ``losses`` sections).
        method: The grid row.
        data: The long-tailed data.
        seed: Seeds the initialisation, the batch order and the augmentation.
        device: Where to train.
        checkpoint: Called as ``checkpoint(tag, model)`` with ``tag`` ``"predrw"`` (just before the
            first re-weighted epoch) and ``"final"``.
        progress: Wraps the epoch range (a progress bar).

    Returns:
        ``per_class`` test accuracy (%), ``overall``, ``final_train_loss`` (last epoch, mean over
        ranks), ``steps``, wall and CPU seconds of training, and ``perturbations`` / ``escapes``:
        how often perturbed descent jumped or the negative-curvature optimizer stepped (``None``
        for the other optimizers).
    """
    tc = config["train"]
    epochs = int(tc["epochs"])
    torch.manual_seed(seed)
    model = build_model(config["model"], data.num_classes, method.head).to(device)
    model = wrap_ddp(model, device)
    loss_fn = build_loss(method, data.cls_num_list, config.get("losses", {})).to(device)
    if data.train_y is not None:
        n_train = data.train_y.numel()
    else:
        n_train = len(data.train_set)
    steps_per_epoch = math.ceil(n_train / tc["batch_size"])
    optimizer = build_optimizer(method, model, loss_fn, tc, steps_per_epoch)
    drw_at = drw_start_epoch(epochs, tc["drw_start"])
    reweight = None
    if method.drw:
        from smoothopt.losses import DeferredReweighting

        reweight = DeferredReweighting(data.cls_num_list, epochs, start=tc["drw_start"], beta=tc["beta"])
    generator = torch.Generator().manual_seed(seed)
    freeze = bool(tc.get("freeze_norm_stats", True))

    t0, c0 = time.perf_counter(), time.process_time()
    steps = 0
    epoch_loss = torch.zeros(2, dtype=torch.float64)
    epoch_iter = range(epochs)
    for epoch in progress(epoch_iter) if progress else epoch_iter:
        if checkpoint is not None and epoch == drw_at:
            checkpoint("predrw", unwrap(model))
        for group in optimizer.param_groups:
            group["lr"] = tc["lr"] * lr_factor(epoch, epochs, tc["warmup_epochs"], tc["lr_decay"])
        if reweight is not None:
            set_loss_weight(loss_fn, reweight.weights(epoch), device)
        model.train()
        epoch_loss.zero_()
        if data.train_x is not None:
            batches = _tensor_batches(data, tc["batch_size"], generator, device)
        else:
            batches = _loader_batches(data, tc["batch_size"], generator, device, tc.get("workers", 4))
        for x, y in batches:
            if method.optimizer == "sam":
                loss = _sam_step(optimizer, model, loss_fn, x, y, freeze)
            elif method.optimizer == "pgd":
                loss = _closure_step(optimizer, model, loss_fn, x, y)
            else:
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward()
                if method.optimizer == "negcurv":
                    optimizer.step(batch=(x, y))
                else:
                    optimizer.step()
            epoch_loss += torch.tensor([float(loss.detach()) * y.numel(), y.numel()], dtype=torch.float64)
            steps += 1
        if not math.isfinite(float(epoch_loss[0])):
            raise RuntimeError(f"{method.name} seed {seed}: the training loss diverged at epoch {epoch}")
    train_time, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    all_reduce_sum(epoch_loss)
    if checkpoint is not None:
        checkpoint("final", unwrap(model))

    pred, true = predict(unwrap(model), data, device)
    from smoothopt.evaluation import per_class_accuracy

    per_class = (100.0 * per_class_accuracy(pred, true, data.num_classes)).tolist()
    overall = 100.0 * float((pred == true).double().mean())
    return {
        "method": method.name,
        "seed": seed,
        "per_class": per_class,
        "overall": overall,
        "final_train_loss": float(epoch_loss[0] / epoch_loss[1]),
        "steps": steps,
        "train_s": round(train_time, 3),
        "train_cpu_s": round(train_cpu, 3),
        # how often the saddle-escape optimizers acted
        "perturbations": getattr(optimizer, "num_perturbations", None),
        "escapes": getattr(optimizer, "num_escapes", None),
    }


def _sam_step(
    optimizer: torch.optim.Optimizer, model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor,
    freeze: bool,
) -> torch.Tensor:
    """One SAM step: clean pass, ascent, perturbed pass (BatchNorm statistics frozen), descent."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    if optimizer.first_step(zero_grad=True):
        with _norm_stats_frozen(model) if freeze else contextlib.nullcontext():
            loss_fn(model(x), y).backward()
    optimizer.step()
    return loss.detach()


def _closure_step(
    optimizer: torch.optim.Optimizer, model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """One step of an optimizer that re-evaluates the gradient itself (perturbed gradient descent)."""

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    return torch.as_tensor(optimizer.step(closure)).detach()

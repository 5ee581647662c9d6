"""The grid of the long-tail reproduction: presets, unit keys, and what each unit runs.

Two kinds of unit:

* ``train_{method}_seed{s}``: one training run (:func:`benchmarks.longtail.train.train_one`); the
  result holds the per-class test accuracy of the last epoch. The methods named in
  ``paired_methods`` run on every seed, the others on the first ``extra_seeds`` seeds.
* ``spectrum_{method}_{tag}_seed{s}``: the class-wise Hessian spectra of a saved model
  (``tag`` ``final``, or ``predrw`` for the model just before re-weighting switches on).

The paired training units and their spectra come first, so that a run stopped early still holds
the comparisons that matter most.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import torch

from benchmarks._harness import RunContext
from benchmarks._io import save_torch
from benchmarks.longtail.data import LongTailData, load_data
from benchmarks.longtail.train import Method, optimizer_available, train_one

# The CIFAR-LT recipe of LDAM-DRW (Cao et al. 2019) with every schedule point a fraction of training.
_RECIPE = {
    "epochs": 200,
    "batch_size": 128,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 2e-4,
    "warmup_epochs": 5,
    "lr_decay": [[0.8, 0.01], [0.9, 1e-4]],
    "drw_start": 0.8,
    "beta": 0.9999,
    "freeze_norm_stats": True,
    "workers": 4,
}


def _methods(rho_ce: float, rho_ce_drw: float, rho_ldam: float, rho_vs: float) -> dict:
    """The grid's rows; ``rho_*`` are the SAM radii per loss."""
    ldam_drw = {"loss": "ldam", "drw": True}
    return {
        "ce": {"loss": "ce"},
        "ce_sam": {"loss": "ce", "optimizer": "sam", "rho": rho_ce},
        "ce_drw": {"loss": "ce", "drw": True},
        "ce_drw_sam": {"loss": "ce", "drw": True, "optimizer": "sam", "rho": rho_ce_drw},
        "ldam_drw": dict(ldam_drw),
        "ldam_drw_sam": {**ldam_drw, "optimizer": "sam", "rho": rho_ldam},
        # rho 0.05 during warm-up, 0.1 until re-weighting starts, then 0.5: the ImageNet-LT schedule of
        # Rangwani et al. (their rho_steps 0.05 0.1 0.5 0.5 with DRW at epoch 60 of 90).
        "ldam_drw_sam_sched": {**ldam_drw, "optimizer": "sam", "rho_values": [0.05, 0.1, 0.5]},
        "vs": {"loss": "vs"},
        "vs_sam": {"loss": "vs", "optimizer": "sam", "rho": rho_vs},
        "ldam_drw_pgd": {
            **ldam_drw, "optimizer": "pgd",
            # a noise ball as wide as SAM's rho for LDAM, at most one jump every 20 steps, when the batch
            # gradient norm is at most 0.1 (on digits its median falls below 0.1 after about 60 of 200 epochs)
            "options": {"radius": rho_ldam, "threshold": 0.1, "interval": 20},
        },
        "ldam_drw_negcurv": {
            **ldam_drw, "optimizer": "negcurv",
            # a Lanczos check of the batch Hessian every 20 steps; a step of 0.1 along u when lambda_min < -1e-3
            "options": {"step_size": 0.1, "epsilon": 1e-3, "lanczos_steps": 10, "every": 20},
        },
    }


_COMPARISONS = [
    ["ldam_drw_sam", "ldam_drw"],
    ["vs_sam", "vs"],
    ["ce_sam", "ce"],
    ["ce_drw_sam", "ce_drw"],
    ["ldam_drw_sam_sched", "ldam_drw"],
    ["ldam_drw_sam_sched", "ldam_drw_sam"],
    ["ldam_drw_pgd", "ldam_drw"],
    ["ldam_drw_negcurv", "ldam_drw"],
    ["ce_drw", "ce"],
    ["ldam_drw", "ce_drw"],
]

_SPECTRA = {
    "seeds": [0],
    "methods": ["ldam_drw", "ldam_drw_sam", "vs", "vs_sam"],
    "predrw_methods": ["ldam_drw", "ldam_drw_sam"],
    "lanczos_steps": 100,
    "density_probes": 1,
    "trace_probes": 10,
    "bins": 200,
    "sigma": 0.01,
}

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "data": {"name": "digits-lt", "imbalance_factor": 100, "test_per_class": 30},
        "model": "digits_cnn",
        "train": {**_RECIPE, "epochs": 3, "warmup_epochs": 1, "workers": 0},
        "losses": {"ldam": {"max_m": 0.5, "s": 30.0}, "vs": {"gamma": 0.3, "tau": 1.0}},
        "methods": _methods(0.1, 0.1, 0.5, 0.5),
        "paired_methods": ["ldam_drw", "ldam_drw_sam", "vs", "vs_sam"],
        "extra_seeds": 2,
        "comparisons": _COMPARISONS,
        "groups": {"head_fraction": 0.7, "many_threshold": 100, "few_threshold": 20},
        "spectra": {**_SPECTRA, "methods": ["ldam_drw", "ldam_drw_sam"], "predrw_methods": ["ldam_drw"],
                    "lanczos_steps": 5, "trace_probes": 2, "bins": 50},
    },
    "cpu": {
        "data": {"name": "digits-lt", "imbalance_factor": 100, "test_per_class": 30},
        "model": "digits_cnn",
        "train": {**_RECIPE, "workers": 0},
        "losses": {"ldam": {"max_m": 0.5, "s": 30.0}, "vs": {"gamma": 0.3, "tau": 1.0}},
        "methods": _methods(0.1, 0.1, 0.5, 0.5),
        "paired_methods": ["ldam_drw", "ldam_drw_sam", "vs", "vs_sam"],
        "extra_seeds": 5,
        "comparisons": _COMPARISONS,
        "groups": {"head_fraction": 0.7, "many_threshold": 100, "few_threshold": 20},
        "spectra": _SPECTRA,
    },
    "paper": {
        # ImageNet-LT / iNaturalist: --set data.name=imagenet-lt data.root=... data.train_list=... data.test_list=...
        "data": {"name": "cifar10-lt", "imbalance_factor": 100, "root": None, "train_list": None, "test_list": None},
        "model": "resnet32",
        "train": dict(_RECIPE),
        "losses": {"ldam": {"max_m": 0.5, "s": 30.0}, "vs": {"gamma": 0.3, "tau": 1.0}},
        # CIFAR-10-LT radii of Rangwani et al.: CE 0.1, CE+DRW 0.5, LDAM+DRW 0.8 (VS: not published, unconfirmed)
        "methods": _methods(0.1, 0.5, 0.8, 0.5),
        "paired_methods": ["ldam_drw", "ldam_drw_sam", "vs", "vs_sam"],
        "extra_seeds": 1,
        "comparisons": _COMPARISONS,
        "groups": {"head_fraction": 0.7, "many_threshold": 100, "few_threshold": 20},
        "spectra": {**_SPECTRA, "methods": ["ldam_drw", "ldam_drw_sam"]},
    },
}

DEFAULT_SEEDS = {"smoke": 2, "cpu": 15, "paper": 3}


# --------------------------------------------------------------------------- units


def method_seeds(config: dict[str, Any], method: str, seeds: list[int]) -> list[int]:
    """The seeds ``method`` runs on: all for the paired methods, the first ``extra_seeds`` otherwise."""
    if method in config["paired_methods"]:
        return list(seeds)
    return list(seeds[: config["extra_seeds"]])


def units(config: dict[str, Any], seeds: list[int]) -> list[str]:
    """Unit keys in execution order: the paired methods seed by seed, their spectra, then the other rows.

    The must-show comparisons and spectra therefore finish first; spectra of rows that are not paired
    come last, after their training units.
    """
    keys: list[str] = []
    deferred_spectra: list[str] = []
    # NOTE: rows whose optimizer this smoothopt lacks are left out (the report lists them); the
    # configuration stays the same, so a rerun after the library gains them adds just those units.
    runnable = [m for m, cfg in config["methods"].items() if optimizer_available(cfg.get("optimizer", "sgd"))]
    paired = [m for m in runnable if m in config["paired_methods"]]
    others = [m for m in runnable if m not in config["paired_methods"]]
    for seed in seeds:
        keys += [f"train_{m}_seed{seed}" for m in paired]
    spectra = config["spectra"]
    # NOTE: the class-wise spectra need the training set in memory, which the list-file sets are not.
    if spectra_available() and config["data"]["name"] not in ("imagenet-lt", "inat2018"):
        for seed in spectra["seeds"]:
            if seed not in seeds:
                continue
            # spectra of the paired methods need only their own training units, which come first
            for tag, names in (("final", spectra["methods"]), ("predrw", spectra["predrw_methods"])):
                late = [m for m in names if m in runnable and m not in config["paired_methods"]]
                keys += [f"spectrum_{m}_{tag}_seed{seed}" for m in names if m in paired]
                deferred_spectra.extend(f"spectrum_{m}_{tag}_seed{seed}" for m in late)
    for seed in seeds[: config["extra_seeds"]]:
        keys += [f"train_{m}_seed{seed}" for m in others]
    return keys + deferred_spectra


def spectra_available() -> bool:
    """Whether :mod:`smoothopt.hessian` offers the class-wise spectra the spectra units need."""
    try:
        from benchmarks.longtail.spectra import class_spectra  # noqa: F401
    except ImportError:
        return False
    return True


def parse_key(key: str) -> tuple[str, str, str | None, int]:
    """``(kind, method, tag, seed)`` of a unit key."""
    kind, rest = key.split("_", 1)
    body, seed = rest.rsplit("_seed", 1)
    tag = None
    if kind == "spectrum":
        body, tag = body.rsplit("_", 1)
    return kind, body, tag, int(seed)


_DATA_CACHE: dict[str, LongTailData] = {}


def get_data(config: dict[str, Any]) -> LongTailData:
    """The configuration's data set, loaded once per process."""
    key = json.dumps(config["data"], sort_keys=True)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_data(config["data"])
    return _DATA_CACHE[key]


def _model_path(ctx: RunContext, method: str, tag: str, seed: int):
    return ctx.path("models", f"{method}_{tag}_seed{seed}.pt")


def run_unit(config: dict[str, Any], key: str, ctx: RunContext) -> dict[str, Any]:
    """Run one unit (see the module docstring)."""
    kind, method_name, tag, seed = parse_key(key)
    data = get_data(config)
    method = Method.from_config(method_name, config["methods"][method_name])
    if kind == "train":
        spectra = config["spectra"]
        wanted = set()
        if seed in spectra["seeds"]:
            if method_name in spectra["methods"]:
                wanted.add("final")
            if method_name in spectra["predrw_methods"]:
                wanted.add("predrw")

        def checkpoint(tag: str, model: torch.nn.Module) -> None:
            if tag in wanted and ctx.is_main:
                save_torch(_model_path(ctx, method_name, tag, seed), copy.deepcopy(model.state_dict()))

        def progress(r: range):
            return ctx.progress(r, desc=key, total=len(r))

        return train_one(config, method, data, seed, ctx.device, checkpoint=checkpoint, progress=progress)
    if kind == "spectrum":
        from benchmarks.longtail.spectra import class_spectra

        state = torch.load(_model_path(ctx, method_name, tag, seed), map_location="cpu", weights_only=True)
        return {"method": method_name, "tag": tag, "seed": seed,
                **class_spectra(config, method, data, state, ctx.device)}
    raise ValueError(f"unknown unit {key!r}")

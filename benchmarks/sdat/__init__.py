"""SDAT (Rangwani et al., ICML 2022): smooth domain adversarial training, reproduced.

Grid: source only, DANN, DANN+SDAT, CDAN, CDAN+SDAT, CDAN+MCC, CDAN+MCC+SDAT, and SAM on the
whole DANN objective, per setting (a shift strength of the digits task, or a source -> target
pair of an image-folder data set), with ``rho`` per setting. Every run is scored on held-out
target data at its last iterate; methods are compared on the same seeds.

Run ``python -m benchmarks sdat --preset {smoke,cpu,paper}``; the paper preset needs
``--set data.root=/path/to/office-home`` (folders ``domain/class/*.jpg``).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks._harness import Experiment, RunContext, tiered_units

METHODS = ("source_only", "dann", "dann_sdat", "dann_sam", "cdan", "cdan_sdat", "cdan_mcc", "cdan_mcc_sdat")
LABELS = {
    "source_only": "source only",
    "dann": "DANN",
    "dann_sdat": "DANN+SDAT",
    "dann_sam": "SAM on the whole DANN objective",
    "cdan": "CDAN",
    "cdan_sdat": "CDAN+SDAT",
    "cdan_mcc": "CDAN+MCC",
    "cdan_mcc_sdat": "CDAN+MCC+SDAT",
}
COMPARISONS = (
    ("dann_sdat", "dann"),
    ("dann_sdat", "dann_sam"),
    ("dann_sam", "dann"),
    ("cdan_sdat", "cdan"),
    ("cdan_mcc_sdat", "cdan_mcc"),
    ("dann", "source_only"),
    ("cdan", "dann"),
)
HEADLINE = frozenset({"dann", "dann_sdat", "dann_sam", "cdan", "cdan_sdat"})
# Numbers quoted in the reports (accuracy %), from ../shared/PAPERS.md section 3.
PAPER_NUMBERS = {
    "Office-Home ResNet-50 (TLL protocol)": {"dann": 65.2, "cdan": 68.8, "cdan_mcc": 72.4},
    "Office-Home ViT-B/16": {"dann": 78.6, "cdan": 80.9, "cdan_mcc_sdat": 84.3},
    "earlier CPU-scale try (digits rot30, 8 seeds)": {
        "source_only": 35.4, "dann": 69.9, "dann_sam": 72.0, "dann_sdat": 77.7,
    },
}

_TRAINING = {
    "batch_size": 32,
    "lr": 0.01,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 1e-3,
    "lr_gamma": 0.001,
    "lr_decay": 0.75,
    "trade_off": 1.0,
    "mcc_weight": 1.0,
    "mcc_temperature": 2.5,
    "entropy_conditioning": False,
    "randomized": False,
    "randomized_dim": 1024,
    "adv_at_perturbed": True,
    "grl_schedule": "dann",
    "workers": 0,
}

_DIGITS = {"kind": "digits", "test_fraction": 1 / 3, "root": None}
_MLP = {"backbone": "mlp", "in_features": 64, "hidden": [256, 256], "bottleneck": 64, "checkpoint": None,
        "backbone_lr_mult": 1.0}

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        **_TRAINING,
        "data": dict(_DIGITS),
        "settings": {"rot30": {"degrees": 30.0, "noise": 0.2}},
        "grid": {"rot30": list(METHODS)},
        "rho": {"rot30": 0.05},
        "model": dict(_MLP),
        "discriminator_hidden": 64,
        "iterations": 20,
    },
    "cpu": {
        **_TRAINING,
        "data": dict(_DIGITS),
        "settings": {"rot30": {"degrees": 30.0, "noise": 0.2}, "rot20": {"degrees": 20.0, "noise": 0.1}},
        "grid": {"rot30": list(METHODS), "rot20": ["dann", "dann_sdat"]},
        "rho": {"rot30": 0.05, "rot20": 0.05},
        "model": dict(_MLP),
        "discriminator_hidden": 256,
        "iterations": 1500,
    },
    "paper": {
        **_TRAINING,
        "workers": 4,
        "data": {"kind": "folder", "test_fraction": 1 / 3, "root": None, "resize": 256, "crop": 224},
        "settings": {
            "Ar2Cl": {"source": "Art", "target": "Clipart"},
            "Pr2Cl": {"source": "Product", "target": "Clipart"},
        },
        "grid": {"Ar2Cl": list(METHODS), "Pr2Cl": list(METHODS)},
        "rho": {"Ar2Cl": 0.02, "Pr2Cl": 0.02},
        "model": {"backbone": "resnet50", "bottleneck": 256, "checkpoint": None, "backbone_lr_mult": 0.1},
        "discriminator_hidden": 1024,
        "iterations": 30_000,
    },
}


def main_setting(config: dict[str, Any]) -> str:
    """The setting with the most methods (the first of those on a tie): where the headline grid runs."""
    grid = config["grid"]
    return max(grid, key=lambda k: (len(grid[k]), -list(grid).index(k)))


def _units(config: dict[str, Any], seeds: list[int]) -> list[str]:
    unknown = {m for ms in config["grid"].values() for m in ms} - set(METHODS)
    if unknown:
        raise ValueError(f"grid names unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    missing = set(config["grid"]) - set(config["settings"])
    if missing:
        raise ValueError(f"grid names settings {sorted(missing)} absent from settings")
    # Order of work: the methods of the headline comparisons on the first setting for every seed,
    # then the rest of the first setting, then the other settings; an interrupted run has the
    # most important cells complete.
    return tiered_units(config["grid"], seeds, main_setting(config), HEADLINE)


def _run_unit(config: dict[str, Any], key: str, ctx: RunContext) -> dict[str, Any]:
    from benchmarks.sdat.train import train_method

    setting, method, seed = key.split("__")
    return train_method(config, setting, method, int(seed.removeprefix("seed")), ctx)


def _report(config: dict[str, Any], results: dict[str, dict[str, Any]], ctx: RunContext) -> str:
    from benchmarks.sdat.report import write_report

    return write_report(config, results, ctx)


EXPERIMENT = Experiment(
    name="sdat",
    title="SDAT: SAM on the task loss of domain-adversarial training",
    presets=PRESETS,
    default_seeds={"smoke": 2, "cpu": 10, "paper": 3},
    units=_units,
    run_unit=_run_unit,
    report=_report,
)

__all__ = ["COMPARISONS", "EXPERIMENT", "main_setting", "LABELS", "METHODS", "PAPER_NUMBERS", "PRESETS"]

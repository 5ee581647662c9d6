"""Reproduction of Aithal et al., "Understanding Hallucinations in Diffusion Models through Mode Interpolation".

``python -m benchmarks hallucination --preset {smoke,cpu,paper}``. See
``docs/reproductions/hallucination.md`` for what each preset measured.
"""

from __future__ import annotations

import copy
from typing import Any

from benchmarks._harness import Experiment
from benchmarks.hallucination.experiments import run_unit, unit_keys
from benchmarks.hallucination.report import build_report

_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 1e-3, "beta_end": 0.2, "start": 300, "train_t_max": 1000}

_COMMON: dict[str, Any] = {
    "schedule": _SCHEDULE,
    "windows": ["K2", "K3", "K5", "K10", "K20"],
    "primary_window": {"oned": "K10", "grid": "K5", "shapes": "t20"},
    "k_sigma": 6.0,
    "k_sigma_alt": 4.0,
    "retention": 0.96,
    "removal": 0.95,
}

_PAPER: dict[str, Any] = {
    **_COMMON,
    "oned": {"means": [[1, 2, 3], [1, 2, 4, 5]], "sizes": [5_000, 20_000, 50_000], "replicates": 1, "std": 0.05,
             "width": 128, "num_blocks": 3, "tied": False, "steps": 20_000, "batch_size": 10_000,
             "lr": 1e-3, "lr_final": 1e-3, "ema_decay": None, "samples": 100_000, "select_samples": 0},
    "grid": {"n": 100_000, "std": 0.05, "width": 128, "num_blocks": 3, "tied": False, "steps": 100_000,
             "batch_size": 10_000, "lr": 1e-3, "lr_final": 1e-3, "ema_decay": None, "samples": 100_000,
             "select_samples": 0},
    "shapes": {"enabled": True, "n": 5_000, "size": 64, "channels": [64, 128, 128], "steps": 100_000,
               "batch_size": 128, "lr": 1e-4, "lr_final": 1e-4, "ema_decay": None, "samples": 10_000,
               "sample_steps": 300, "sample_batch": 500, "write_png": 5_000,
               "windows": ["K3", "K5", "K10", "t10", "t20", "t40"]},
    "recursive_grid": {"enabled": True, "n": 100_000, "std": 0.05, "width": 128, "num_blocks": 3, "tied": False,
                       "steps": 50_000, "batch_size": 10_000, "lr": 1e-3, "lr_final": 1e-3, "ema_decay": None,
                       "generations": 5, "filter_fraction": 0.0244, "window": "K10", "warm_start": False,
                       "gen1_from_grid": False},
    "recursive_digits": {"enabled": True, "source": "mnist", "mnist_dir": None, "classifier_steps": 2_000,
                         "width": 512, "num_blocks": 3,
                         "tied": False, "steps": 50_000, "warm_start": False,
                         "batch_size": 1_024, "lr": 1e-3, "lr_final": 1e-4, "ema_decay": None, "generations": 5,
                         "filter_fraction": 0.0244, "window": "K10"},
}

_CPU: dict[str, Any] = copy.deepcopy(_PAPER)
_CPU["schedule"] = {**_SCHEDULE, "train_t_max": 300}
_CPU["windows"] = ["K2", "K3", "K4", "K5", "K6", "K7", "K10", "K20"]
# The grid's primary window is chosen on a separate draw of select_samples, then reported on fresh samples.
_CPU["primary_window"] = {"oned": "K10", "grid": "select", "shapes": "t20"}
# Mode distance: besides the paper's {1, 2, 3} and {1, 2, 4, 5}, three modes centred on 2 at spacings 2 and 3.
_CPU["oned"].update(means=[[1, 2, 3], [0, 2, 4], [-1, 2, 5], [1, 2, 4, 5]], sizes=[200, 1_000, 20_000],
                    replicates=8, steps=2_000, batch_size=1_024, lr=1e-3, lr_final=1e-3, samples=20_000)
_CPU["grid"].update(steps=30_000, batch_size=1_024, lr=1e-3, lr_final=1e-5, ema_decay=0.999, samples=50_000,
                    select_samples=20_000)
_CPU["shapes"].update(n=2_000, size=32, channels=[8, 16, 16], steps=600, batch_size=32, lr=2e-3, lr_final=1e-4,
                      samples=256, sample_steps=50, sample_batch=256, write_png=64)
_CPU["recursive_grid"].update(n=5_000, steps=1_000, batch_size=512, lr=1e-3, lr_final=1e-5, filter_fraction=0.1,
                              window="K5", warm_start=True, gen1_from_grid=True)
_CPU["recursive_digits"].update(source="digits", classifier_steps=400, width=256, steps=1_500, batch_size=256,
                                lr=2e-3, lr_final=1e-5, filter_fraction=0.1, window="K10")

_SMOKE: dict[str, Any] = copy.deepcopy(_CPU)
_SMOKE["windows"] = ["K2", "K3"]
_SMOKE["primary_window"] = {"oned": "K3", "grid": "select", "shapes": "t10"}
_SMOKE["schedule"] = {**_SCHEDULE, "start": 30, "train_t_max": 30}
_SMOKE["oned"].update(means=[[1, 2, 3], [0, 2, 4]], sizes=[100, 400], replicates=2, width=16, steps=20,
                      batch_size=64, samples=200)
_SMOKE["grid"].update(n=400, width=16, steps=20, batch_size=64, samples=200, select_samples=200)
_SMOKE["shapes"].update(n=16, size=16, channels=[8, 8, 8], steps=2, batch_size=8, samples=8, sample_steps=5,
                        sample_batch=8, write_png=4, windows=["K2", "t10"])
_SMOKE["recursive_grid"].update(n=200, width=16, steps=10, batch_size=64, generations=2, window="K3")
_SMOKE["recursive_digits"].update(classifier_steps=20, width=16, steps=10, batch_size=64, generations=2, window="K3")

EXPERIMENT = Experiment(
    name="hallucination",
    title="Mode interpolation and hallucination in diffusion models (Aithal et al., NeurIPS 2024)",
    presets={"smoke": _SMOKE, "cpu": _CPU, "paper": _PAPER},
    default_seeds={"smoke": 1, "cpu": 1, "paper": 3},
    units=unit_keys,
    run_unit=run_unit,
    report=build_report,
)

"""Private argument checks for hallucfilter (the package stands alone, so it keeps its own)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an int after checking that it is one and lies in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        left = "(-inf" if low is None else f"[{low}"
        right = "inf)" if high is None else f"{high}]"
        raise ValueError(f"{name} must be in {left}, {right}, got {value}")
    return value


def check_real(name: str, value: Any, *, low: float = -math.inf, high: float = math.inf,
               low_open: bool = False, high_open: bool = False) -> float:
    """Return ``value`` as a float after checking that it is a finite-or-bounded real in the given interval."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if math.isnan(value) or below or above:
        left = "(" if low_open or math.isinf(low) else "["
        right = ")" if high_open or math.isinf(high) else "]"
        interval = f"{left}{low}, {high}{right}"
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` after checking that it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def as_numpy_1d(name: str, scores: Any) -> np.ndarray:
    """Return ``scores`` (tensor, array or sequence) as a float64 1-D numpy array without NaN."""
    if isinstance(scores, torch.Tensor):
        array = scores.detach().to("cpu", torch.float64).numpy()
    else:
        try:
            array = np.asarray(scores, dtype=np.float64)
        except (TypeError, ValueError) as err:
            kind = type(scores).__name__
            raise TypeError(f"{name} must be a tensor, array or sequence of numbers, got {kind}") from err
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one score per sample), got shape {tuple(array.shape)}")
    if array.size == 0:
        raise ValueError(f"{name} must hold at least one score, got none")
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN; scores must be real or +inf")
    return array

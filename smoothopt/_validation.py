"""Argument checks shared by every module of :mod:`smoothopt`.

Each helper raises a ``ValueError`` or ``TypeError`` whose message names the
argument, the value received and what is allowed, in interval notation
(``rho must be in [0, inf), got -1.0``).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Collection
from types import ModuleType
from typing import Any

__all__ = [
    "check_choice",
    "check_int",
    "check_real",
    "optional_import",
]


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    left = "(" if low_open or low == -math.inf else "["
    right = ")" if high_open or high == math.inf else "]"
    fmt = lambda v: "inf" if v == math.inf else "-inf" if v == -math.inf else repr(v)  # noqa: E731
    return f"{left}{fmt(low)}, {fmt(high)}{right}"


def check_real(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float after checking that it is a finite-or-bounded real in the interval.

    Args:
        name: Argument name used in the error message.
        value: The value to check. ``bool`` is rejected.
        low: Lower bound of the allowed interval.
        high: Upper bound of the allowed interval.
        low_open: Whether ``low`` itself is excluded.
        high_open: Whether ``high`` itself is excluded.

    Returns:
        The value converted to ``float``.

    Raises:
        TypeError: If ``value`` is not a real number.
        ValueError: If ``value`` is NaN or outside the interval.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_scalar_tensor(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    interval = _interval(low, high, low_open, high_open)
    if math.isnan(v):
        raise ValueError(f"{name} must be in {interval}, got nan")
    too_low = v < low or (low_open and v == low)
    too_high = v > high or (high_open and v == high)
    if too_low or too_high:
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return v


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` after checking that it is an integer in ``[low, high]``.

    Args:
        name: Argument name used in the error message.
        value: The value to check. ``bool`` and floats are rejected.
        low: Smallest allowed value, or ``None`` for no bound.
        high: Largest allowed value, or ``None`` for no bound.

    Returns:
        The value as ``int``.

    Raises:
        TypeError: If ``value`` is not an integer.
        ValueError: If ``value`` is outside ``[low, high]``.
    """
    if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    v = int(value)
    lo = "-inf" if low is None else str(low)
    hi = "inf" if high is None else str(high)
    if (low is not None and v < low) or (high is not None and v > high):
        left = "(" if low is None else "["
        right = ")" if high is None else "]"
        raise ValueError(f"{name} must be in {left}{lo}, {hi}{right}, got {value!r}")
    return v


def check_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    """Return ``value`` after checking that it is one of ``choices``.

    Raises:
        ValueError: If ``value`` is not among ``choices``.
    """
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}")
    return value


def optional_import(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or fail with the extra that provides it.

    Args:
        module: Dotted module name, e.g. ``"timm"``.
        extra: Name of the ``pip install smoothopt[extra]`` that installs it.

    Raises:
        ImportError: If the module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{module!r} is required for this feature but is not installed; "
            f"install it with `pip install smoothopt[{extra}]`"
        ) from err


def _is_scalar_tensor(value: Any) -> bool:
    return hasattr(value, "numel") and hasattr(value, "item") and value.numel() == 1

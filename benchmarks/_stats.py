"""Paired statistics across seeds: the way every comparison in the reports is made."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def paired_comparison(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_boot: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare method ``a`` against ``b`` on the same seeds.

    Args:
        a: One score per seed for the method of interest.
        b: The baseline's scores on the same seeds, in the same order.
        n_boot: Bootstrap resamples of the seeds for the interval.
        confidence: Coverage of the percentile bootstrap interval of the mean difference.
        seed: Seed of the bootstrap.

    Returns:
        ``mean_a``, ``std_a``, ``mean_b``, ``std_b``, ``mean_diff`` (a - b), ``std_diff``,
        ``ci_low``/``ci_high`` (bootstrap interval of the mean difference), ``p_ttest``
        (two-sided paired t test), ``p_wilcoxon`` (two-sided signed-rank; NaN when all
        differences are zero), ``wins`` (seeds where a > b) and ``n``.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"a and b must be 1-D and of equal length, got {x.shape} and {y.shape}")
    if x.size < 2:
        raise ValueError(f"a paired comparison needs at least 2 seeds, got {x.size}")
    d = x - y
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    out = {
        "n": int(d.size),
        "mean_a": float(x.mean()),
        "std_a": float(x.std(ddof=1)),
        "mean_b": float(y.mean()),
        "std_b": float(y.std(ddof=1)),
        "mean_diff": float(d.mean()),
        "std_diff": float(d.std(ddof=1)),
        "ci_low": float(np.quantile(boots, alpha)),
        "ci_high": float(np.quantile(boots, 1 - alpha)),
        "wins": int((d > 0).sum()),
        "p_ttest": _paired_t_p(d),
        "p_wilcoxon": _wilcoxon_p(d),
    }
    return out


def _paired_t_p(d: np.ndarray) -> float:
    sd = d.std(ddof=1)
    # NOTE: differences equal up to rounding leave a tiny sd and an absurd t; treat them as constant.
    if sd <= 1e-9 * max(1.0, float(np.abs(d).max())):
        return 1.0 if abs(d.mean()) <= 1e-9 * max(1.0, float(np.abs(d).max())) else 0.0
    t = d.mean() / (sd / math.sqrt(d.size))
    from scipy import stats

    return float(2 * stats.t.sf(abs(t), df=d.size - 1))


def _wilcoxon_p(d: np.ndarray) -> float:
    if np.all(d == 0):
        return float("nan")
    from scipy import stats

    return float(stats.wilcoxon(d, zero_method="wilcox").pvalue)


def format_comparison(name: str, c: dict[str, Any], unit: str = "") -> str:
    """One markdown table row: name | a | b | diff [CI] | p (t) | p (W) | wins."""
    return (
        f"| {name} | {c['mean_a']:.2f} ± {c['std_a']:.2f} | {c['mean_b']:.2f} ± {c['std_b']:.2f} | "
        f"{c['mean_diff']:+.2f}{unit} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] | {c['p_ttest']:.3g} | "
        f"{c['p_wilcoxon']:.3g} | {c['wins']}/{c['n']} |"
    )


COMPARISON_HEADER = (
    "| comparison | A (mean ± sd) | B (mean ± sd) | A − B [95% bootstrap CI] "
    "| p (paired t) | p (Wilcoxon) | A wins |\n"
    "| --- | --- | --- | --- | --- | --- | --- |"
)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean of independent replicates with its Student-t confidence interval.

    Returns:
        ``mean``, ``sd`` (ddof 1), ``low``, ``high`` and ``n``; with one value the interval is that value.

    Raises:
        ValueError: If ``values`` is empty or ``confidence`` is not in ``(0, 1)``.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size < 1:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {x.shape}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(x.mean())
    if x.size == 1:
        return {"mean": mean, "sd": 0.0, "low": mean, "high": mean, "n": 1}
    from scipy import stats

    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=x.size - 1)) * sd / math.sqrt(x.size)
    return {"mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "n": int(x.size)}


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Difference of two means from independent replicates (``a - b``), Welch's interval and two-sided p.

    Raises:
        ValueError: If either sample has fewer than 2 values or ``confidence`` is not in ``(0, 1)``.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1 or x.size < 2 or y.size < 2:
        raise ValueError(f"a and b need at least 2 values each, got {x.size} and {y.size}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    from scipy import stats

    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    diff = float(x.mean() - y.mean())
    se = math.sqrt(va + vb)
    if se == 0.0:
        return {"diff": diff, "low": diff, "high": diff, "p": 1.0 if diff == 0.0 else 0.0}
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=df)) * se
    p = float(2 * stats.t.sf(abs(diff) / se, df=df))
    return {"diff": diff, "low": diff - half, "high": diff + half, "p": p}

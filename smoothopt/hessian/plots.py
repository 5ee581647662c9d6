"""Figures of per-class Hessian spectra (needs matplotlib: ``pip install smoothopt[plot]``).

Each function returns the matplotlib ``Figure`` and never shows or saves it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from smoothopt._validation import check_int, check_real, optional_import
from smoothopt.hessian.per_class import PerClassSpectra

__all__ = ["plot_class_densities", "plot_eigenvalues_by_class", "plot_group_densities"]


def _pyplot() -> Any:
    optional_import("matplotlib", "plot")
    return optional_import("matplotlib.pyplot", "plot")


def _shared_grid(result: PerClassSpectra, num_points: int) -> torch.Tensor:
    ranges = [s.density.spectral_range for s in result.classes if s.count]
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    pad = 0.05 * (hi - lo if hi > lo else 1.0)
    return torch.linspace(lo - pad, hi + pad, num_points, dtype=torch.float64)


def plot_class_densities(
    result: PerClassSpectra,
    *,
    num_points: int = 400,
    width: float = 0.01,
    ncols: int = 5,
    log: bool = True,
    class_names: Sequence[str] | None = None,
) -> Any:
    """Small multiples: one smoothed spectral density per class, all on one shared eigenvalue axis.

    Args:
        result: Output of :func:`~smoothopt.hessian.per_class_spectra`.
        num_points: Points of the shared grid.
        width: Gaussian width relative to each class's spectral range.
        ncols: Panels per row.
        log: Logarithmic density axis (the mass at zero dwarfs the tails otherwise).
        class_names: Panel titles (default ``class c (n=...)``).

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    plt = _pyplot()
    check_int("num_points", num_points, 2)
    check_real("width", width, 0.0, low_open=True)
    ncols = check_int("ncols", ncols, 1)
    grid = _shared_grid(result, num_points)
    nrows = math.ceil(len(result) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.0 * nrows), sharex=True, sharey=True,
                             squeeze=False)
    for c, ax in enumerate(axes.flat):
        if c >= len(result):
            ax.set_visible(False)
            continue
        s = result[c]
        if s.count:
            _, dens = s.density.smooth(width=width, grid=grid)
            ax.plot(grid.numpy(), dens.clamp_min(1e-12).numpy(), lw=1)
        ax.axvline(0.0, color="0.6", lw=0.5)
        ax.set_title(class_names[c] if class_names else f"class {c} (n={s.count})", fontsize=8)
        if log:
            ax.set_yscale("log")
    fig.supxlabel("eigenvalue")
    fig.supylabel("density")
    fig.tight_layout()
    return fig


def plot_group_densities(
    result: PerClassSpectra,
    groups: dict[str, Sequence[int]],
    *,
    num_points: int = 400,
    width: float = 0.01,
    log: bool = True,
) -> Any:
    """Overlay the mean smoothed density of class groups (e.g. head / medium / tail) on one axis.

    Args:
        result: Output of :func:`~smoothopt.hessian.per_class_spectra`.
        groups: Group name -> class indices, e.g. ``{"head": [0, 1, 2], "tail": [7, 8, 9]}``.
        num_points: Grid size.
        width: Gaussian width relative to the spectral range.
        log: Logarithmic density axis.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    plt = _pyplot()
    grid = _shared_grid(result, num_points)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, members in groups.items():
        curves = [result[c].density.smooth(width=width, grid=grid)[1] for c in members if result[c].count]
        if curves:
            ax.plot(grid.numpy(), torch.stack(curves).mean(0).clamp_min(1e-12).numpy(), label=name)
    ax.axvline(0.0, color="0.6", lw=0.5)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_eigenvalues_by_class(result: PerClassSpectra, *, ratio: bool = True) -> Any:
    """Top and bottom eigenvalue (and optionally their ratio) against the class index.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    plt = _pyplot()
    classes = list(range(len(result)))
    fig, axes = plt.subplots(1, 2 if ratio else 1, figsize=(9 if ratio else 5, 3.2), squeeze=False)
    ax = axes[0, 0]
    ax.plot(classes, [s.lambda_max for s in result.classes], "o-", label=r"$\lambda_{max}$")
    ax.plot(classes, [s.lambda_min for s in result.classes], "s-", label=r"$\lambda_{min}$")
    ax.axhline(0.0, color="0.6", lw=0.5)
    ax.set_xlabel("class")
    ax.set_ylabel("eigenvalue")
    ax.legend()
    if ratio:
        axes[0, 1].plot(classes, [s.ratio for s in result.classes], "d-")
        axes[0, 1].axhline(0.0, color="0.6", lw=0.5)
        axes[0, 1].set_xlabel("class")
        axes[0, 1].set_ylabel(r"$\lambda_{min} / \lambda_{max}$")
    fig.tight_layout()
    return fig

"""Class-wise Hessian spectra of the trained models (Rangwani et al. 2022, Sec. 4) and their figures.

For each class ``c`` the Hessian of the mean training loss over class ``c``'s images only, in eval
mode and on un-augmented images, is summarised by :func:`smoothopt.hessian.per_class_spectra`
(all classes in one lock-step Lanczos run): top and bottom eigenvalue, their ratio, the trace,
the negative mass of the density, and the density itself. The loss is the method's own
(LDAM, VS or cross-entropy) without class weights: within one class the weights cancel.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
import torch

from benchmarks._harness import RunContext
from benchmarks.longtail.data import LongTailData
from benchmarks.longtail.models import build_model
from benchmarks.longtail.train import Method, build_loss
from smoothopt.hessian import per_class_spectra

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def class_spectra(
    config: dict[str, Any], method: Method, data: LongTailData, state: dict[str, torch.Tensor], device: torch.device
) -> dict[str, Any]:
    """Per-class spectra of one saved model.

    Returns:
        ``classes``: one row per class (``count``, ``lambda_max``, ``lambda_min``, ``ratio``,
        ``trace``, ``negative_mass``, ``converged``), ``density``: per class the smoothed density
        on a grid (``grid``, ``values``), and the number of Hessian-vector products used.
    """
    sc = config["spectra"]
    if data.train_x is None or data.train_y is None:
        raise RuntimeError(f"class-wise spectra need an in-memory training set; {data.name} is read from list files")
    dtype = _DTYPES[sc.get("dtype", "float32")]
    model = build_model(config["model"], data.num_classes, method.head)
    model.load_state_dict(state)
    model = model.to(device=device, dtype=dtype)
    loss_fn = build_loss(method, data.cls_num_list, config.get("losses", {})).to(device)
    x = data.train_x.to(device=device, dtype=dtype)
    y = data.train_y.to(device)
    c0 = time.process_time()
    res = per_class_spectra(
        model, lambda out, t: loss_fn(out, t), (x, y), data.num_classes,
        num_steps=sc["lanczos_steps"], density_probes=sc["density_probes"], trace_probes=sc.get("trace_probes", 20),
        batch_size=sc.get("batch_size", 256), seed=sc.get("seed", 0),
    )
    density, raw = [], []
    for s in res.classes:
        grid, values = s.density.smooth(num_points=sc["bins"], width=sc["sigma"])
        density.append({"grid": grid.tolist(), "values": values.tolist()})
        raw.append({
            "top": s.top.tolist(), "bottom": s.bottom.tolist(), "top_residuals": s.top_residuals.tolist(),
            "bottom_residuals": s.bottom_residuals.tolist(), "converged": s.converged, "trace": s.trace,
            "trace_stderr": s.trace_stderr, "count": s.count, "nodes": s.density.nodes.tolist(),
            "weights": s.density.weights.tolist(), "dim": s.density.dim,
        })
    return {"classes": res.table(), "density": density, "spectra": raw, "matvecs": res.num_matvecs,
            "passes": res.num_passes, "cpu_s": round(time.process_time() - c0, 3)}


def _tensor(row: dict[str, Any], key: str) -> torch.Tensor:
    return torch.tensor(row[key], dtype=torch.float64)


def rebuild(result: dict[str, Any]) -> Any:
    """The :class:`smoothopt.hessian.PerClassSpectra` of a spectrum unit's JSON result (for the plots)."""
    from smoothopt.hessian import PerClassSpectra, SpectralDensity, Spectrum

    classes = []
    for r in result["spectra"]:
        t = functools.partial(_tensor, r)
        density = SpectralDensity(nodes=t("nodes"), weights=t("weights"), dim=int(r["dim"]))
        classes.append(Spectrum(top=t("top"), bottom=t("bottom"), top_residuals=t("top_residuals"),
                                bottom_residuals=t("bottom_residuals"), converged=bool(r["converged"]),
                                trace=float(r["trace"]), trace_stderr=float(r["trace_stderr"]), density=density,
                                count=int(r["count"])))
    counts = torch.tensor([float(r["count"]) for r in result["spectra"]], dtype=torch.float64)
    return PerClassSpectra(classes=classes, counts=counts, num_passes=int(result.get("passes", 0)),
                           num_matvecs=int(result["matvecs"]))


# --------------------------------------------------------------------------- report


def spectra_section(
    config: dict[str, Any], spectra: dict[tuple[str, str], dict[str, Any]], counts: list[int], ctx: RunContext
) -> list[str]:
    """Markdown tables and figures of the spectra units."""
    lines = ["## Class-wise Hessian spectra (seed 0, training images, eval mode)", ""]
    lines += [
        "Per class: lambda_min / lambda_max (ratio; negative = saddle) and the negative mass of the density.",
        "",
    ]
    keys = [(m, "final") for m in config["methods"] if (m, "final") in spectra]
    keys += [(m, "predrw") for m in config["methods"] if (m, "predrw") in spectra]
    header = "| model | " + " | ".join(f"class {c} (n={n})" for c, n in enumerate(counts)) + " |"
    lines += [header, "| --- |" + " --- |" * len(counts)]
    for m, tag in keys:
        rows = spectra[(m, tag)]["classes"]
        cells = [f"{r['lambda_min']:.3g} / {r['lambda_max']:.3g} ({r['ratio']:.2f}; {r['negative_mass']:.2f})"
                 for r in rows]
        lines.append(f"| {m} ({tag}) | " + " | ".join(cells) + " |")
    lines.append("")
    figs = _figures(config, spectra, keys, counts, ctx)
    for name, caption in figs:
        lines += [f"![{caption}](figures/{name})", "", f"*{caption}*", ""]
    return lines


def _figures(
    config: dict[str, Any], spectra: dict[tuple[str, str], dict[str, Any]], keys: list[tuple[str, str]],
    counts: list[int], ctx: RunContext,
) -> list[tuple[str, str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = []
    pairs = [(a, b) for a, b in config["comparisons"] if (a, "final") in spectra and (b, "final") in spectra]
    classes = list(range(len(counts)))

    # 1. lambda_min and the ratio per class, with and without SAM
    if pairs:
        fig, axes = plt.subplots(2, len(pairs), figsize=(4.2 * len(pairs), 6), squeeze=False)
        for j, (a, b) in enumerate(pairs):
            for method, style in ((b, "o-"), (a, "s-")):
                rows = spectra[(method, "final")]["classes"]
                axes[0, j].plot(classes, [r["lambda_min"] for r in rows], style, label=method)
                axes[1, j].plot(classes, [r["ratio"] for r in rows], style, label=method)
            axes[0, j].set_title(f"{b} vs {a}", fontsize=9)
            axes[0, j].axhline(0, color="grey", lw=0.5)
            axes[1, j].axhline(0, color="grey", lw=0.5)
            axes[1, j].set_xlabel("class (training count falls left to right)")
            axes[0, j].legend(fontsize=7)
        axes[0, 0].set_ylabel("lambda_min of H_c")
        axes[1, 0].set_ylabel("lambda_min / lambda_max")
        fig.tight_layout()
        name = "longtail_lambda_min.png"
        fig.savefig(ctx.path("figures", name), dpi=80)
        plt.close(fig)
        caption = "Per-class lambda_min and lambda_min / lambda_max of the final models, with and without SAM"
        out.append((name, caption))

    # 2. densities of a head, a middle and the rarest class
    show = sorted({0, len(counts) // 2, len(counts) - 1})
    if keys:
        fig, axes = plt.subplots(len(show), 1, figsize=(7, 2.4 * len(show)), squeeze=False)
        for i, c in enumerate(show):
            ax = axes[i, 0]
            for m, tag in keys:
                d = spectra[(m, tag)]["density"][c]
                grid, vals = np.asarray(d["grid"]), np.asarray(d["values"])
                ax.semilogy(grid, np.maximum(vals, 1e-8), lw=1, label=f"{m} ({tag})")
            ax.axvline(0, color="grey", lw=0.5)
            ax.set_ylim(1e-6, None)
            ax.set_title(f"class {c} ({counts[c]} training images)", fontsize=9)
        axes[-1, 0].set_xlabel("eigenvalue")
        axes[0, 0].legend(fontsize=6, ncol=2)
        fig.tight_layout()
        name = "longtail_density.png"
        fig.savefig(ctx.path("figures", name), dpi=80)
        plt.close(fig)
        out.append((name, "Spectral density (stochastic Lanczos quadrature, Gaussian smoothing) of H_c"))
    return out

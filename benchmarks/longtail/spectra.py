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
    seed = config["spectra"]["seeds"][0]
    num_head = int(round(config["groups"]["head_fraction"] * len(counts)))
    keys = [(m, "final") for m in config["methods"] if (m, "final") in spectra]
    keys += [(m, "predrw") for m in config["methods"] if (m, "predrw") in spectra]
    lines = [
        f"## Class-wise Hessian spectra (seed {seed}, training images, eval mode)",
        "",
        "Hessian of each class's mean training loss (the method's own loss, unweighted), Lanczos with "
        f"{config['spectra']['lanczos_steps']} steps for the density. `final` is the last epoch's model, "
        "`predrw` the model just before re-weighting switches on. Over the head classes "
        f"(0-{num_head - 1}) and the tail classes ({num_head}-{len(counts) - 1}): mean lambda_min, lambda_max "
        "and negative mass, median ratio lambda_min / lambda_max:",
        "",
        "| model | head lambda_min | head ratio | tail lambda_min | tail ratio | tail lambda_max "
        "| tail negative mass | all converged |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m, tag in keys:
        rows = spectra[(m, tag)]["classes"]
        head, tail = rows[:num_head], rows[num_head:]
        mean = lambda rs, k: float(np.mean([r[k] for r in rs]))  # noqa: E731
        median = lambda rs, k: float(np.median([r[k] for r in rs]))  # noqa: E731
        lines.append(
            f"| {m} ({tag}) | {mean(head, 'lambda_min'):.3g} | {median(head, 'ratio'):.3f} | "
            f"{mean(tail, 'lambda_min'):.3g} | {median(tail, 'ratio'):.3f} | {mean(tail, 'lambda_max'):.3g} | "
            f"{mean(tail, 'negative_mass'):.4f} | {all(r['converged'] for r in rows)} |"
        )
    lines += ["", "Per class: lambda_min / lambda_max (ratio).", ""]
    lines += ["| model | " + " | ".join(f"class {c} (n={n})" for c, n in enumerate(counts)) + " |",
              "| --- |" + " --- |" * len(counts)]
    for m, tag in keys:
        cells = [f"{r['lambda_min']:.3g} / {r['lambda_max']:.3g} ({r['ratio']:.3f})"
                 for r in spectra[(m, tag)]["classes"]]
        lines.append(f"| {m} ({tag}) | " + " | ".join(cells) + " |")
    lines.append("")
    for name, caption in _figures(config, spectra, keys, ctx):
        lines += [f"![{caption}](figures/{name})", "", f"*{caption}*", ""]
    return lines


def _figures(
    config: dict[str, Any], spectra: dict[tuple[str, str], dict[str, Any]], keys: list[tuple[str, str]],
    ctx: RunContext,
) -> list[tuple[str, str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    from smoothopt.hessian.plots import plot_class_densities

    out = []

    def save(fig: Any, name: str, caption: str) -> None:
        fig.savefig(ctx.path("figures", name), dpi=60)
        plt.close(fig)
        out.append((name, caption))

    def overlay(panels: list[tuple[str, list[tuple[str, str]]]], name: str, caption: str) -> None:
        fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 5.5), squeeze=False)
        for j, (title, models) in enumerate(panels):
            for (m, tag), style in zip(models, ("o-", "s-", "^-", "d-")):
                rows = spectra[(m, tag)]["classes"]
                classes = [r["class"] for r in rows]
                axes[0, j].plot(classes, [r["lambda_min"] for r in rows], style, label=f"{m} ({tag})")
                axes[1, j].plot(classes, [r["ratio"] for r in rows], style, label=f"{m} ({tag})")
            axes[0, j].set_title(title, fontsize=9)
            axes[0, j].legend(fontsize=7)
            for ax in axes[:, j]:
                ax.axhline(0, color="grey", lw=0.5)
            axes[1, j].set_xlabel("class (fewer training images to the right)")
        axes[0, 0].set_ylabel("lambda_min of H_c")
        axes[1, 0].set_ylabel("lambda_min / lambda_max")
        fig.tight_layout()
        save(fig, name, caption)

    # 1. with and without SAM, final models
    pairs = [(a, b) for a, b in config["comparisons"] if (a, "final") in spectra and (b, "final") in spectra
             and a.endswith("_sam") and a[: -len("_sam")] == b]
    if pairs:
        overlay([(f"{b} vs {a}", [(b, "final"), (a, "final")]) for a, b in pairs], "longtail_sam_lambda_min.png",
                "Per-class lambda_min and lambda_min / lambda_max of the final models, without and with SAM")

    # 2. across the switch to re-weighting
    switch = [m for m in config["methods"] if (m, "predrw") in spectra and (m, "final") in spectra]
    if switch:
        overlay([(m, [(m, "predrw"), (m, "final")]) for m in switch], "longtail_drw_switch.png",
                "The same across the switch to re-weighting: just before DRW starts and at the last epoch")

    # 3. the densities, one small-multiples figure per model (smoothopt.hessian.plots)
    for m, tag in keys:
        fig = plot_class_densities(rebuild(spectra[(m, tag)]), width=config["spectra"]["sigma"])
        fig.suptitle(f"{m} ({tag})", fontsize=9)
        fig.tight_layout()
        save(fig, f"longtail_density_{m}_{tag}.png",
             f"Spectral density of each class's Hessian, {m} ({tag}); stochastic Lanczos quadrature")
    return out

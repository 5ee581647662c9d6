"""The reproduction's report: tables beside the paper's numbers, and the figures (matplotlib)."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch

from benchmarks._harness import RunContext
from benchmarks._stats import mean_interval, welch_interval

PAPER_CLAIM = "paper: > 95% of hallucinations removed at 96% of in-support samples retained"


def _fmt(v: float | None, pct: bool = True, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.{digits}f}%" if pct else f"{v:.3f}"


def _mean_sd(values: Iterable[float | None], pct: bool = True, digits: int = 1) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return _fmt(vals[0], pct, digits)
    m, sd = statistics.mean(vals), statistics.stdev(vals)
    return f"{_fmt(m, pct, digits)} ± {_fmt(sd, pct, digits)}"


def _group(results: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Results by key without the seed and replicate suffixes."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for key, r in results.items():
        out[re.sub(r"_r\d+$", "", key.rsplit("_s", 1)[0])].append(r)
    return dict(out)


def _ci(values: Iterable[float], digits: int = 3) -> str:
    """``mean [low, high]`` in percent, the 95% Student-t interval over replicates."""
    m = mean_interval(list(values))
    if m["n"] == 1:
        return f"{100 * m['mean']:.{digits}f}%"
    return f"{100 * m['mean']:.{digits}f}% [{100 * m['low']:.{digits}f}, {100 * m['high']:.{digits}f}]"


def _diff(a: list[float], b: list[float], digits: int = 3) -> str:
    if len(a) < 2 or len(b) < 2:
        return "n/a (needs 2 replicates)"
    w = welch_interval(a, b)
    return (f"{100 * w['diff']:+.{digits}f} points [{100 * w['low']:+.{digits}f}, {100 * w['high']:+.{digits}f}], "
            f"p = {w['p']:.2g}")


def _window_of(rows: list[dict[str, Any]], default: str) -> str:
    return "/".join(sorted({r.get("primary_window", default) for r in rows})) or default


def _det(rows: list[dict[str, Any]], sigma: str, window: str, field: str) -> list[float | None]:
    # Each row's own primary window where it has one (chosen per model on a separate draw).
    return [r["out_of_support"][sigma]["detection"][r.get("primary_window", window)][field] for r in rows]


def _detection_row(label: str, rows: list[dict[str, Any]], sigma: str, window: str) -> str:
    counts = sum(r["out_of_support"][sigma]["count"] for r in rows)
    drawn = sum(r["n_samples"] for r in rows)
    return (f"| {label} | {_window_of(rows, window)} | "
            f"{_mean_sd((r['out_of_support'][sigma]['fraction'] for r in rows), digits=2)} ({counts} of {drawn}) | "
            f"{_mean_sd(_det(rows, sigma, window, 'auroc'), pct=False)} | "
            f"{_mean_sd(_det(rows, sigma, window, 'removal_at_retention'))} | "
            f"{_mean_sd(_det(rows, sigma, window, 'retention_at_removal'))} |")


def _load(ctx: RunContext, r: dict[str, Any]) -> dict[str, Any]:
    return torch.load(ctx.out_dir / r["samples_file"], map_location="cpu", weights_only=False)


def _threshold(scores: torch.Tensor, bad: torch.Tensor, retention: float) -> float:
    return float(torch.quantile(scores[~bad].double(), retention))


def build_report(config: dict[str, Any], results: dict[str, dict[str, Any]], ctx: RunContext) -> str:
    """Markdown report with the tables and figures of the reproduction."""
    groups = _group(results)
    sigma = f"{config['k_sigma']:g}sigma"
    alt = f"{config['k_sigma_alt']:g}sigma"
    pw = config["primary_window"]
    ret, rem = config["retention"], config["removal"]
    lines = ["# Mode interpolation and hallucination (Aithal et al., NeurIPS 2024)", ""]
    lines += [f"Out of support: farther than {config['k_sigma']:g} sigma from every mode "
              f"(also {config['k_sigma_alt']:g} sigma below). "
              "Score: population variance of `x0_hat` over the last K reverse steps "
              f"(`hallucfilter.TrajectoryVariance`). Removal at {ret:.0%} retention, retention at {rem:.0%} removal; "
              f"{PAPER_CLAIM}.", ""]

    oned = {k: v for k, v in groups.items() if k.startswith("oned_")}
    grid = {k: v for k, v in groups.items() if k.startswith("grid")}
    if oned or grid:
        lines += ["## Detection (primary window)", "",
                  "| data | window | out of support | AUROC | removed at 96% retained | retained at 95% removed |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, rows in {**oned, **grid}.items():
            window = pw["oned" if name.startswith("oned") else "grid"]
            lines.append(_detection_row(f"{name} ({sigma})", rows, sigma, window))
            lines.append(_detection_row(f"{name} ({alt})", rows, alt, window))
        lines.append("")
    if oned:
        lines += _interpolation_section(config, oned, sigma)
    sweep_sets = {**oned, **grid}
    if sweep_sets:
        lines += ["## Window sweep (AUROC / removed at 96% retained)", "",
                  "| data | " + " | ".join(config["windows"]) + " |",
                  "| --- |" + " --- |" * len(config["windows"])]
        def sweep_row(name: str, dets: list[dict[str, Any]]) -> str:
            cells = []
            for k in config["windows"]:
                au = _mean_sd((d[k]["auroc"] for d in dets), pct=False)
                rm = _mean_sd(d[k]["removal_at_retention"] for d in dets)
                cells.append(f"{au} / {rm}")
            return f"| {name} | " + " | ".join(cells) + " |"

        for name, rows in sweep_sets.items():
            lines.append(sweep_row(name, [r["out_of_support"][sigma]["detection"] for r in rows]))
            if all("selection" in r for r in rows):
                n_sel = sum(r["selection"]["n_samples"] for r in rows)
                lines.append(sweep_row(f"{name}, selection draw ({n_sel} samples)",
                                       [r["selection"]["detection"] for r in rows]))
        lines.append("")
        if any("selection" in r for rows in grid.values() for r in rows):
            lines += ["The grid's primary window was chosen per model as the window with the highest removal at "
                      "the retention target on its selection draw (separate samples of the same model); the "
                      "detection table reports it on the main draw.", ""]
    if "shapes" in groups:
        rows = groups["shapes"]
        window = pw["shapes"]
        d = [r["hallucinated"]["detection"][window] for r in rows]
        lines += ["## SIMPLE SHAPES", "",
                  f"{config['shapes']['size']}x{config['shapes']['size']} images, "
                  f"{config['shapes']['steps']} training steps, {config['shapes']['samples']} samples "
                  f"({config['shapes']['sample_steps']} reverse steps from t = {config['schedule']['start']}).", "",
                  "| hallucinated (2+ shapes in a column) | empty | malformed | AUROC | removed at 96% retained | "
                  "retained at 95% removed |", "| --- | --- | --- | --- | --- | --- |",
                  f"| {_mean_sd((r['hallucinated']['fraction'] for r in rows), digits=2)} | "
                  f"{_mean_sd(r['empty_fraction'] for r in rows)} | "
                  f"{_mean_sd(r['malformed_fraction'] for r in rows)} | "
                  f"{_mean_sd((x['auroc'] for x in d), pct=False)} | "
                  f"{_mean_sd(x['removal_at_retention'] for x in d)} | "
                  f"{_mean_sd(x['retention_at_removal'] for x in d)} |", "",
                  "Window sweep (AUROC / removed at 96% retained): " + "; ".join(
                      f"{w}: {_mean_sd((r['hallucinated']['detection'][w]['auroc'] for r in rows), pct=False)} / "
                      f"{_mean_sd(r['hallucinated']['detection'][w]['removal_at_retention'] for r in rows)}"
                      for w in config["shapes"]["windows"]) + ".", ""]
    for which in ("grid", "digits"):
        if not all(f"recursive_{which}_{arm}" in groups for arm in ("variance", "random")):
            continue
        arms = {arm: groups[f"recursive_{which}_{arm}"] for arm in ("variance", "random")}
        metric = "hallucinated_drawn" if which == "grid" else "frechet_drawn"
        kept = "hallucinated_kept" if which == "grid" else "frechet_kept"
        pct = which == "grid"
        lines += [f"## Recursive training on {which}", "",
                  f"`{metric}`: the generation's model's samples; `{kept}`: what the filter passed on.", "",
                  f"| generation | variance: {metric} | random: {metric} | variance: {kept} | random: {kept} |",
                  "| --- | --- | --- | --- | --- |"]
        n_gen = len(arms["variance"][0]["generations"])
        for gi in range(n_gen):
            cells = [_mean_sd((r["generations"][gi][f] for r in arms[a]), pct=pct, digits=2 if pct else 3)
                     for f in (metric, kept) for a in ("variance", "random")]
            lines.append(f"| {gi + 1} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += _cost_section(results)
    lines += _figures(config, results, groups, ctx)
    return "\n".join(lines)


def _cost_section(results: dict[str, dict[str, Any]]) -> list[str]:
    """What the checkpoints and sample sets behind the results cost when they were made (each counted once)."""
    made: dict[str, dict[str, float | None]] = {}
    by_kind: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for key, r in results.items():
        for name, c in r.get("cost", {}).items():
            if name in made:
                continue
            made[name] = c
            kind = re.sub(r"_r\d+$", "", key.rsplit("_s", 1)[0]).split("_m")[0]
            by_kind[kind][0] += c.get("wall_s") or 0.0
            by_kind[kind][1] += c.get("cpu_s") or 0.0
    if not made:
        return []
    unknown = sum(1 for c in made.values() if c.get("cpu_s") is None)
    wall = sum(v[0] for v in by_kind.values())
    cpu = sum(v[1] for v in by_kind.values())
    lines = ["## Cost", "",
             f"Training and sampling behind these results, each checkpoint and sample set counted once as recorded "
             f"when it was made: {wall:.0f} s wall, {cpu:.0f} s CPU of the process ({len(made)} files"
             + (f"; {unknown} made before costs were recorded, not counted" if unknown else "") + ").", "",
             "| part | wall s | CPU s |", "| --- | --- | --- |"]
    lines += [f"| {kind} | {w:.0f} | {c:.0f} |" for kind, (w, c) in by_kind.items()]
    return [*lines, ""]


def _interpolation_section(config: dict[str, Any], oned: dict[str, list[dict[str, Any]]], sigma: str) -> list[str]:
    """1D interpolation against training-set size and mode distance, with 95% intervals over replicates."""
    k = f"{config['k_sigma']:g}"
    lines = ["## 1D interpolation against training-set size and mode distance", "",
             f"Share of samples beyond {k} sigma, mean over independent replicates (data set, model and samples) "
             "with its 95% Student-t interval. Per gap: the gap's share divided by the weight of its two "
             "neighbouring modes (2 / number of modes), so that mixtures with different numbers of modes compare.", "",
             f"| means | N | replicates | samples each | beyond {k} sigma | per gap, normalised |",
             "| --- | --- | --- | --- | --- | --- |"]

    def rate(rows: list[dict[str, Any]]) -> list[float]:
        return [r["out_of_support"][sigma]["fraction"] for r in rows]

    def gap(rows: list[dict[str, Any]], j: int) -> list[float]:
        return [r["gaps"][j]["per_neighbour_mass"] for r in rows]

    for rows in oned.values():
        r0 = rows[0]
        gaps = "; ".join(f"{g['lo']:g}-{g['hi']:g}: {_ci(gap(rows, j))}" for j, g in enumerate(r0["gaps"]))
        lines.append(f"| {r0['means']} | {r0['n_train']} | {len(rows)} | {r0['n_samples']} | {_ci(rate(rows))} | "
                     f"{gaps} |")
    lines.append("")
    by_means: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(dict)
    for rows in oned.values():
        by_means[str(rows[0]["means"])][rows[0]["n_train"]] = rows
    tests: list[str] = []
    for means, by_n in by_means.items():
        if len(by_n) > 1:
            lo, hi = min(by_n), max(by_n)
            tests.append(f"- Training-set size, {means}: rate at N = {lo} minus rate at N = {hi}: "
                         f"{_diff(rate(by_n[lo]), rate(by_n[hi]))}.")
    # Equal numbers of modes at different spacings, at the largest N they share.
    three: dict[float, list[dict[str, Any]]] = {}
    for by_n in by_means.values():
        for n, rows in by_n.items():
            widths = {g["width"] for g in rows[0]["gaps"]}
            if len(widths) == 1 and n == max(by_n):
                three.setdefault(widths.pop(), rows)
    if len(three) > 1:
        order = sorted(three)
        for a, b in zip(order, order[1:]):
            tests.append(f"- Mode distance, spacing {a:g} minus spacing {b:g} ({three[a][0]['means']} against "
                         f"{three[b][0]['means']}, N = {three[a][0]['n_train']}): "
                         f"{_diff(rate(three[a]), rate(three[b]))}.")
    for rows in oned.values():
        widths = [g["width"] for g in rows[0]["gaps"]]
        if len(set(widths)) > 1:
            narrow = [j for j, w in enumerate(widths) if w == min(widths)]
            wide = [j for j, w in enumerate(widths) if w == max(widths)]
            d = [statistics.mean(r["gaps"][j]["per_neighbour_mass"] for j in narrow)
                 - statistics.mean(r["gaps"][j]["per_neighbour_mass"] for j in wide) for r in rows]
            tests.append(f"- Mode distance within {rows[0]['means']} (same models): width-{min(widths):g} gaps "
                         f"(mean) minus width-{max(widths):g} gap, normalised: {_ci(d)}.")
    if tests:
        lines += ["Differences (Welch's 95% interval and p over replicates; within one mixture, the paired "
                  "differences' Student-t interval):", "", *tests, ""]
    return lines


def _figures(config: dict[str, Any], results: dict[str, dict[str, Any]], groups: dict[str, list[dict[str, Any]]],
             ctx: RunContext) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["(matplotlib is not installed: no figures)"]
    pw = config["primary_window"]
    out = ["## Figures", ""]
    first = {name: rows[0] for name, rows in groups.items()}

    oned_names = [k for k in first if k.startswith("oned_")]
    if oned_names:
        fig, axes = plt.subplots(1, len(oned_names), figsize=(3.2 * len(oned_names), 2.6), squeeze=False)
        for ax, name in zip(axes[0], oned_names):
            p = _load(ctx, first[name])
            x = p["x"].flatten().clamp(-1, 7)
            ax.hist(x.numpy(), bins=200, log=True, color="tab:blue")
            for m in p["modes"].flatten().tolist():
                ax.axvline(m, color="k", lw=0.4)
            ax.set_title(f"{first[name]['means']}, N={first[name]['n_train']}", fontsize=8)
        fig.tight_layout()
        fig.savefig(ctx.path("fig_1d_samples.png"), dpi=110)
        plt.close(fig)
        out += ["![1D samples (log counts)](fig_1d_samples.png)", ""]

    hist_names = [n for n in first if n.startswith(("oned_", "grid"))]
    if hist_names:
        fig, axes = plt.subplots(1, len(hist_names), figsize=(3.2 * len(hist_names), 2.6), squeeze=False)
        for ax, name in zip(axes[0], hist_names):
            p = _load(ctx, first[name])
            window = first[name].get("primary_window", pw["oned" if name.startswith("oned") else "grid"])
            s = p["scores"][window].double().clamp_min(1e-12).log10()
            bad = p["dist"] > config["k_sigma"]
            ax.hist(s[~bad].numpy(), bins=60, alpha=0.6, density=True, label="in support")
            if bad.any():
                ax.hist(s[bad].numpy(), bins=30, alpha=0.6, density=True, label=f"> {config['k_sigma']:g} sigma")
            ax.axvline(float(torch.quantile(s[~bad], config["retention"])), color="k", ls="--", lw=0.8)
            ax.set_title(f"{name} ({window})", fontsize=8)
            ax.set_xlabel("log10 score", fontsize=8)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(ctx.path("fig_score_histograms.png"), dpi=110)
        plt.close(fig)
        out += ["![Score histograms; dashed: the 96%-retention threshold](fig_score_histograms.png)", ""]

    grid_names = [n for n in first if n.startswith("grid")]
    if grid_names:
        fig, axes = plt.subplots(1, len(grid_names), figsize=(4 * len(grid_names), 4), squeeze=False)
        for ax, name in zip(axes[0], grid_names):
            p = _load(ctx, first[name])
            s = p["scores"][first[name].get("primary_window", pw["grid"])]
            bad = p["dist"] > config["k_sigma"]
            flagged = s > _threshold(s, bad, config["retention"])
            x = p["x"]
            ax.scatter(x[~flagged, 0], x[~flagged, 1], s=2, c="tab:blue", alpha=0.5, lw=0, label="kept")
            ax.scatter(x[flagged, 0], x[flagged, 1], s=3, c="tab:red", lw=0, label="flagged")
            ax.scatter(x[bad, 0], x[bad, 1], s=14, facecolors="none", edgecolors="k", lw=0.4,
                       label=f"> {config['k_sigma']:g} sigma")
            ax.set_xlim(-2.2, 2.2)
            ax.set_ylim(-2.2, 2.2)
            ax.set_aspect("equal")
            ax.set_title(f"{name}: flagged at {config['retention']:.0%} retention", fontsize=8)
        axes[0][0].legend(fontsize=7, loc="lower left")
        fig.tight_layout()
        fig.savefig(ctx.path("fig_grid_samples.png"), dpi=110)
        plt.close(fig)
        out += ["![2D samples with flagged hallucinations in red](fig_grid_samples.png)", ""]

    rec = [w for w in ("grid", "digits") if f"recursive_{w}_variance" in first and f"recursive_{w}_random" in first]
    if rec:
        fig, axes = plt.subplots(1, len(rec), figsize=(4 * len(rec), 3), squeeze=False)
        for ax, which in zip(axes[0], rec):
            field = "hallucinated_drawn" if which == "grid" else "frechet_drawn"
            for arm, color in (("variance", "tab:green"), ("random", "tab:red")):
                gens = first[f"recursive_{which}_{arm}"]["generations"]
                ax.plot([g["generation"] for g in gens], [g[field] for g in gens], "o-", color=color, label=arm)
            ax.set_xlabel("generation")
            ax.set_ylabel("hallucinated fraction" if which == "grid" else "Frechet distance (digit features)")
            ax.set_title(f"recursive training: {which}", fontsize=9)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(ctx.path("fig_recursive.png"), dpi=110)
        plt.close(fig)
        out += ["![Recursive training, variance filter against random filter](fig_recursive.png)", ""]

    if "shapes" in first:
        p = _load(ctx, first["shapes"])
        s = p["scores"][pw["shapes"]]
        bad = p["hallucinated"]
        order = torch.cat([bad.nonzero().flatten()[:8], (~bad).nonzero().flatten()[:16]])[:24]
        fig, axes = plt.subplots(3, 8, figsize=(8, 3.4))
        for ax in axes.flat:
            ax.axis("off")
        for ax, i in zip(axes.flat, order.tolist()):
            ax.imshow(p["x"][i, 0].float().numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_title(f"{float(s[i]):.1e}", fontsize=6, color="red" if bool(bad[i]) else "black")
        fig.suptitle("SIMPLE SHAPES samples, score above each (red: 2+ shapes in a column)", fontsize=8)
        fig.tight_layout()
        fig.savefig(ctx.path("fig_shapes_samples.png"), dpi=110)
        plt.close(fig)
        out += ["![SIMPLE SHAPES samples with their scores](fig_shapes_samples.png)", ""]
    return out

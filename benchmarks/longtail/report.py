"""The long-tail report: accuracy per method, paired comparisons across seeds, class-wise spectra."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from benchmarks._harness import RunContext
from benchmarks._stats import COMPARISON_HEADER, format_comparison, paired_comparison
from benchmarks.longtail.grid import get_data, parse_key

# Top-1 accuracy (%) reported by Rangwani et al. (2022), best epoch, one seed; baselines as the paper
# quotes them from Cao et al. (2019) (unconfirmed here).
PAPER = {
    "cifar10-lt": {"ce": 70.4, "ldam_drw": 77.0, "ce_drw_sam": 80.6, "ldam_drw_sam": 81.9},
    "cifar100-lt": {"ce": 38.3, "ldam_drw": 42.0, "ce_drw_sam": 44.6, "ldam_drw_sam": 45.4, "vs_sam": 46.6},
    "imagenet-lt": {"ce_drw_sam": 47.1, "ldam_drw_sam": 53.1},
    "inat2018": {"ce_drw_sam": 65.3, "ldam_drw_sam": 70.1},
}
# The CPU-scale attempt recorded in PAPERS.md (digits, 5 seeds, tail = the 3 rarest classes).
EARLIER_DIGITS = {"ce": (86.1, 58.9), "ldam_drw": (87.8, 64.0), "ldam_drw_sam": (90.2, 69.3)}

LABELS = {
    "ce": "CE",
    "ce_sam": "CE + SAM",
    "ce_drw": "CE + DRW",
    "ce_drw_sam": "CE + DRW + SAM",
    "ldam_drw": "LDAM + DRW",
    "ldam_drw_sam": "LDAM + DRW + SAM",
    "ldam_drw_sam_sched": "LDAM + DRW + SAM (rho schedule)",
    "vs": "VS",
    "vs_sam": "VS + SAM",
    "ldam_drw_pgd": "LDAM + DRW + perturbed GD",
    "ldam_drw_negcurv": "LDAM + DRW + negative-curvature steps",
}


def group_scores(result: dict[str, Any], cls_num_list: list[int], groups: dict[str, Any]) -> dict[str, float]:
    """Overall, head / tail and many / medium / few accuracy (%) of one training unit."""
    from smoothopt.evaluation import group_accuracy, head_tail_accuracy

    acc = result["per_class"]
    out = {"overall": float(result["overall"]), "mean_class": float(np.nanmean(acc))}
    out.update(head_tail_accuracy(acc, cls_num_list, groups["head_fraction"]))
    out.update(group_accuracy(acc, cls_num_list, groups["many_threshold"], groups["few_threshold"]))
    return out


def _fmt(values: list[float]) -> str:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return "–"
    if v.size == 1:
        return f"{v[0]:.1f}"
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def report(config: dict[str, Any], results: dict[str, dict[str, Any]], ctx: RunContext) -> str:
    data = get_data(config)
    counts = data.cls_num_list
    groups = config["groups"]
    scores: dict[str, dict[int, dict[str, float]]] = {}
    train_s: dict[str, list[float]] = {}
    cpu_s: dict[str, list[float]] = {}
    acted: dict[str, list[float]] = {}
    spectra: dict[tuple[str, str], dict[str, Any]] = {}
    for key, r in results.items():
        kind, method, tag, seed = parse_key(key)
        if kind == "train":
            scores.setdefault(method, {})[seed] = group_scores(r, counts, groups)
            train_s.setdefault(method, []).append(float(r.get("wall_s", r.get("train_s", 0.0))))
            cpu_s.setdefault(method, []).append(float(r.get("train_cpu_s", math.nan)))
            for k in ("perturbations", "escapes"):
                if r.get(k) is not None:
                    acted.setdefault(method, []).append(float(r[k]))
        else:
            spectra[(method, tag or "final")] = r

    num_tail = len(counts) - int(round(groups["head_fraction"] * len(counts)))
    lines = [
        f"# Escaping saddle points on long-tailed data: `{data.name}`",
        "",
        f"Training counts per class: {counts} ({sum(counts)} images); balanced test set of "
        f"{len(data.test_y) if data.test_y is not None else len(data.test_set)} images. "
        f"Tail = the {num_tail} rarest classes; many / medium / few = more than {groups['many_threshold']} / "
        f"{groups['few_threshold']}-{groups['many_threshold']} / fewer than {groups['few_threshold']} training "
        "images. Every number is the last epoch's test accuracy (%), mean ± sd over seeds; no model selection.",
        "",
        "## Accuracy per method",
        "",
        "| method | seeds | overall | head | tail | many | medium | few | wall s / run | CPU s / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method in config["methods"]:
        if method not in scores:
            continue
        per_seed = scores[method]
        cells = [_fmt([s[k] for s in per_seed.values()]) for k in ("overall", "head", "tail", "many", "medium", "few")]
        lines.append(
            f"| {LABELS.get(method, method)} | {len(per_seed)} | " + " | ".join(cells)
            + f" | {np.mean(train_s[method]):.1f} | {np.nanmean(cpu_s[method]):.1f} |"
        )
    for method, counts_acted in acted.items():
        lines.append(f"\n{LABELS.get(method, method)}: {np.mean(counts_acted):.1f} perturbations / escape steps per "
                     f"run on average (over {len(counts_acted)} runs of {config['train']['epochs']} epochs).")
    total_cpu = sum(np.nansum(v) for v in cpu_s.values())
    lines.append(f"\nTraining CPU time summed over all runs: {total_cpu:.0f} s (one thread).")
    from benchmarks.longtail.train import optimizer_available

    missing = [m for m in config["methods"] if m not in scores]
    lacking = [m for m in missing if not optimizer_available(config["methods"][m].get("optimizer", "sgd"))]
    if lacking:
        lines += ["", f"Not run (their optimizer is not in this smoothopt): {', '.join(lacking)}."]
    if set(missing) - set(lacking):
        lines += ["", f"No finished run yet: {', '.join(m for m in missing if m not in lacking)}."]

    lines += ["", "## Paired comparisons (same seeds)", ""]
    for metric in ("tail", "overall", "few"):
        rows = []
        for a, b in config["comparisons"]:
            if a not in scores or b not in scores:
                continue
            common = sorted(set(scores[a]) & set(scores[b]))
            if len(common) < 2:
                continue
            xa = [scores[a][s][metric] for s in common]
            xb = [scores[b][s][metric] for s in common]
            if any(math.isnan(v) for v in xa + xb):
                continue
            rows.append(format_comparison(f"{LABELS.get(a, a)} vs {LABELS.get(b, b)}", paired_comparison(xa, xb)))
        if rows:
            lines += [f"**{metric}** accuracy", "", COMPARISON_HEADER, *rows, ""]

    if data.name in PAPER:
        lines += ["## The paper's numbers (best epoch, one seed)", "", "| method | paper | ours (last epoch) |",
                  "| --- | --- | --- |"]
        for m, v in PAPER[data.name].items():
            ours = _fmt([s["overall"] for s in scores.get(m, {}).values()])
            lines.append(f"| {LABELS.get(m, m)} | {v:.1f} | {ours} |")
        lines.append("")
    if data.name == "digits-lt":
        lines += ["## Beside the earlier CPU-scale attempt (PAPERS.md, 5 seeds)", "",
                  "| method | earlier overall / tail | ours overall / tail |", "| --- | --- | --- |"]
        for m, (o, t) in EARLIER_DIGITS.items():
            ours_o = _fmt([s["overall"] for s in scores.get(m, {}).values()])
            ours_t = _fmt([s["tail"] for s in scores.get(m, {}).values()])
            lines.append(f"| {LABELS.get(m, m)} | {o:.1f} / {t:.1f} | {ours_o} / {ours_t} |")
        lines.append("")

    if spectra:
        from benchmarks.longtail.spectra import spectra_section

        lines += spectra_section(config, spectra, counts, ctx)
    return "\n".join(lines)

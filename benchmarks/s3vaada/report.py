"""The S3VAADA report: accuracy against budget, paired comparisons at equal budget, per-seed differences."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks._harness import RunContext
from benchmarks._stats import COMPARISON_HEADER, format_comparison, paired_comparison
from benchmarks.s3vaada import COMPARISONS, EARLIER_CPU_TRY, LABELS, PAPER_NUMBERS
from benchmarks.sdat.common import plot_paired_differences


def _by_cell(results: dict[str, dict[str, Any]]) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    cells: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for key, r in results.items():
        trainer, strategy, seed = key.split("__")
        cells.setdefault((trainer, strategy), {})[int(seed.removeprefix("seed"))] = r
    return cells


def _score(result: dict[str, Any], round_index: int | None) -> float:
    acc = result["test_acc"]
    return float(np.mean(acc[1:])) if round_index is None else float(acc[round_index])


def comparisons(
    results: dict[str, dict[str, Any]], round_index: int | None = -1
) -> list[tuple[str, str, str, int, dict[str, Any], list[float]]]:
    """Paired comparisons at one round: ``(trainer, a, b, budget, stats, per-seed differences)``.

    ``round_index=None`` compares the mean accuracy over the labelling rounds (the area under
    the accuracy-budget curve, budget 0 excluded); ``budget`` is then the final one. Beside the
    strategy pairs of :data:`COMPARISONS` under each trainer, the same strategy under VAADA and
    under DANN is compared (``a``/``b`` are then ``"vaada"``/``"dann"``).
    """
    cells = _by_cell(results)
    out = []
    trainers = list(dict.fromkeys(t for t, _ in cells))
    pairs = [(t, (t, a), (t, b)) for t in trainers for a, b in COMPARISONS]
    strategies = list(dict.fromkeys(s for _, s in cells))
    pairs += [("vaada vs dann", ("vaada", s), ("dann", s)) for s in strategies]
    for label, ka, kb in pairs:
        ra, rb = cells.get(ka), cells.get(kb)
        if not ra or not rb:
            continue
        seeds = sorted(set(ra) & set(rb))
        if len(seeds) < 2:
            continue
        xa = [_score(ra[s], round_index) for s in seeds]
        xb = [_score(rb[s], round_index) for s in seeds]
        budget = ra[seeds[0]]["budgets"][-1 if round_index is None else round_index]
        a, b = (ka[1], kb[1]) if ka[0] == kb[0] else (ka[0] + ":" + ka[1], kb[0] + ":" + kb[1])
        out.append((label, a, b, budget, paired_comparison(xa, xb), [x - y for x, y in zip(xa, xb)]))
    return out


def _plot_budget_curves(cells: dict[tuple[str, str], dict[int, dict[str, Any]]], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trainers = list(dict.fromkeys(t for t, _ in cells))
    fig, axes = plt.subplots(1, len(trainers), figsize=(4.6 * len(trainers), 3.6), dpi=100, squeeze=False)
    for ax, trainer in zip(axes[0], trainers):
        for (t, strategy), runs in cells.items():
            if t != trainer:
                continue
            acc = np.array([r["test_acc"] for r in runs.values()])
            budgets = next(iter(runs.values()))["budgets"]
            mean = acc.mean(axis=0)
            se = acc.std(axis=0, ddof=1) / np.sqrt(acc.shape[0]) if acc.shape[0] > 1 else np.zeros_like(mean)
            ax.plot(budgets, mean, marker="o", ms=3, label=LABELS[strategy])
            ax.fill_between(budgets, mean - se, mean + se, alpha=0.15)
        ax.set_title(f"trainer {LABELS[trainer]}", fontsize=9)
        ax.set_xlabel("target labels")
        ax.set_ylabel("held-out target acc. (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_report(config: dict[str, Any], results: dict[str, dict[str, Any]], ctx: RunContext) -> str:
    """Markdown report; writes ``figures/accuracy_vs_budget.png`` and ``figures/paired_differences.png``."""
    cells = _by_cell(results)
    d = config["data"]
    any_run = next(iter(results.values()))
    task = (f"digits rotated {d['degrees']:g} degrees, pixel noise {d['noise']:g}" if d["kind"] == "digits"
            else f"{d['root']} {d['source']} -> {d['target']}")
    lines = ["# S3VAADA reproduction", ""]
    lines += [
        f"Task: {task}; target pool of {any_run['pool_size']} examples, {any_run['budget_per_round']} labels "
        f"per round for {config['rounds']} rounds. Unsupervised adaptation for {config['init_iterations']} "
        f"iterations (shared by every strategy of a trainer and seed), then {config['round_iterations']} "
        f"iterations after each round. S3 weights {config['s3']['alpha']}/{config['s3']['beta']}/"
        f"{config['s3']['gamma']}; VAT eps {config['vat']['eps']}, {config['s3']['restarts']} restarts for "
        "the uncertainty. Accuracy (%) on held-out target data; mean ± sd over seeds.",
        "",
    ]
    for trainer in dict.fromkeys(t for t, _ in cells):
        budgets = None
        rows = []
        for (t, strategy), runs in cells.items():
            if t != trainer:
                continue
            acc = np.array([r["test_acc"] for r in runs.values()])
            budgets = next(iter(runs.values()))["budgets"]
            sd = acc.std(axis=0, ddof=1) if acc.shape[0] > 1 else np.zeros(acc.shape[1])
            cells_txt = " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in zip(acc.mean(axis=0), sd))
            wall = np.mean([r.get("cpu_s", r.get("wall_s", 0.0)) for r in runs.values()])
            rows.append(f"| {LABELS[strategy]} | {cells_txt} | {acc.shape[0]} | {wall:.0f} |")
        if budgets is None:
            continue
        lines += [f"## Trainer {LABELS[trainer]}", ""]
        lines += ["| strategy | " + " | ".join(f"{b} labels" for b in budgets) + " | seeds | CPU s / run |",
                  "| --- |" + " --- |" * (len(budgets) + 2)]
        lines += rows + [""]

    fig1 = ctx.path("figures", "accuracy_vs_budget.png")
    _plot_budget_curves(cells, fig1)
    lines += ["![accuracy against budget](figures/accuracy_vs_budget.png)", ""]

    comps = comparisons(results)
    if comps:
        budget = comps[0][3]
        lines += [f"## Paired comparisons at the final budget ({budget} labels)", "", COMPARISON_HEADER]
        diffs = {}
        for label, a, b, _, c, dlt in comps:
            name = f"{label}: {LABELS.get(a, a)} vs {LABELS.get(b, b)}"
            lines.append(format_comparison(name, c, " pt"))
            if label != "vaada vs dann":
                diffs[f"{label}\n{a} - {b}"] = dlt
        lines.append("")
        mid = comparisons(results, round_index=len(any_run["budgets"]) // 2)
        if mid:
            lines += [f"At {mid[0][3]} labels:", "", COMPARISON_HEADER]
            lines += [format_comparison(f"{lab}: {LABELS.get(a, a)} vs {LABELS.get(b, b)}", c, " pt")
                      for lab, a, b, _, c, _ in mid]
            lines.append("")
        auc = comparisons(results, round_index=None)
        lines += [f"Mean accuracy over the {len(any_run['budgets']) - 1} labelling rounds (area under the "
                  "accuracy-budget curve):", "", COMPARISON_HEADER]
        lines += [format_comparison(f"{lab}: {LABELS.get(a, a)} vs {LABELS.get(b, b)}", c, " pt")
                  for lab, a, b, _, c, _ in auc]
        lines.append("")
        fig2 = ctx.path("figures", "paired_differences.png")
        plot_paired_differences(diffs, fig2, f"S3VAADA: per-seed paired differences at {budget} labels",
                                "target acc. difference (pt)")
        lines += ["![per-seed paired differences](figures/paired_differences.png)", ""]

    lines += ["## Reference numbers", "", "Office-Home, 10% budget, read from the paper's plot (about ±0.3):", "",
              "| task | S3VAADA | best baseline (BADGE) | random |", "| --- | --- | --- | --- |"]
    for task_name, nums in PAPER_NUMBERS.items():
        best = nums["best baseline (BADGE)"]
        lines.append(f"| {task_name} | {nums['s3']:.1f} | {best:.1f} | {nums['random']:.1f} |")
    lines += ["", EARLIER_CPU_TRY]
    return "\n".join(lines) + "\n"

"""The SDAT report: accuracy per method and setting, paired comparisons, per-seed differences."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks._harness import RunContext
from benchmarks._stats import COMPARISON_HEADER, format_comparison, paired_comparison
from benchmarks.sdat import COMPARISONS, LABELS, PAPER_NUMBERS, main_setting
from benchmarks.sdat.common import plot_paired_differences


def _cpu_seconds(runs: Any) -> float:
    """Mean CPU seconds per run (wall seconds for units recorded before CPU time was)."""
    return float(np.mean([r.get("cpu_s", r.get("wall_s", 0.0)) for r in runs]))


def _by_cell(results: dict[str, dict[str, Any]]) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    cells: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for key, r in results.items():
        setting, method, seed = key.split("__")
        cells.setdefault((setting, method), {})[int(seed.removeprefix("seed"))] = r
    return cells


def comparisons(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, dict[str, Any], list[float]]]:
    """Every paired comparison the grid allows: ``(setting, a, b, stats, per-seed differences)``."""
    cells = _by_cell(results)
    settings = sorted({s for s, _ in cells}, key=lambda s: [k for k, _ in cells].index(s))
    out = []
    for setting in settings:
        for a, b in COMPARISONS:
            ra, rb = cells.get((setting, a)), cells.get((setting, b))
            if not ra or not rb:
                continue
            seeds = sorted(set(ra) & set(rb))
            if len(seeds) < 2:
                continue
            xa = [ra[s]["test_acc"] for s in seeds]
            xb = [rb[s]["test_acc"] for s in seeds]
            out.append((setting, a, b, paired_comparison(xa, xb), [x - y for x, y in zip(xa, xb)]))
    return out


def write_report(config: dict[str, Any], results: dict[str, dict[str, Any]], ctx: RunContext) -> str:
    """Markdown report; writes ``figures/paired_differences.png`` below the run folder."""
    cells = _by_cell(results)
    lines = ["# SDAT reproduction", ""]
    lines += [
        f"Data: `{config['data']['kind']}`; {config['iterations']} iterations of "
        f"{config['batch_size']}+{config['batch_size']} (source+target), SGD lr {config['lr']} "
        f"(momentum {config['momentum']}, Nesterov {config['nesterov']}, wd {config['weight_decay']}), "
        f"schedule `lr * (1 + {config['lr_gamma']} i)^-{config['lr_decay']}`; "
        f"backbone `{config['model']['backbone']}`, "
        f"bottleneck {config['model']['bottleneck']}; adversarial gradient at the "
        f"{'perturbed' if config['adv_at_perturbed'] else 'clean'} weights. "
        "Accuracy (%) on held-out target data at the last iterate; mean ± sd over seeds.",
        "",
    ]
    main = main_setting(config)
    for setting, ms in sorted(config["grid"].items(), key=lambda kv: kv[0] != main):
        if not any((setting, m) in cells for m in ms):
            continue  # nothing finished yet (a partial report)
        desc = ", ".join(f"{k} {v}" for k, v in config["settings"][setting].items())
        lines += [f"## Setting `{setting}` ({desc}; rho {config['rho'][setting]})", ""]
        lines += ["| method | target test acc. | source acc. | seeds | CPU s / run |",
                  "| --- | --- | --- | --- | --- |"]
        for m in ms:
            runs = cells.get((setting, m), {})
            if not runs:
                continue
            acc = np.array([r["test_acc"] for r in runs.values()])
            src = np.array([r["source_acc"] for r in runs.values()])
            wall = _cpu_seconds(runs.values())
            sd = acc.std(ddof=1) if acc.size > 1 else 0.0
            lines.append(f"| {LABELS[m]} | {acc.mean():.2f} ± {sd:.2f} | {src.mean():.2f} | {acc.size} | {wall:.1f} |")
        lines.append("")

    comps = comparisons(results)
    if comps:
        lines += ["## Paired comparisons", "", COMPARISON_HEADER]
        diffs = {}
        for setting, a, b, c, d in comps:
            name = f"{setting}: {LABELS[a]} vs {LABELS[b]}"
            lines.append(format_comparison(name, c, " pt"))
            diffs[f"{setting}\n{a} - {b}"] = d
        lines.append("")
        fig = ctx.path("figures", "paired_differences.png")
        plot_paired_differences(diffs, fig, "SDAT: per-seed paired differences", "target acc. difference (pt)")
        lines += ["![per-seed paired differences](figures/paired_differences.png)", ""]

    lines += ["## Reference numbers (accuracy %)", "", "| source | " + " | ".join(LABELS.values()) + " |",
              "| --- |" + " --- |" * len(LABELS)]
    for origin, nums in PAPER_NUMBERS.items():
        lines.append(f"| {origin} | " + " | ".join(f"{nums[m]:.1f}" if m in nums else "" for m in LABELS) + " |")
    return "\n".join(lines) + "\n"

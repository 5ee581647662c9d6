"""Write the report from the units finished so far: ``python -m benchmarks.hallucination.partial OUT/hallucination``.

The harness writes ``report.md`` once every unit is done; this writes ``report_partial.md`` (and the
figures) from whatever units exist, e.g. when a run is stopped at a deadline.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from benchmarks._harness import RunContext
from benchmarks._io import read_json, write_text
from benchmarks.hallucination.report import build_report


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        raise SystemExit("usage: python -m benchmarks.hallucination.partial OUT/hallucination")
    out = Path(argv[0])
    meta = read_json(out / "config.json")
    results = {p.stem: read_json(p) for p in sorted((out / "units").glob("*.json"))}
    ctx = RunContext(out, torch.device("cpu"), meta["seeds"], meta["preset"], show_progress=False)
    wall = sum(float(r.get("wall_s", 0.0)) for r in results.values())
    text = build_report(meta["config"], results, ctx)
    text += (f"\n\n---\nPartial report: {len(results)} finished units ({', '.join(results)}), "
             f"{wall:.0f} s of unit wall time.\nCommand: `{meta['command']}`\n")
    write_text(out / "report_partial.md", text)
    print(f"wrote {out / 'report_partial.md'} from {len(results)} units")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

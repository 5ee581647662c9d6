"""Write the report of an unfinished SDAT or S3VAADA run from the units it has so far.

``python -m benchmarks.sdat.partial runs/sdat`` (or ``runs/s3vaada``) reads ``config.json`` and
``units/*.json`` and writes ``report.md`` with a note of how many units are missing. Only seeds
that two methods share enter a paired comparison. Rerunning the original command finishes the
run and replaces this report with the complete one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks._harness import RunContext, load_experiment
from benchmarks._io import read_json, write_json, write_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sdat.partial", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="an experiment's output folder, e.g. runs/sdat")
    args = parser.parse_args(argv)
    meta = read_json(args.run_dir / "config.json")
    exp = load_experiment(meta["experiment"])
    if exp.name not in ("sdat", "s3vaada"):
        raise SystemExit(f"{args.run_dir} holds a {exp.name!r} run; this tool reports sdat and s3vaada runs")
    config, seeds = meta["config"], meta["seeds"]
    keys = exp.units(config, seeds)
    results = {k: read_json(args.run_dir / "units" / f"{k}.json") for k in keys
               if (args.run_dir / "units" / f"{k}.json").exists()}
    if not results:
        raise SystemExit(f"{args.run_dir} has no finished units yet")
    ctx = RunContext(args.run_dir, "cpu", seeds, meta["preset"], show_progress=False)
    report = exp.report(config, results, ctx)
    cpu = sum(float(r.get("cpu_s", r.get("wall_s", 0.0))) for r in results.values())
    wall = sum(float(r.get("wall_s", 0.0)) for r in results.values())
    missing = [k for k in keys if k not in results]
    footer = (
        f"\n\n---\nPARTIAL: {len(results)} of {len(keys)} units finished ({len(missing)} missing"
        f"{', first ' + missing[0] if missing else ''}); {cpu:.0f} CPU s and {wall:.0f} s of unit wall "
        f"time so far. Written {time.strftime('%Y-%m-%dT%H:%M:%S%z')}.\nCommand: `{meta.get('command', '?')}`\n"
    )
    write_json(args.run_dir / "results.json", results)
    write_text(args.run_dir / "report.md", report + footer)
    print(f"{args.run_dir / 'report.md'}: {len(results)} of {len(keys)} units")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

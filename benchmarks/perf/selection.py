"""Time and peak memory of selecting a fraction of a large target pool (S3 lazy greedy and the baselines).

``python -m benchmarks perf selection [--pool 50000 --classes 65 --fraction 0.02]``

The pool is synthetic (softmax of scaled Gaussian logits; the selection's cost does not depend on
where the probabilities come from). Peak memory is the rise of the process's resident set over the
selection: the kernel's high-water mark (``VmHWM``) is reset just before the call where Linux
allows it (``/proc/self/clear_refs``), else ``ru_maxrss`` is compared before and after; Python-level
allocations are also traced with ``tracemalloc``. For reference, the dense ``N x N`` float64
similarity matrix of the public code would need ``8 N^2`` bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks._io import write_json
from benchmarks.perf._memory import reset_peak_rss, status_kib

MiB = 2.0**20


def measure(fn, *args, **kwargs):
    """Run ``fn`` once; return (result, wall s, CPU s, peak RSS rise in MiB, peak traced Python MiB, method)."""
    rss0 = status_kib("VmRSS")
    reset = rss0 is not None and reset_peak_rss()
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm = status_kib("VmHWM") if reset else None
    if hwm is not None and rss0 is not None:
        rise = (hwm - rss0) / 1024
        method = "VmHWM after /proc/self/clear_refs reset, minus VmRSS before"
    else:
        rise = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss0) / 1024
        method = "ru_maxrss rise (a lower bound if an earlier peak was higher)"
    return out, seconds, cpu_seconds, max(rise, 0.0), traced_peak / MiB, method


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks perf selection", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", type=int, default=50_000, help="candidates N (default: 50000)")
    p.add_argument("--classes", type=int, default=65, help="classes C (default: 65, Office-Home)")
    p.add_argument("--fraction", type=float, default=0.02, help="fraction of the pool to select (default: 0.02)")
    p.add_argument("--strategies", nargs="+", choices=["s3", "random", "entropy", "margin"],
                   default=["s3", "random", "entropy", "margin"])
    p.add_argument("--num-representatives", type=int, default=None,
                   help="facility-location representatives (default: every candidate, exact)")
    p.add_argument("--block-size", type=int, default=256, help="candidates per similarity block (default: 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--out", type=Path, default=Path("runs/perf/selection.json"), help="JSON result file")
    args = p.parse_args(argv)
    if args.pool < 1 or not 0 < args.fraction <= 1:
        p.error("--pool must be >= 1 and --fraction in (0, 1]")
    torch.set_num_threads(args.threads)

    from smoothopt.adapt import Selection, s3_select, select

    gen = torch.Generator().manual_seed(args.seed)
    probs = torch.softmax(3.0 * torch.randn(args.pool, args.classes, generator=gen), dim=1).double()
    budget = max(1, round(args.fraction * args.pool))
    dense_mib = 8.0 * args.pool**2 / MiB
    rows = []
    print(f"pool N={args.pool}, C={args.classes}, budget={budget} ({args.fraction:.1%}), "
          f"threads={args.threads}; a dense N x N float64 matrix would take {dense_mib:,.0f} MiB")
    print(f"{'strategy':<10} {'wall (s)':>10} {'CPU (s)':>10} {'peak RSS rise (MiB)':>20} {'traced Python (MiB)':>20}")
    for strategy in args.strategies:
        fn: Callable[..., Selection]
        if strategy == "s3":
            fn, kw = s3_select, {"uncertainty": "margin", "num_representatives": args.num_representatives,
                                 "block_size": args.block_size, "generator": torch.Generator().manual_seed(1)}
        else:
            fn, kw = select, {"strategy": strategy, "generator": torch.Generator().manual_seed(1)}
        sel, seconds, cpu, rise, traced, method = measure(fn, probs=probs, budget=budget, **kw)
        if sel.indices.unique().numel() != budget:
            raise RuntimeError(f"{strategy} returned {sel.indices.unique().numel()} distinct picks, not {budget}")
        rows.append({"strategy": strategy, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_rise_mib": rise,
                     "traced_python_peak_mib": traced, "selected": budget})
        print(f"{strategy:<10} {seconds:>10.2f} {cpu:>10.2f} {rise:>20.1f} {traced:>20.1f}")
    result = {
        "command": "python -m benchmarks perf selection " + " ".join(argv or []),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pool": args.pool, "classes": args.classes, "budget": budget,
        "dense_nxn_float64_mib": dense_mib,
        "memory_method": method,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
                    "load_average_1min_at_end": os.getloadavg()[0]},
        "results": rows,
    }
    write_json(args.out, result)
    print(json.dumps({r["strategy"]: round(r["seconds"], 3) for r in rows}), "->", args.out)
    return 0

"""Command line: ``python -m benchmarks {NAME,reproduce,perf} ...``.

Examples:
    python -m benchmarks reproduce --preset cpu
    python -m benchmarks hallucination --preset smoke --seeds 2 --out runs/try
    python -m benchmarks longtail --preset cpu --seeds 0-14 --set epochs=100
    torchrun --nproc-per-node 2 -m benchmarks longtail --preset smoke --device cpu
    python -m benchmarks perf sam
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks import EXPERIMENTS, PERF  # noqa: E402
from benchmarks._harness import (  # noqa: E402
    PRESETS,
    load_experiment,
    parse_overrides,
    parse_seeds,
    run_experiment,
)
from benchmarks._io import write_text  # noqa: E402


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=PRESETS, default="cpu", help="scale of the run (default: cpu)")
    p.add_argument("--seeds", default=None, help="'5' (seeds 0-4), '3-7' or '0,4,9'; default: per preset")
    p.add_argument("--out", type=Path, default=Path("runs"), help="output folder (default: runs/)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1', ... (default: auto)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration value (JSON literal), repeatable")
    p.add_argument("--restart", action="store_true", help="discard finished units in --out and start afresh")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in EXPERIMENTS:
        _add_run_options(sub.add_parser(name, help=f"reproduce the {name} paper"))
    rep = sub.add_parser("reproduce", help="run every paper's reproduction at one preset")
    _add_run_options(rep)
    rep.add_argument("--only", nargs="+", choices=sorted(EXPERIMENTS), default=None,
                     help="run only these experiments")
    perf = sub.add_parser("perf", help="micro-benchmarks of the packages against their peers")
    perf.add_argument("name", choices=sorted(PERF))
    perf.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the micro-benchmark")
    return parser


def _resolve_device(spec: str):
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise SystemExit(f"--device: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {spec!r} asked for CUDA, but torch sees no CUDA device; use --device cpu")
    return device


def _init_distributed(device):
    """Join the process group when started by torchrun; return (rank, world_size, device)."""
    import torch
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, device
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    return dist.get_rank(), dist.get_world_size(), device


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "perf":
        module = importlib.import_module(PERF[args.name])
        return int(module.main(args.args) or 0)

    import torch

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.threads < 1:
        raise SystemExit(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    device = _resolve_device(args.device)
    rank, world_size, device = _init_distributed(device)
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    overrides = parse_overrides(args.overrides)
    names = (args.only or list(EXPERIMENTS)) if args.command == "reproduce" else [args.command]
    if args.command == "reproduce" and overrides:
        raise SystemExit("--set applies to one experiment; run `python -m benchmarks NAME --set ...` instead")

    timings = {}
    try:
        for name in names:
            exp = load_experiment(name)
            seeds = parse_seeds(args.seeds, exp.default_seeds[args.preset])
            t0 = time.perf_counter()
            run_experiment(exp, preset=args.preset, out=args.out, device=device, seeds=seeds,
                           overrides=overrides, show_progress=args.progress, restart=args.restart,
                           rank=rank, world_size=world_size)
            timings[name] = time.perf_counter() - t0
    finally:
        if world_size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank == 0 and args.command == "reproduce":
        lines = [f"# Reproductions, preset `{args.preset}`", ""]
        lines += [f"- [{n}]({n}/report.md): {timings[n]:.0f} s in this invocation" for n in names]
        write_text(args.out / "README.md", "\n".join(lines) + "\n")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

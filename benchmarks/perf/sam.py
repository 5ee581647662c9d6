"""Cost of a SAM step relative to two plain optimizer steps (``python -m benchmarks perf sam``).

For each model the program times, interleaved in one process, one training step of:

* ``base``: forward, backward and the base optimizer's step (SGD with momentum and weight decay);
* ``smoothopt``: :class:`smoothopt.SAM` over the same base (two forward/backward passes);
* ``pytorch_optimizer``: ``pytorch_optimizer.SAM`` 4.x over the same base, with its default settings, and
  ``pytorch_optimizer+foreach`` with ``foreach=True``;
* ``loop``: a per-tensor reference SAM written below (save, perturb, restore one tensor at a time).

The methods run in a shuffled order in every round, so drifts in machine load hit them alike. Reported: the
median step time of each method and its ratio to twice the median base step, ``t_SAM / (2 t_base)``; 1.0 means
that SAM costs exactly two base steps. ``paired`` is the median over rounds of the same ratio taken within each
round, which is less sensitive to slow drifts in machine load.

Example:
    python -m benchmarks perf sam --rounds 300 --out runs/perf_sam.json
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks._io import write_json
from smoothopt import SAM

MODELS = ("cnn", "mlp")
METHODS = ("base", "smoothopt", "pytorch_optimizer", "pytorch_optimizer+foreach", "loop")


def build_model(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The model and one fixed batch: a small CNN (10 tensors) or a 100-layer MLP (200 tensors)."""
    torch.manual_seed(seed)
    if name == "cnn":
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10),
        )
        x = torch.randn(32, 3, 32, 32)
    else:
        layers: list[nn.Module] = [nn.Linear(32, 64), nn.ReLU()]
        for _ in range(98):
            layers += [nn.Linear(64, 64), nn.ReLU()]
        layers.append(nn.Linear(64, 10))
        model = nn.Sequential(*layers)
        x = torch.randn(64, 32)
    y = torch.randint(0, 10, (x.shape[0],))
    return model, x, y


class LoopSAM:
    """Per-tensor SAM: the textbook loop, one Python iteration and several kernels per parameter tensor."""

    def __init__(self, params: list[nn.Parameter], base: torch.optim.Optimizer, rho: float) -> None:
        self.params, self.base, self.rho = params, base, rho
        self.saved: list[torch.Tensor | None] = [None] * len(params)

    @torch.no_grad()
    def first_step(self) -> None:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.params if p.grad is not None]))
        scale = self.rho / (norm + 1e-12)
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            self.saved[i] = p.clone()
            p.add_(p.grad * scale)
        self.base.zero_grad()

    @torch.no_grad()
    def second_step(self) -> None:
        for i, p in enumerate(self.params):
            if self.saved[i] is not None:
                p.copy_(self.saved[i])
                self.saved[i] = None
        self.base.step()


def make_step(method: str, model_name: str, rho: float, foreach: bool | None) -> tuple[Callable[[], None], nn.Module]:
    """A function that runs one training step of ``method`` on a fresh copy of the model, and that model."""
    model, x, y = build_model(model_name)
    base_kwargs: dict[str, Any] = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "foreach": foreach}
    loss_fn = nn.functional.cross_entropy

    def backward() -> None:
        loss_fn(model(x), y).backward()

    if method == "base":
        opt = torch.optim.SGD(model.parameters(), **base_kwargs)

        def step() -> None:
            opt.zero_grad()
            backward()
            opt.step()
        return step, model

    if method == "smoothopt":
        sam = SAM(model.parameters(), torch.optim.SGD, rho=rho, **base_kwargs)

        def step() -> None:
            sam.zero_grad()
            backward()
            sam.first_step(zero_grad=True)
            backward()
            sam.step()
        return step, model

    if method.startswith("pytorch_optimizer"):
        from smoothopt._validation import optional_import

        po = optional_import("pytorch_optimizer", "bench")
        # NOTE: pytorch_optimizer's SAM keeps ``foreach`` in the shared param groups, where the base SGD reads it
        # too: with "+foreach" its base runs multi-tensor whatever --base-foreach says.
        peer_kwargs = dict(base_kwargs, foreach=True if method.endswith("+foreach") else foreach)
        peer = po.SAM(model.parameters(), torch.optim.SGD, rho=rho, **peer_kwargs)

        def step() -> None:
            peer.zero_grad()
            backward()
            peer.first_step(zero_grad=True)
            backward()
            peer.second_step()
        return step, model

    if method == "loop":
        params = list(model.parameters())
        loop = LoopSAM(params, torch.optim.SGD(params, **base_kwargs), rho)

        def step() -> None:
            loop.base.zero_grad()
            backward()
            loop.first_step()
            backward()
            loop.second_step()
        return step, model

    raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")


CLOCKS = {"thread": time.thread_time, "wall": time.perf_counter}


def measure(model_name: str, methods: list[str], rounds: int, warmup: int, rho: float,
            foreach: bool | None, seed: int, clock: str = "thread") -> dict[str, list[float]]:
    """Interleaved step times in seconds, ``rounds`` per method, after ``warmup`` untimed rounds.

    ``clock="thread"`` counts the CPU time of the calling thread (with one torch thread, all of the step's
    work), which leaves out the time the process waits for a core on a shared machine; ``"wall"`` is wall time.
    """
    timer = CLOCKS[clock]
    steps = {m: make_step(m, model_name, rho, foreach)[0] for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    order = list(methods)
    rng = random.Random(seed)
    for r in range(warmup + rounds):
        rng.shuffle(order)
        for m in order:
            t0 = timer()
            steps[m]()
            elapsed = timer() - t0
            if r >= warmup:
                times[m].append(elapsed)
    return times


def summarise(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    base = statistics.median(times["base"])
    out = {}
    for m, ts in times.items():
        med = statistics.median(ts)
        q1, _, q3 = statistics.quantiles(ts, n=4)
        paired = [t / (2 * b) for t, b in zip(ts, times["base"])]  # same round, so the same machine load
        out[m] = {"median_ms": 1e3 * med, "q1_ms": 1e3 * q1, "q3_ms": 1e3 * q3,
                  "ratio": med / base if m == "base" else med / (2 * base),
                  "paired_ratio": 0.5 if m == "base" else statistics.median(paired)}
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks perf sam", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--rounds", type=int, default=300, help="timed rounds per method (default: 300)")
    p.add_argument("--warmup", type=int, default=20, help="untimed rounds first (default: 20)")
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--base-foreach", choices=["default", "on", "off"], default="default",
                   help="foreach setting of the base SGD for every method (default: torch's default)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="thread",
                   help="thread: CPU time of the timing thread, robust to other processes (needs --threads 1); "
                        "wall: wall-clock time (default: thread)")
    p.add_argument("--seed", type=int, default=0, help="seed of the round order")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rounds < 4:
        raise SystemExit(f"--rounds must be at least 4, got {args.rounds}")
    if args.clock == "thread" and args.threads != 1:
        raise SystemExit("--clock thread measures one thread only; use --threads 1 or --clock wall")
    torch.set_num_threads(args.threads)
    methods = ["base"] + [m for m in args.methods if m != "base"]
    foreach = {"default": None, "on": True, "off": False}[args.base_foreach]
    results: dict[str, Any] = {}
    for model_name in args.models:
        model, _, _ = build_model(model_name)
        n_tensors = len(list(model.parameters()))
        times = measure(model_name, methods, args.rounds, args.warmup, args.rho, foreach, args.seed, args.clock)
        results[model_name] = {"tensors": n_tensors, "methods": summarise(times)}

    header = (f"{'model':<6} {'tensors':>7} {'method':<26} {'median ms':>10} {'IQR ms':>15} {'t/(2 t_base)':>13} "
              f"{'paired':>7}")
    print(header)
    print("-" * len(header))
    for model_name, res in results.items():
        for m, s in res["methods"].items():
            ratio = "(base)" if m == "base" else f"{s['ratio']:.3f}"
            paired = "" if m == "base" else f"{s['paired_ratio']:.3f}"
            iqr = f"{s['q1_ms']:.2f}-{s['q3_ms']:.2f}"
            print(f"{model_name:<6} {res['tensors']:>7} {m:<26} {s['median_ms']:>10.2f} {iqr:>15} {ratio:>13} "
                  f"{paired:>7}")
    if args.out is not None:
        config = {"argv": ["python", "-m", "benchmarks", "perf", "sam", *(argv if argv is not None else sys.argv[1:])],
                  **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()}
        write_json(args.out, {"config": config, "results": results})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The machinery every reproduction shares: presets, resumable units of work, reports.

An :class:`Experiment` splits a paper's reproduction into *units* (one training run
of one method on one seed, say). Each unit's result is a JSON file written atomically
under ``OUT/NAME/units/``; a rerun with the same configuration skips the units already
there, so an interrupted run resumes where it stopped. When all units exist the
experiment's ``report`` turns them into ``report.md`` (plus figures) beside
``config.json`` (the resolved configuration and the command that produced it) and
``results.json`` (every unit's result in one file).
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import EXPERIMENTS
from benchmarks._io import read_json, write_json, write_text

logger = logging.getLogger("benchmarks")

PRESETS = ("smoke", "cpu", "paper")
T = TypeVar("T")

# Configuration keys that may change between a run and its resumption without
# invalidating the units already written.
VOLATILE_KEYS = frozenset({"device", "threads", "progress", "command", "started", "torch", "python", "host"})


@dataclass
class RunContext:
    """What a unit of work is told about the run it belongs to.

    Attributes:
        out_dir: The experiment's output folder (``OUT/NAME``); artifacts go below it.
        device: Where tensors should live (``torch.device``).
        seeds: The seeds of this run.
        preset: The preset name.
        show_progress: Whether to draw progress bars.
        rank: This process's rank under ``torchrun`` (0 otherwise).
        world_size: Number of processes under ``torchrun`` (1 otherwise).
    """

    out_dir: Path
    device: Any
    seeds: list[int]
    preset: str
    show_progress: bool = True
    rank: int = 0
    world_size: int = 1
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        """Whether this process writes results (rank 0)."""
        return self.rank == 0

    def path(self, *parts: str) -> Path:
        """A path below the output folder, its parent folders created."""
        p = self.out_dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def progress(
        self, iterable: Iterable[T], desc: str = "", total: int | None = None, leave: bool = False
    ) -> Iterable[T]:
        """Wrap ``iterable`` in a tqdm progress bar when progress is on (and on rank 0)."""
        if not (self.show_progress and self.is_main):
            return iterable
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return iterable
        return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True)


@dataclass(frozen=True)
class Experiment:
    """One paper's reproduction.

    Attributes:
        name: Command-line name (``python -m benchmarks NAME``).
        title: One-line description.
        presets: ``smoke`` / ``cpu`` / ``paper`` -> configuration dict (JSON-serialisable).
        default_seeds: Preset name -> number of seeds used when ``--seeds`` is not given.
        units: ``(config, seeds) -> [unit key, ...]`` in execution order. Keys are file-name safe.
        run_unit: ``(config, key, ctx) -> result dict`` (JSON-serialisable).
        report: ``(config, {key: result}, ctx) -> markdown``; may write figures with ``ctx.path``.
    """

    name: str
    title: str
    presets: Mapping[str, Mapping[str, Any]]
    default_seeds: Mapping[str, int]
    units: Callable[[dict[str, Any], list[int]], list[str]]
    run_unit: Callable[[dict[str, Any], str, RunContext], dict[str, Any]]
    report: Callable[[dict[str, Any], dict[str, dict[str, Any]], RunContext], str]


def tiered_units(
    grid: Mapping[str, Sequence[str]], seeds: Sequence[int], first: str, headline: Collection[str]
) -> list[str]:
    """Unit keys ``"{group}__{member}__seed{s}"`` ordered so that an interrupted run has the key cells.

    Tier 0 is the ``headline`` members of the ``first`` group for every seed, tier 1 the rest of that
    group, tier 2 every other group.
    """

    def tier(group: str, member: str) -> int:
        return 2 if group != first else (0 if member in headline else 1)

    return [
        f"{group}__{member}__seed{s}"
        for t in range(3)
        for s in seeds
        for group, members in grid.items()
        for member in members
        if tier(group, member) == t
    ]


def load_experiment(name: str) -> Experiment:
    """Import and return the registered experiment ``name``."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(sorted(EXPERIMENTS))}")
    module = importlib.import_module(EXPERIMENTS[name])
    return module.EXPERIMENT


def parse_seeds(spec: str | None, default: int) -> list[int]:
    """Parse ``--seeds``: ``"5"`` (seeds 0..4), ``"3-7"`` (inclusive range) or ``"0,4,9"``.

    Raises:
        ValueError: If the specification cannot be parsed or names no seed.
    """
    if spec is None or spec == "":
        return list(range(default))
    try:
        if "," in spec:
            seeds = [int(s) for s in spec.split(",") if s.strip()]
        elif "-" in spec.strip("-"):
            lo, hi = spec.split("-", 1)
            seeds = list(range(int(lo), int(hi) + 1))
        else:
            seeds = list(range(int(spec)))
    except ValueError as err:
        raise ValueError(f"--seeds must look like '5', '3-7' or '0,4,9', got {spec!r}") from err
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"--seeds must name at least one non-negative seed, got {spec!r}")
    return seeds


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """Parse ``--set key=value`` pairs; values are JSON literals when they parse, strings otherwise.

    Dotted keys (``model.width=64``) address nested dictionaries.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def resolve_config(exp: Experiment, preset: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The preset's configuration with ``overrides`` applied; unknown keys are an error."""
    if preset not in exp.presets:
        raise ValueError(f"--preset must be one of {', '.join(exp.presets)}, got {preset!r}")
    config = copy.deepcopy(dict(exp.presets[preset]))
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise ValueError(f"--set {dotted}: {p!r} is not a section of the {exp.name} configuration")
            node = node[p]
        if leaf not in node:
            known = ", ".join(sorted(node))
            raise ValueError(f"--set {dotted}: unknown key {leaf!r} for {exp.name}; known keys: {known}")
        node[leaf] = value
    return config


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in VOLATILE_KEYS}


def run_experiment(
    exp: Experiment,
    *,
    preset: str,
    out: Path,
    device: Any,
    seeds: list[int],
    overrides: Mapping[str, Any] | None = None,
    show_progress: bool = True,
    restart: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, dict[str, Any]]:
    """Run (or resume) every unit of ``exp`` and write its report.

    Returns:
        Unit key -> result.

    Raises:
        RuntimeError: If ``out`` holds a run of a different configuration (pass ``restart``
            or another ``--out`` to start afresh).
    """
    out_dir = Path(out) / exp.name
    config = resolve_config(exp, preset, overrides or {})
    meta = {
        "experiment": exp.name,
        "preset": preset,
        "seeds": seeds,
        "config": config,
    }
    volatile = {
        "device": str(device),
        "command": " ".join(shlex.quote(a) for a in [*_launcher(world_size), "-m", "benchmarks", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": _torch_version(),
        "python": platform.python_version(),
        "host": platform.machine(),
    }
    cfg_path = out_dir / "config.json"
    units_dir = out_dir / "units"
    if rank == 0:
        if cfg_path.exists() and not restart:
            previous = read_json(cfg_path)
            if _comparable(previous) != _comparable(meta):
                raise RuntimeError(
                    f"{out_dir} holds a run with a different configuration; pass --restart to discard it "
                    f"or --out to write elsewhere (previous command: {previous.get('command', '?')})"
                )
        if restart and units_dir.exists():
            for f in units_dir.glob("*.json"):
                f.unlink()
        write_json(cfg_path, {**meta, **volatile})
    _barrier(world_size)

    ctx = RunContext(out_dir, device, seeds, preset, show_progress, rank, world_size)
    keys = exp.units(config, seeds)
    if len(set(keys)) != len(keys):
        raise RuntimeError(f"{exp.name}: unit keys are not unique")
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    todo = [k for k in keys if not (units_dir / f"{k}.json").exists()]
    if len(todo) < len(keys):
        logger.info("%s: resuming, %d of %d units already done", exp.name, len(keys) - len(todo), len(keys))
    for key in ctx.progress(keys, desc=f"{exp.name} [{preset}]", total=len(keys), leave=True):
        unit_path = units_dir / f"{key}.json"
        if unit_path.exists():
            results[key] = read_json(unit_path)
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        result = exp.run_unit(config, key, ctx)
        # CPU seconds of this process are the unit's cost on a shared machine, where wall time is not.
        wall_s, cpu_s = round(time.perf_counter() - t0, 3), round(time.process_time() - c0, 3)
        result = {**result, "wall_s": wall_s, "cpu_s": cpu_s}
        if rank == 0:
            write_json(unit_path, result)
        results[key] = result
        _barrier(world_size)

    if rank == 0:
        write_json(out_dir / "results.json", results)
        report = exp.report(config, results, ctx)
        unit_wall = sum(float(r.get("wall_s", 0.0)) for r in results.values())
        footer = (
            f"\n\n---\nPreset `{preset}`, seeds {_seed_text(seeds)}; {len(keys)} units, "
            f"{unit_wall:.0f} s of unit wall time ({time.perf_counter() - started:.0f} s in this invocation).\n"
            f"Command: `{volatile['command']}`\n"
        )
        write_text(out_dir / "report.md", report + footer)
        logger.info("%s: report written to %s", exp.name, out_dir / "report.md")
    return results


def _launcher(world_size: int) -> list[str]:
    """How the recorded command starts: ``python``, or ``torchrun`` with the process layout it ran at."""
    if world_size <= 1:
        return ["python"]
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    nodes = ["--nnodes", str(world_size // per_node)] if per_node < world_size else []
    return ["torchrun", *nodes, "--nproc-per-node", str(per_node)]


def _seed_text(seeds: list[int]) -> str:
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def _torch_version() -> str:
    try:
        import torch

        return torch.__version__
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return "none"


def _barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def env_threads_default() -> None:
    """Default ``OMP_NUM_THREADS`` to 1 before torch is imported (one thread is far faster on shared CPUs)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

"""Helpers shared by the two-process tests: a free port, a gloo group, and spawned ranks with a deadline."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_gloo(rank: int, world: int, port: int, timeout_s: float = 120.0) -> None:
    """Join a gloo process group on 127.0.0.1:``port`` with one torch thread per rank."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))


def run_ranks(worker: Callable[..., Any], *args: Any, world: int = 2, timeout_s: float = 240.0) -> None:
    """Run ``worker(rank, world, port, *args)`` in ``world`` spawned processes; fail the test past the deadline.

    A worker that raises fails the test with its traceback (``mp.ProcessContext.join`` re-raises it).
    """
    ctx = mp.spawn(worker, args=(world, free_port(), *args), nprocs=world, join=False)
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {world} gloo workers did not finish within {timeout_s:.0f} s")

"""Two gloo processes holding halves of the data get the Hessian of the whole (smoothopt.hessian).

Reference: the same operator in one process holding all the data (no golden numbers).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from _gloo import init_gloo, run_ranks
from torch import nn
from torch.nn import functional as F

from smoothopt.hessian import HessianOperator, lanczos

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(30, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (30,), generator=g)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    init_gloo(rank, world, port)
    results = {}
    try:
        for engine in ("graph", "recompute"):
            results[engine] = _products(rank, engine)
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def _products(rank: int, engine: str) -> dict[str, torch.Tensor]:
    x, y = _data()
    # Uneven halves (13 and 17 samples) check the sample-count weighting across ranks.
    part = slice(0, 13) if rank == 0 else slice(13, 30)
    data = (x[part], y[part]) if engine == "graph" else [(x[part][:7], y[part][:7]), (x[part][7:], y[part][7:])]
    op = HessianOperator(_model(), F.cross_entropy, data, engine=engine)
    v = torch.randn(2, op.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    hv = op.matvec(v)
    top = lanczos(op, 1, max_steps=40, tol=1e-10, seed=0).top
    grouped = HessianOperator(_model(), F.cross_entropy, data, engine=engine, num_groups=3)
    hv_groups = grouped.matvec_grouped(v[:1].expand(3, -1, -1).contiguous())
    return {"hv": hv, "top": top, "hv_groups": hv_groups, "counts": grouped.counts}


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dist") / "rank0.pt")
    run_ranks(_worker, out, timeout_s=180)
    return torch.load(out)


@pytest.mark.parametrize("engine", ["graph", "recompute"])
def test_two_processes_equal_one_process_with_all_data(two_rank_results, engine):
    got = two_rank_results[engine]

    x, y = _data()
    op = HessianOperator(_model(), F.cross_entropy, (x, y), distributed=False)
    v = torch.randn(2, op.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(got["hv"], op.matvec(v), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got["top"], lanczos(op, 1, max_steps=40, tol=1e-10, seed=0).top, rtol=1e-9, atol=0.0)
    grouped = HessianOperator(_model(), F.cross_entropy, (x, y), num_groups=3, distributed=False)
    torch.testing.assert_close(got["counts"], grouped.counts)
    torch.testing.assert_close(got["hv_groups"], grouped.matvec_grouped(v[:1].expand(3, -1, -1).contiguous()),
                               rtol=1e-10, atol=1e-12)

"""Two gloo processes under DDP: PerturbedGD with one seed keeps the replicas identical.

Reference: the same training in one process on the concatenated data, with the same seed (the average of
the two ranks' gradients equals the gradient of the whole batch when the halves have equal size).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from _gloo import init_gloo, run_ranks
from torch import nn
from torch.nn import functional as F

from smoothopt.saddle import PerturbedGD

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STEPS = 5


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    # threshold inf: every due step perturbs, so the replicas would drift apart with different noise.
    opt = PerturbedGD(model.parameters(), torch.optim.SGD, radius=0.05, threshold=float("inf"), interval=2,
                      seed=11, lr=0.1)
    for _ in range(STEPS):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()], opt.num_perturbations


def _worker(rank: int, world: int, port: int, out: str) -> None:
    init_gloo(rank, world, port)
    try:
        x, y = _data()
        half = slice(0, 8) if rank == 0 else slice(8, 16)
        ddp = nn.parallel.DistributedDataParallel(_model())
        params, count = _train(ddp, x[half], y[half])
        gathered: list = [None, None]
        dist.all_gather_object(gathered, (params, count))
        if rank == 0:
            torch.save(gathered, out)
    finally:
        dist.destroy_process_group()


def test_replicas_stay_identical_and_match_one_process(tmp_path):
    out = str(tmp_path / "ranks.pt")
    run_ranks(_worker, out, timeout_s=120)
    (p0, n0), (p1, n1) = torch.load(out)
    assert n0 == n1 == 3  # steps 0, 2, 4
    for a, b in zip(p0, p1):
        assert torch.equal(a, b)
    x, y = _data()
    single, n = _train(_model(), x, y)
    assert n == 3
    for a, b in zip(p0, single):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

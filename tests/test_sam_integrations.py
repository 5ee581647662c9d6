"""SAM under DDP (gloo), in timm's factory, in a Lightning Trainer, and the multi-tensor operation count."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import torch
import torch.distributed as dist
from _gloo import init_gloo, run_ranks
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from smoothopt.sam import SAM, freeze_norm_stats, per_replica_first_pass


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def _data(steps=3, batch=8):
    gen = torch.Generator().manual_seed(5)
    return [(torch.randn(batch, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (batch,), generator=gen))
            for _ in range(steps)]


def _sam_steps(model, sam, batches, no_sync_first=False):
    for x, y in batches:
        sam.zero_grad()
        if no_sync_first:
            with per_replica_first_pass(model, sam):
                nn.functional.cross_entropy(model(x), y).backward()
        else:
            nn.functional.cross_entropy(model(x), y).backward()
        sam.first_step(zero_grad=True)
        nn.functional.cross_entropy(model(x), y).backward()
        sam.step()


def _ddp_worker(rank, world, port, out):
    init_gloo(rank, world, port)
    try:
        for no_sync_first in (False, True):
            model = nn.parallel.DistributedDataParallel(_net())
            sam = SAM(model.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, momentum=0.9)
            half = [(x[rank::world], y[rank::world]) for x, y in _data()]
            _sam_steps(model, sam, half, no_sync_first)
            params = [p.detach() for p in model.module.parameters()]
            torch.save(params, os.path.join(out, f"rank{rank}_{no_sync_first}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_two_processes_against_one(tmp_path):
    run_ranks(_ddp_worker, str(tmp_path), timeout_s=300)
    single = _net()
    sam = SAM(single.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, momentum=0.9)
    _sam_steps(single, sam, _data())
    for no_sync_first in (False, True):
        ranks = [torch.load(tmp_path / f"rank{r}_{no_sync_first}.pt") for r in range(2)]
        for a, b in zip(*ranks):
            assert torch.equal(a, b)  # replicas stay identical in both modes
        close = all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(ranks[0], single.parameters()))
        # synchronised first pass == one process on the combined batch (float64, tolerance 1e-10);
        # per-replica perturbations (m-sharpness with m = batch / 2) give a different update
        assert close is (not no_sync_first)


def test_timm_factory_builds_sam():
    timm = pytest.importorskip("timm")
    from smoothopt.sam.integrations import TIMM_NAMES, register_timm

    assert register_timm() == list(TIMM_NAMES)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    sam = timm.optim.create_optimizer_v2(model, "sam", lr=0.1, weight_decay=1e-4, rho=0.2)
    assert isinstance(sam, SAM) and isinstance(sam.base_optimizer, torch.optim.SGD)
    assert sam.param_groups is sam.base_optimizer.param_groups
    assert sorted(g["weight_decay"] for g in sam.param_groups) == [0.0, 1e-4]  # timm's no-decay group for 1-d
    assert all(g["rho"] == 0.2 and g["momentum"] == 0.9 and g["lr"] == 0.1 for g in sam.param_groups)
    adamw = timm.optim.create_optimizer_v2(model, "samadamw", lr=1e-3, rho=0.1, adaptive=True, eta=0.0)
    assert isinstance(adamw.base_optimizer, torch.optim.AdamW) and adamw.param_groups[0]["adaptive"] is True
    asam = timm.optim.create_optimizer_v2(model, "asam", lr=0.1)
    assert asam.param_groups[0]["adaptive"] is True
    assert {"sam", "samadamw", "asam", "gsam", "looksam"} <= set(timm.optim.list_optimizers())
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))

    def closure():
        sam.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    assert torch.isfinite(sam.step(closure)) and sam.sam_steps == 1


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_lightning_trainer_fit(recwarn, precision):
    pl = pytest.importorskip("lightning.pytorch")
    calls = Counter()

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))

        def training_step(self, batch, batch_idx):
            x, y = batch
            sam = self.optimizers().optimizer
            calls["perturbed" if sam.is_perturbed else "clean"] += 1
            if sam.is_perturbed:
                with freeze_norm_stats(self.net):
                    return nn.functional.cross_entropy(self.net(x), y)
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            sam = SAM(self.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
            sched = torch.optim.lr_scheduler.StepLR(sam, 1, gamma=0.5)
            return {"optimizer": sam, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4, generator=gen), torch.randint(0, 2, (32,), generator=gen))
    module = Module()
    w0 = [p.detach().clone() for p in module.parameters()]
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", precision=precision, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    sam = trainer.optimizers[0]
    assert sam.sam_steps == 3 and calls == Counter(clean=3, perturbed=3)
    assert int(module.net[1].num_batches_tracked) == 3  # only the clean passes counted
    assert sam.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)  # the per-step scheduler reached the base
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]
    changed = [not torch.equal(p, w) for p, w in zip(module.parameters(), w0)]
    # the bias before BatchNorm has zero gradient in float32 (only rounding noise under bf16 autocast)
    assert changed[0] and all(changed[2:]) and (changed[1] is False or precision == "bf16-mixed")


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _count_sam_ops(n_tensors, adaptive):
    gen = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.randn(3, 2, generator=gen)) for _ in range(n_tensors)]
    sam = SAM(params, torch.optim.SGD, rho=0.1, adaptive=adaptive, lr=0.1, momentum=0.9, foreach=True)
    counts = []
    for _ in range(2):  # the first step allocates buffers tensor by tensor; count the second
        for p in params:
            p.grad = torch.randn(3, 2, generator=gen)
        with _CountOps() as ascent:
            sam.first_step()
        for p in params:
            p.grad = torch.randn(3, 2, generator=gen)
        with _CountOps() as descent:
            sam.step()  # restore + SGD(foreach=True)
        counts = [ascent.count, descent.count]
    return counts


@pytest.mark.parametrize("adaptive", [False, True])
def test_operation_count_does_not_grow_with_tensor_count(adaptive):
    few, many = _count_sam_ops(10, adaptive), _count_sam_ops(100, adaptive)
    assert few == many
    assert few[0] <= 25  # a handful of multi-tensor kernels, against ~7 ops per tensor in a Python loop

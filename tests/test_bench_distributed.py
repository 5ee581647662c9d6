"""The harness's distributed side: sharding, DDP training and gathered sampling on two gloo processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _gloo import free_port, init_gloo, run_ranks

from benchmarks._dist import gather_objects, shard_indices

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("n,world", [(10, 2), (7, 3), (1, 2), (0, 4)])
def test_shards_partition_the_indices(n, world):
    shards = [shard_indices(n, r, world) for r in range(world)]
    assert sorted(torch.cat(shards).tolist()) == list(range(n))
    sizes = [s.numel() for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_single_process_helpers_degrade():
    assert gather_objects({"a": 1}) == [{"a": 1}]
    assert shard_indices(5).tolist() == [0, 1, 2, 3, 4]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    init_gloo(rank, world, port)
    try:
        from benchmarks.hallucination.data import grid_2d
        from benchmarks.hallucination.diffusion import LinearSchedule
        from benchmarks.hallucination.experiments import make_tracker
        from benchmarks.hallucination.models import ToyDenoiser
        from benchmarks.hallucination.train import sample_scored, train_denoiser

        torch.manual_seed(0)  # the same initial weights on every rank, as DDP expects
        model = ToyDenoiser(2, width=16)
        schedule = LinearSchedule()
        data = grid_2d(64, seed=0).x
        train_denoiser(model, data, schedule, steps=5, batch_size=16, lr=1e-2, lr_final=1e-3, seed=0,
                       device=torch.device("cpu"))
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        x, scores = sample_scored(model, schedule, 9, (2,), make_observers=lambda: {"K3": make_tracker("K3")},
                                  seed=1, device=torch.device("cpu"), start=20, batch_size=2)
        everything = gather_objects({"params": flat, "x": x, "scores": scores["K3"], "rank": rank})
        if rank == 0:
            torch.save(everything, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_ddp_training_keeps_ranks_in_step_and_sampling_gathers(tmp_path):
    out = tmp_path / "gathered.pt"
    run_ranks(_worker, str(out), timeout_s=240)
    a, b = torch.load(out, weights_only=False)
    assert [a["rank"], b["rank"]] == [0, 1]
    # DDP averaged the gradients, so both ranks hold the same weights after training.
    torch.testing.assert_close(a["params"], b["params"], rtol=0, atol=0)
    # Nine samples split 5 + 4 over the ranks, gathered on both in the same order.
    assert a["x"].shape == (9, 2) and a["scores"].shape == (9,)
    torch.testing.assert_close(a["x"], b["x"], rtol=0, atol=0)
    assert not torch.equal(a["x"][0], a["x"][5])  # the ranks drew different noise


@pytest.mark.slow
@pytest.mark.distributed
def test_smoke_preset_under_torchrun(tmp_path):
    """``torchrun --nproc-per-node 2 -m benchmarks hallucination --preset smoke --device cpu`` on gloo."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "benchmarks", "hallucination", "--preset", "smoke", "--device", "cpu", "--out", str(tmp_path),
           "--no-progress", "--set", "shapes.enabled=false", "--set", "recursive_digits.enabled=false"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "hallucination"
    results = json.loads((out / "results.json").read_text())
    from benchmarks.hallucination import EXPERIMENT

    cfg = EXPERIMENT.presets["smoke"]
    expected = [k for k in EXPERIMENT.units(cfg, [0]) if not k.startswith(("shapes", "recursive_digits"))]
    assert sorted(results) == sorted(expected)
    # Each unit's samples were drawn half on each rank and gathered on rank 0.
    assert results["grid_s0"]["n_samples"] == cfg["grid"]["samples"]
    samples = torch.load(out / results["grid_s0"]["samples_file"], weights_only=False)
    assert samples["x"].shape == (cfg["grid"]["samples"], 2)
    rec = results["recursive_grid_variance_s0"]["generations"]
    assert [g["generation"] for g in rec] == [1, 2]
    assert (out / "report.md").read_text().startswith("# Mode interpolation")
    command = json.loads((out / "config.json").read_text())["command"]
    assert command.startswith("torchrun --nproc-per-node 2 -m benchmarks hallucination --preset smoke")


@pytest.mark.parametrize("n,rank,world", [(-1, 0, 1), (5, 2, 2), (5, -1, 2), (5, 0, 0)])
def test_shard_indices_rejects_bad_arguments(n, rank, world):
    with pytest.raises(ValueError):
        shard_indices(n, rank, world)


@pytest.mark.parametrize("world,local,expected", [
    (1, None, ["python"]),
    (2, None, ["torchrun", "--nproc-per-node", "2"]),
    (8, "4", ["torchrun", "--nnodes", "2", "--nproc-per-node", "4"]),
])
def test_recorded_command_names_the_launcher(monkeypatch, world, local, expected):
    from benchmarks._harness import _launcher

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    if local is not None:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    assert _launcher(world) == expected

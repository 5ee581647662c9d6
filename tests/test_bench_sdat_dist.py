"""The SDAT and S3VAADA training loops under torch.distributed (2 gloo processes on 127.0.0.1).

Each rank draws its own batches; DDP keeps the weights in step, the accuracy is summed over the
ranks' shards, and S3VAADA labels rank 0's picks everywhere. So both ranks must report the same
accuracies and labelled sets.
"""

import json

import pytest
from _gloo import init_gloo, run_ranks

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    init_gloo(rank, world, port)
    try:
        from pathlib import Path

        from benchmarks._harness import RunContext
        from benchmarks.s3vaada import PRESETS as S3_PRESETS
        from benchmarks.s3vaada.train import run_active
        from benchmarks.sdat import PRESETS as SDAT_PRESETS
        from benchmarks.sdat.train import train_method

        ctx = RunContext(Path(out), "cpu", [0], "smoke", show_progress=False, rank=rank, world_size=world)
        sdat_cfg = {**SDAT_PRESETS["smoke"], "iterations": 4}
        res = {m: train_method(sdat_cfg, "rot30", m, 0, ctx) for m in ("cdan_mcc_sdat", "dann_sam")}
        s3_cfg = {**S3_PRESETS["smoke"], "init_iterations": 3, "round_iterations": 2}
        res["s3"] = run_active(s3_cfg, "vaada", "s3", 0, ctx)
        Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    finally:
        dist.destroy_process_group()


def test_training_loops_agree_across_two_ranks(tmp_path):
    run_ranks(_worker, str(tmp_path), timeout_s=240)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    for m in ("cdan_mcc_sdat", "dann_sam"):
        for k in ("test_acc", "source_acc", "target_pool_acc"):
            assert r0[m][k] == r1[m][k], (m, k)
    assert r0["s3"]["test_acc"] == r1["s3"]["test_acc"]
    assert r0["s3"]["label_counts"] == r1["s3"]["label_counts"]

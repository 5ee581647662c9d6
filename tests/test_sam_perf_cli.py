"""The SAM micro-benchmark's command line and its per-tensor reference loop (no timings are checked here)."""

from __future__ import annotations

import json

import torch

from benchmarks.perf import sam as perf_sam


def test_reference_loop_matches_smoothopt_sam():
    # the benchmark compares costs, so its three SAM implementations must compute the same update
    steps = {m: perf_sam.make_step(m, "mlp", rho=0.05, foreach=None)
             for m in ("smoothopt", "loop", "pytorch_optimizer")}
    for step, _ in steps.values():
        for _ in range(3):
            step()
    params = {m: model for m, (_, model) in steps.items()}
    for m in ("loop", "pytorch_optimizer"):
        for p, q in zip(params["smoothopt"].parameters(), params[m].parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)  # float32; only the norm's summation differs


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "perf.json"
    rc = perf_sam.main(["--models", "mlp", "--methods", "smoothopt", "loop", "--rounds", "4", "--warmup", "0",
                        "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["config"]["rounds"] == 4 and data["results"]["mlp"]["tensors"] == 200
    assert set(data["results"]["mlp"]["methods"]) == {"base", "smoothopt", "loop"}
    assert "t/(2 t_base)" in capsys.readouterr().out

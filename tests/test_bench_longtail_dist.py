"""The long-tail training loop under two gloo processes: ranks stay in step and agree on the result."""

import json

import pytest
import torch
import torch.distributed as dist
from _gloo import init_gloo, run_ranks


def _worker(rank: int, world: int, port: int, out: str) -> None:
    init_gloo(rank, world, port)
    try:
        from benchmarks.longtail.grid import PRESETS, get_data
        from benchmarks.longtail.train import Method, train_one

        config = json.loads(json.dumps(PRESETS["smoke"]))
        config["train"]["epochs"] = 2
        method = Method.from_config("ldam_drw_sam", config["methods"]["ldam_drw_sam"])
        saved = {}
        result = train_one(config, method, get_data(config), seed=0, device=torch.device("cpu"),
                           checkpoint=lambda tag, m: saved.update({tag: [p.detach().clone() for p in m.parameters()]}))
        torch.save({"result": result, "params": saved["final"]}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_gloo_ranks_agree(tmp_path):
    run_ranks(_worker, str(tmp_path), timeout_s=180)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    for pa, pb in zip(a["params"], b["params"]):
        assert torch.equal(pa, pb)  # DDP averages the gradients, so the replicas never drift apart
    assert a["result"]["per_class"] == b["result"]["per_class"]
    assert a["result"]["final_train_loss"] == pytest.approx(b["result"]["final_train_loss"], abs=0)

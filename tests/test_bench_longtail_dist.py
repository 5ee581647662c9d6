"""The long-tail training loop under two gloo processes: ranks stay in step and agree on the result."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
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
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
        if p.is_alive():
            p.kill()
            pytest.fail("a rank did not finish within 180 s")
        assert p.exitcode == 0
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    for pa, pb in zip(a["params"], b["params"]):
        assert torch.equal(pa, pb)  # DDP averages the gradients, so the replicas never drift apart
    assert a["result"]["per_class"] == b["result"]["per_class"]
    assert a["result"]["final_train_loss"] == pytest.approx(b["result"]["final_train_loss"], abs=0)

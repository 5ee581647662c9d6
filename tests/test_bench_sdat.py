"""SDAT reproduction: the shared domain-adaptation data, and the smoke preset end to end."""

import json

import pytest
import torch

from benchmarks._harness import run_experiment
from benchmarks.sdat import EXPERIMENT, METHODS, PRESETS
from benchmarks.sdat.data import forever, in_order, labels_of, make_digits_task, make_task, rotate_images
from benchmarks.sdat.report import comparisons


def test_rotation_by_zero_is_identity_and_by_90_is_a_quarter_turn():
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rotate_images(x, 0.0), x)
    # anticlockwise quarter turn == torch.rot90(k=1) over (H, W); bilinear sampling lands exactly
    # on pixel centres, so the match is exact up to float rounding
    torch.testing.assert_close(rotate_images(x, 90.0), torch.rot90(x, 1, dims=(2, 3)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", [0, 3])
def test_digits_task_split_is_disjoint_stratified_and_deterministic(seed):
    a = make_digits_task(seed, 30.0, 0.2)
    b = make_digits_task(seed, 30.0, 0.2)
    for da, db in [(a.source, b.source), (a.target, b.target), (a.test, b.test)]:
        assert all(torch.equal(ta, tb) for ta, tb in zip(da.tensors, db.tensors))
    n_src, n_tgt, n_test = len(a.source), len(a.target), len(a.test)
    assert n_src + n_tgt + n_test == 1797  # every digit used exactly once
    assert n_src == 901  # ceil of each class's half
    # a third of each target class held out: 896 target digits -> 298 held out
    assert n_test == 298 and n_tgt == 598
    counts_test = torch.bincount(labels_of(a.test), minlength=10)
    counts_pool = torch.bincount(labels_of(a.target), minlength=10)
    assert torch.all((counts_test.double() / (counts_test + counts_pool) - 1 / 3).abs() < 0.02)
    assert a.target is a.target_eval  # in-memory digits: one dataset for training and scoring
    c = make_digits_task(seed + 1, 30.0, 0.2)
    assert not torch.equal(a.test.tensors[0], c.test.tensors[0])


def test_target_is_rotated_and_noisy():
    clean = make_digits_task(0, 30.0, 0.0)
    noisy = make_digits_task(0, 30.0, 0.2)
    diff = noisy.test.tensors[0] - clean.test.tensors[0]
    assert diff.std().item() == pytest.approx(0.2, rel=0.05)  # the added pixel noise
    assert torch.equal(noisy.source.tensors[0], clean.source.tensors[0])  # source untouched
    assert clean.source.tensors[0].min() >= 0 and clean.source.tensors[0].max() <= 1


@pytest.mark.parametrize("bad", [{"noise": -0.1}, {"test_fraction": 1.0}])
def test_digits_task_rejects_bad_arguments(bad):
    args = {"seed": 0, "degrees": 30.0, "noise": 0.1, "test_fraction": 1 / 3, **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        make_digits_task(**args)


def test_make_task_needs_a_root_for_folders():
    with pytest.raises(ValueError, match="data.root"):
        make_task({"kind": "folder", "root": None, "test_fraction": 0.3}, 0)
    with pytest.raises(ValueError, match="data.kind"):
        make_task({"kind": "mnist"}, 0)


def test_forever_covers_each_pass_once_and_in_order_keeps_order():
    ds = make_digits_task(0, 20.0, 0.1).test
    n = len(ds)
    it = forever(ds, 32, torch.Generator().manual_seed(1))
    seen = torch.cat([next(it)[1] for _ in range(n // 32)])
    assert seen.numel() == (n // 32) * 32
    # one pass draws without replacement: label counts never exceed the dataset's
    assert torch.all(torch.bincount(seen, minlength=10) <= torch.bincount(labels_of(ds), minlength=10))
    ordered = torch.cat([y for _, y in in_order(ds, 50)])
    assert torch.equal(ordered, labels_of(ds))


def test_units_cover_the_grid_and_reject_unknown_methods():
    cfg = PRESETS["cpu"]
    keys = EXPERIMENT.units(cfg, list(range(10)))
    assert len(keys) == 10 * (len(METHODS) + 2)
    assert {k.split("__")[1] for k in keys if k.startswith("rot30")} == set(METHODS)
    with pytest.raises(ValueError, match="unknown methods"):
        EXPERIMENT.units({**cfg, "grid": {"rot30": ["adam"]}}, [0])


def test_smoke_preset_end_to_end(tmp_path):
    results = run_experiment(EXPERIMENT, preset="smoke", out=tmp_path, device="cpu", seeds=[0, 1],
                             show_progress=False)
    assert len(results) == 2 * len(METHODS)
    for r in results.values():
        assert 0.0 <= r["test_acc"] <= 100.0 and 0.0 <= r["source_acc"] <= 100.0
    sdat_runs = [r for k, r in results.items() if "_sdat" in k or "dann_sam" in k]
    assert all(r["rho"] == PRESETS["smoke"]["rho"]["rot30"] for r in sdat_runs)
    out = tmp_path / "sdat"
    report = (out / "report.md").read_text()
    assert "DANN+SDAT vs DANN" in report and "CDAN+SDAT vs CDAN" in report
    assert "DANN+SDAT vs SAM on the whole DANN objective" in report
    assert (out / "figures" / "paired_differences.png").stat().st_size > 1000
    assert json.loads((out / "config.json").read_text())["config"]["iterations"] == PRESETS["smoke"]["iterations"]
    comps = comparisons(results)
    assert {(a, b) for _, a, b, _, _ in comps} >= {("dann_sdat", "dann"), ("cdan_sdat", "cdan")}

    # an interrupted run still gets a report, from the units it has, marked partial
    from benchmarks.sdat.partial import main as partial_main

    (out / "units" / "rot30__cdan__seed1.json").unlink()
    assert partial_main([str(out)]) == 0
    partial = (out / "report.md").read_text()
    assert f"PARTIAL: {2 * len(METHODS) - 1} of {2 * len(METHODS)} units" in partial
    assert "CDAN+SDAT vs CDAN" not in partial  # one shared seed is too few for a paired comparison


def test_same_seed_same_result(tmp_path):
    from benchmarks._harness import RunContext
    from benchmarks.sdat.train import train_method

    cfg = {**PRESETS["smoke"], "iterations": 5}
    ctx = RunContext(tmp_path, "cpu", [0], "smoke", show_progress=False)
    a = train_method(cfg, "rot30", "cdan_mcc_sdat", 4, ctx)
    b = train_method(cfg, "rot30", "cdan_mcc_sdat", 4, ctx)
    assert a == b

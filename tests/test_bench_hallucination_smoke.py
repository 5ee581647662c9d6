"""The hallucination reproduction end to end at the smoke preset: units, results, report, resumption."""

import json

import pytest
import torch

from benchmarks._harness import run_experiment
from benchmarks.hallucination import EXPERIMENT


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    results = run_experiment(EXPERIMENT, preset="smoke", out=out, device=torch.device("cpu"), seeds=[0],
                             show_progress=False)
    return out / "hallucination", results


def test_every_unit_has_a_result_and_the_report_its_figures(smoke_run):
    out, results = smoke_run
    cfg = EXPERIMENT.presets["smoke"]
    assert sorted(results) == sorted(EXPERIMENT.units(cfg, [0]))
    report = (out / "report.md").read_text()
    assert "Training-set size" in report and "Mode distance" in report and "## Cost" in report
    for fig in ("fig_1d_samples.png", "fig_score_histograms.png", "fig_grid_samples.png", "fig_recursive.png",
                "fig_shapes_samples.png"):
        assert fig in report and (out / fig).stat().st_size > 0
    assert json.loads((out / "results.json").read_text()).keys() == results.keys()
    assert len(list((out / "shapes_data" / "s0").glob("*.png"))) == cfg["shapes"]["write_png"]


def test_results_are_consistent(smoke_run):
    _, results = smoke_run
    cfg = EXPERIMENT.presets["smoke"]
    r = results["oned_m123_n400_r0_s0"]
    assert r["n_samples"] == cfg["oned"]["samples"]
    six, four = r["out_of_support"]["6sigma"], r["out_of_support"]["4sigma"]
    assert four["count"] >= six["count"]  # 4 sigma flags a superset of 6 sigma
    assert set(six["detection"]) == set(cfg["windows"])
    gap_total = sum(g["fraction"] for g in r["gaps"])
    assert gap_total <= six["fraction"] + 1e-9  # gap samples beyond 6 sigma are out of support
    for g in r["gaps"]:  # normalised by the weight of the gap's two neighbouring modes (2 of 3)
        assert g["per_neighbour_mass"] == pytest.approx(g["fraction"] * 3 / 2)
    assert r["seed"] == 0 and results["oned_m123_n400_r1_s0"]["seed"] == 1
    g = results["grid_s0"]
    # The grid's window is chosen on a separate draw and is one of the swept windows.
    assert g["primary_window"] in cfg["windows"] and g["selection"]["n_samples"] == cfg["grid"]["select_samples"]
    assert any(name.startswith("cache/grid_s0_select-") for name in g["cost"])
    assert all(c["cpu_s"] > 0 for c in g["cost"].values())
    for which in ("grid", "digits"):
        for arm in ("variance", "random"):
            gens = results[f"recursive_{which}_{arm}_s0"]["generations"]
            assert [g["generation"] for g in gens] == list(range(1, cfg[f"recursive_{which}"]["generations"] + 1))
        # Generation 1 is the same model for both arms (trained on the real data).
        v, rnd = (results[f"recursive_{which}_{a}_s0"]["generations"][0] for a in ("variance", "random"))
        assert v["final_loss"] == rnd["final_loss"]
    sh = results["shapes_s0"]
    assert 0.0 <= sh["hallucinated"]["fraction"] <= 1.0 and sh["n_samples"] == cfg["shapes"]["samples"]


def test_rerun_resumes_and_reuses_checkpoints(smoke_run):
    out, results = smoke_run
    (out / "units" / "grid_s0.json").unlink()
    again = run_experiment(EXPERIMENT, preset="smoke", out=out.parent, device=torch.device("cpu"), seeds=[0],
                           show_progress=False)
    assert again["grid_s0"]["train"]["resumed"] is True  # weights came from the checkpoint
    assert again["grid_s0"]["train"]["final_loss"] == results["grid_s0"]["train"]["final_loss"]
    assert again["grid_s0"]["cost"] == results["grid_s0"]["cost"]  # recorded costs travel with the files
    assert again["oned_m123_n100_r0_s0"] == results["oned_m123_n100_r0_s0"]  # read back, not rerun
    with pytest.raises(RuntimeError, match="different configuration"):
        run_experiment(EXPERIMENT, preset="smoke", out=out.parent, device=torch.device("cpu"), seeds=[0],
                       show_progress=False, overrides={"grid.steps": 3})

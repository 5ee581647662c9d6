"""S3VAADA reproduction: selection wiring, the shared starting point, and the smoke preset end to end."""

import pytest
import torch

from benchmarks._harness import RunContext, run_experiment
from benchmarks.s3vaada import EXPERIMENT, PRESETS, STRATEGIES
from benchmarks.s3vaada.report import comparisons
from benchmarks.s3vaada.train import choose
from benchmarks.sdat.common import predict
from benchmarks.sdat.data import make_digits_task
from benchmarks.sdat.train import build_classifier


@pytest.fixture(scope="module")
def task():
    return make_digits_task(0, 20.0, 0.1)


@pytest.fixture(scope="module")
def model(task):
    torch.manual_seed(0)
    return build_classifier(PRESETS["smoke"], task.num_classes).eval()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_choose_picks_distinct_unlabelled_examples(task, model, strategy):
    unlabelled = torch.arange(0, len(task.target), 2)  # every other example is still unlabelled
    g = torch.Generator().manual_seed(5)
    picks = choose(strategy, model, task, unlabelled, 7, PRESETS["smoke"], g, torch.device("cpu"))
    assert picks.shape == (7,)
    assert picks.unique().numel() == 7
    assert torch.isin(picks, unlabelled).all()


def test_entropy_strategy_takes_the_most_uncertain(task, model):
    unlabelled = torch.arange(len(task.target))
    picks = choose("entropy", model, task, unlabelled, 5, PRESETS["smoke"], torch.Generator(), torch.device("cpu"))
    p = predict(model, task.target, torch.device("cpu")).double()
    h = -(p * p.clamp_min(1e-12).log()).sum(1)
    assert set(picks.tolist()) == set(h.topk(5).indices.tolist())


def test_random_strategy_follows_its_generator(task, model):
    unlabelled = torch.arange(len(task.target))
    args = (model, task, unlabelled, 6, PRESETS["smoke"])
    a = choose("random", *args, torch.Generator().manual_seed(1), torch.device("cpu"))
    b = choose("random", *args, torch.Generator().manual_seed(1), torch.device("cpu"))
    c = choose("random", *args, torch.Generator().manual_seed(2), torch.device("cpu"))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_units_validate_the_grid():
    keys = EXPERIMENT.units(PRESETS["cpu"], [0, 1])
    assert len(keys) == 2 * (len(STRATEGIES) + len(PRESETS["cpu"]["grid"]["dann"]))
    with pytest.raises(ValueError, match="unknown trainer"):
        EXPERIMENT.units({**PRESETS["cpu"], "grid": {"adam": ["random"]}}, [0])
    with pytest.raises(ValueError, match="unknown strategies"):
        EXPERIMENT.units({**PRESETS["cpu"], "grid": {"vaada": ["badge"]}}, [0])


def test_smoke_preset_end_to_end(tmp_path):
    results = run_experiment(EXPERIMENT, preset="smoke", out=tmp_path, device="cpu", seeds=[0, 1],
                             show_progress=False)
    cfg = PRESETS["smoke"]
    rounds, per_round = cfg["rounds"], cfg["budget_per_round"]
    for key, r in results.items():
        assert r["budgets"] == [per_round * i for i in range(rounds + 1)], key
        assert sum(r["label_counts"]) == per_round * rounds  # no example labelled twice
        assert all(0.0 <= a <= 100.0 for a in r["test_acc"])
    # every strategy of a (trainer, seed) starts from the same adapted model: paired at budget 0
    for trainer in cfg["grid"]:
        for seed in (0, 1):
            start = {results[f"{trainer}__{s}__seed{seed}"]["test_acc"][0] for s in cfg["grid"][trainer]}
            assert len(start) == 1
    out = tmp_path / "s3vaada"
    report = (out / "report.md").read_text()
    assert "vaada: S3 (as published) vs random" in report and "vaada: S3 (as published) vs entropy" in report
    assert (out / "figures" / "accuracy_vs_budget.png").stat().st_size > 1000
    assert (out / "figures" / "paired_differences.png").stat().st_size > 1000
    assert {(t, a, b) for t, a, b, *_ in comparisons(results)} >= {("vaada", "s3", "random"), ("dann", "s3", "random")}


def test_budget_larger_than_pool_is_refused(tmp_path):
    from benchmarks.s3vaada.train import run_active

    cfg = {**PRESETS["smoke"], "budget_per_round": 400}
    with pytest.raises(ValueError, match="exceed the target pool"):
        run_active(cfg, "dann", "random", 0, RunContext(tmp_path, "cpu", [0], "smoke", show_progress=False))

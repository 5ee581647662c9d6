"""The reproduction harness: presets, overrides, resumable units, atomic results."""

import json

import pytest

from benchmarks import _harness
from benchmarks._harness import Experiment, parse_overrides, parse_seeds, resolve_config, run_experiment
from benchmarks._io import write_json
from benchmarks._stats import paired_comparison

CALLS: list[str] = []


def _units(config, seeds):
    return [f"m{m}_seed{s}" for m in range(config["methods"]) for s in seeds]


def _run_unit(config, key, ctx):
    CALLS.append(key)
    if config.get("fail_on") == key:
        raise KeyboardInterrupt  # an interruption half way through
    return {"key": key, "value": len(key) * config["scale"]}


def _report(config, results, ctx):
    return f"# toy\n{len(results)} units\n"


TOY = Experiment(
    name="toy",
    title="a toy experiment",
    presets={"smoke": {"methods": 2, "scale": 1, "fail_on": None}, "cpu": {"methods": 3, "scale": 2, "fail_on": None}},
    default_seeds={"smoke": 2, "cpu": 3},
    units=_units,
    run_unit=_run_unit,
    report=_report,
)


def _run(tmp_path, **kw):
    args = dict(preset="smoke", out=tmp_path, device="cpu", seeds=[0, 1], show_progress=False)
    args.update(kw)
    return run_experiment(TOY, **args)


def test_parse_seeds():
    assert parse_seeds(None, 3) == [0, 1, 2]
    assert parse_seeds("4", 3) == [0, 1, 2, 3]
    assert parse_seeds("3-5", 3) == [3, 4, 5]
    assert parse_seeds("0,4,9", 3) == [0, 4, 9]
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds("a-b", 3)
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds("0", 3)


def test_overrides_are_json_and_checked():
    assert parse_overrides(["scale=3", "name=abc", "lst=[1,2]"]) == {"scale": 3, "name": "abc", "lst": [1, 2]}
    cfg = resolve_config(TOY, "smoke", {"scale": 5})
    assert cfg["scale"] == 5 and TOY.presets["smoke"]["scale"] == 1  # preset untouched
    with pytest.raises(ValueError, match="unknown key 'nope'"):
        resolve_config(TOY, "smoke", {"nope": 1})
    with pytest.raises(ValueError, match="--preset"):
        resolve_config(TOY, "paper", {})


def test_run_writes_config_units_results_report(tmp_path):
    CALLS.clear()
    results = _run(tmp_path)
    out = tmp_path / "toy"
    assert sorted(results) == sorted(_units({"methods": 2}, [0, 1]))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["preset"] == "smoke" and cfg["seeds"] == [0, 1] and cfg["config"]["scale"] == 1
    assert "command" in cfg
    assert len(list((out / "units").glob("*.json"))) == 4
    assert json.loads((out / "results.json").read_text()).keys() == results.keys()
    assert (out / "report.md").read_text().startswith("# toy")
    assert not list(out.rglob("*.tmp"))  # no stray temporaries from the atomic writes


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    CALLS.clear()
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, overrides={"fail_on": "m1_seed0"})
    assert CALLS == ["m0_seed0", "m0_seed1", "m1_seed0"]
    assert not (tmp_path / "toy" / "units" / "m1_seed0.json").exists()
    CALLS.clear()
    cfg_path = tmp_path / "toy" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["config"]["fail_on"] = None
    write_json(cfg_path, cfg)
    results = _run(tmp_path)
    assert CALLS == ["m1_seed0", "m1_seed1"]  # only the unfinished units ran
    assert len(results) == 4


def test_different_configuration_refuses_to_mix(tmp_path):
    _run(tmp_path)
    with pytest.raises(RuntimeError, match="different configuration"):
        _run(tmp_path, overrides={"scale": 7})
    CALLS.clear()
    _run(tmp_path, overrides={"scale": 7}, restart=True)
    assert len(CALLS) == 4


def test_paired_comparison_against_hand_values():
    c = paired_comparison([2.0, 3.0, 5.0], [1.0, 1.0, 1.0], n_boot=2000)
    assert c["mean_diff"] == pytest.approx(7 / 3)
    assert c["std_diff"] == pytest.approx(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) ** 0.5 / 2**0.5)
    assert c["wins"] == 3 and c["n"] == 3
    assert 1.0 <= c["ci_low"] <= c["ci_high"] <= 4.0
    # t = mean / (sd / sqrt(3)); scipy's t distribution gives the two-sided p value
    from scipy import stats

    t = c["mean_diff"] / (c["std_diff"] / 3**0.5)
    assert c["p_ttest"] == pytest.approx(2 * stats.t.sf(t, 2))
    with pytest.raises(ValueError, match="equal length"):
        paired_comparison([1.0, 2.0], [1.0])


def test_registry_names_modules():
    assert set(_harness.EXPERIMENTS) == {"hallucination", "longtail", "sdat", "s3vaada"}


def test_paired_t_treats_rounding_noise_as_constant():
    # Differences equal up to float rounding: a naive t statistic would be ~1e15 and p ~ 1e-30.
    a = [0.1 + 0.2, 0.3, 0.7 + 0.2, 0.9]
    b = [0.2, 0.2, 0.8, 0.8]
    c = paired_comparison(a, b, n_boot=100)
    assert c["p_ttest"] == 0.0  # a constant, non-zero difference: certain, not absurd
    c0 = paired_comparison([0.1 + 0.2, 0.3], [0.3, 0.1 + 0.2], n_boot=100)
    assert c0["p_ttest"] == 1.0


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os
    import stat

    write_json(tmp_path / "a.json", {"x": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~umask


def test_tiered_units_put_headline_cells_first():
    from benchmarks._harness import tiered_units

    grid = {"a": ["x", "y"], "b": ["x"]}
    keys = tiered_units(grid, [0, 1], first="a", headline={"y"})
    assert keys == ["a__y__seed0", "a__y__seed1", "a__x__seed0", "a__x__seed1", "b__x__seed0", "b__x__seed1"]


def test_units_record_cpu_and_wall_seconds(tmp_path):
    results = _run(tmp_path)
    assert all(r["cpu_s"] >= 0 and r["wall_s"] >= 0 for r in results.values())

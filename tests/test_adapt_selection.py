"""S3 selection: the set function's properties by brute force, lazy greedy, baselines and bad input."""

import itertools
import math

import pytest
import torch
from torch import nn

from smoothopt.adapt import (
    S3Objective,
    entropy_scores,
    greedy,
    lazy_greedy,
    margin_scores,
    s3_select,
    select,
    vat_sensitivity,
)


def _pool(n, c, seed, duplicates=False, sharp=2.0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(sharp * torch.randn(n, c, generator=g, dtype=torch.float64), dim=1)
    if duplicates:
        probs[n // 2] = probs[0]
        probs[n - 1] = probs[1]
    return probs, torch.rand(n, generator=g, dtype=torch.float64)


def _subsets(n):
    for k in range(n + 1):
        yield from itertools.combinations(range(n), k)


POOLS = [(n, c, seed, dup) for n, c, seed, dup in [(6, 3, 0, False), (8, 2, 1, True), (9, 4, 2, False),
                                                   (10, 3, 3, True), (10, 5, 4, False)]]


@pytest.mark.parametrize(("n", "c", "seed", "dup"), POOLS)
def test_set_function_is_monotone_and_submodular(n, c, seed, dup):
    probs, u = _pool(n, c, seed, dup)
    f = S3Objective(probs, u)
    value = {s: f.value(list(s)) for s in _subsets(n)}
    assert value[()] == 0.0
    tol = 1e-12  # float64 sums of at most 10 terms of size <= 1
    for s in value:
        rest = [i for i in range(n) if i not in s]
        for i in rest:
            gain_s = value[tuple(sorted(s + (i,)))] - value[s]
            assert gain_s >= -tol  # monotone
            for j in rest:
                if j == i:
                    continue
                t = tuple(sorted(s + (j,)))
                gain_t = value[tuple(sorted(t + (i,)))] - value[t]
                assert gain_s >= gain_t - tol  # diminishing returns: S subset of S + j


@pytest.mark.parametrize(("n", "c", "seed", "dup"), POOLS)
@pytest.mark.parametrize("budget", [1, 2, 3, 4])
def test_lazy_greedy_equals_greedy_and_beats_one_minus_one_over_e(n, c, seed, dup, budget):
    probs, u = _pool(n, c, seed, dup)
    f = S3Objective(probs, u)
    plain = greedy(f, budget)
    lazy = lazy_greedy(f, budget, batch=2)
    assert plain.indices.tolist() == lazy.indices.tolist()
    torch.testing.assert_close(plain.gains, lazy.gains, rtol=0, atol=0)
    # the gains add up to the set's value, so greedy tracks the same set function
    assert float(lazy.gains.sum()) == pytest.approx(f.value(lazy.indices), abs=1e-12)
    best = max(f.value(list(s)) for s in itertools.combinations(range(n), budget))
    assert f.value(lazy.indices) >= (1 - 1 / math.e) * best - 1e-12


def test_ties_go_to_the_lowest_index():
    probs = torch.full((5, 2), 0.5, dtype=torch.float64)  # all candidates identical
    u = torch.zeros(5, dtype=torch.float64)
    assert lazy_greedy(S3Objective(probs, u), 3).indices.tolist() == [0, 1, 2]
    assert select("entropy", probs, 2).indices.tolist() == [0, 1]
    assert select("margin", probs, 2).indices.tolist() == [0, 1]


@pytest.mark.parametrize("block_size", [1, 7, 1000])
def test_blockwise_similarity_gives_the_same_picks(block_size):
    probs, u = _pool(300, 6, 7)
    ref = lazy_greedy(S3Objective(probs, u, block_size=1000), 12)
    out = lazy_greedy(S3Objective(probs, u, block_size=block_size), 12)
    assert out.indices.tolist() == ref.indices.tolist()
    torch.testing.assert_close(out.gains, ref.gains, rtol=1e-12, atol=1e-12)


def test_s3_select_with_representative_subsample_and_uncertainty_kinds():
    probs, u = _pool(200, 5, 8)
    full = s3_select(probs, 10, uncertainty=u)
    sub = s3_select(probs, 10, uncertainty=u, num_representatives=50, generator=torch.Generator().manual_seed(0))
    again = s3_select(probs, 10, uncertainty=u, num_representatives=50, generator=torch.Generator().manual_seed(0))
    assert sub.indices.tolist() == again.indices.tolist()
    for sel in (full, sub, s3_select(probs, 10), s3_select(probs, 10, uncertainty="entropy")):
        assert sel.indices.unique().numel() == 10
    assert s3_select(probs, 0).indices.numel() == 0


def test_uncertainty_scores_golden():
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.6, 0.3, 0.1]], dtype=torch.float64)
    torch.testing.assert_close(margin_scores(probs), torch.tensor([0.0, 1.0, 0.7], dtype=torch.float64))
    # entropies by hand: 0, ln 2, -(0.6 ln 0.6 + 0.3 ln 0.3 + 0.1 ln 0.1) = 0.897945...
    expected = torch.tensor([0.0, math.log(2), -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1))],
                            dtype=torch.float64)
    torch.testing.assert_close(entropy_scores(probs), expected)


def test_one_hot_probabilities_do_not_produce_nan():
    probs = torch.eye(4, dtype=torch.float64).repeat(3, 1)  # exact zeros everywhere
    for strategy in ("s3", "entropy", "margin"):
        sel = select(strategy, probs, 4)
        assert torch.isfinite(sel.gains).all()
    # the diversity term spreads the picks over the four predicted classes
    assert sorted(probs[select("s3", probs, 4).indices].argmax(1).tolist()) == [0, 1, 2, 3]


def test_baselines():
    probs, _ = _pool(50, 4, 9)
    ent = select("entropy", probs, 5)
    assert ent.indices.tolist() == entropy_scores(probs).argsort(descending=True, stable=True)[:5].tolist()
    mar = select("margin", probs, 5)
    assert mar.indices.tolist() == margin_scores(probs).argsort(descending=True, stable=True)[:5].tolist()
    r1 = select("random", probs, 5, generator=torch.Generator().manual_seed(3))
    r2 = select("random", probs, 5, generator=torch.Generator().manual_seed(3))
    assert r1.indices.tolist() == r2.indices.tolist() and r1.indices.unique().numel() == 5


@pytest.mark.parametrize(
    ("probs", "budget", "kwargs", "error", "match"),
    [
        (torch.empty(0, 3), 0, {}, ValueError, "empty pool"),
        (torch.full((4, 2), 0.5), 5, {}, ValueError, "budget"),
        (torch.full((4, 2), 0.5), -1, {}, ValueError, "budget"),
        (torch.tensor([[0.5, float("nan")], [0.5, 0.5]]), 1, {}, ValueError, "NaN"),
        (torch.tensor([[0.9, 0.9], [0.5, 0.5]]), 1, {}, ValueError, "sum to 1"),
        (torch.tensor([[1.5, -0.5], [0.5, 0.5]]), 1, {}, ValueError, "non-negative"),
        (torch.full((4,), 0.25), 1, {}, ValueError, r"\(N, C\)"),
        (torch.full((4, 2), 0.5), 1, {"uncertainty": torch.ones(3)}, ValueError, r"shape \(4,\)"),
        (torch.full((4, 2), 0.5), 1, {"uncertainty": "bald"}, ValueError, "uncertainty"),
        (torch.full((4, 2), 0.5), 1, {"weights": (1.0, -1.0, 0.0)}, ValueError, "weights"),
        ([[0.5, 0.5]], 1, {}, TypeError, "torch.Tensor"),
    ],
)
def test_bad_input(probs, budget, kwargs, error, match):
    with pytest.raises(error, match=match):
        s3_select(probs, budget, **kwargs)


def test_select_rejects_unknown_strategy_and_stray_options():
    probs = torch.full((4, 2), 0.5)
    with pytest.raises(ValueError, match="strategy"):
        select("badge", probs, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no options"):
        select("margin", probs, 1, uncertainty="entropy")


def test_vat_sensitivity_shape_and_sign():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(10, 5)
    u = vat_sensitivity(model, x, restarts=2, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert u.shape == (10,) and u.dtype == torch.float64 and (u >= 0).all() and (u > 0).any()
    probs = torch.softmax(model(x), 1).detach()
    assert s3_select(probs, 3, uncertainty=u).indices.numel() == 3


def test_similarity_is_only_ever_built_in_blocks(monkeypatch):
    """Memory bound: no similarity block has more than block_size rows (never N x N)."""
    probs, u = _pool(400, 5, 11)
    shapes = []
    original = S3Objective._similarity

    def recording(self, items):
        out = original(self, items)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(S3Objective, "_similarity", recording)
    s3_select(probs, 20, uncertainty=u, block_size=16)
    assert shapes and max(r for r, _ in shapes) <= 16
    assert {c for _, c in shapes} == {400}
    shapes.clear()
    s3_select(probs, 20, uncertainty=u, block_size=16, num_representatives=50)
    assert {c for _, c in shapes} == {50}

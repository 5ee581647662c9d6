"""TrajectoryVariance (Welford over a window of reverse steps) and the filtering measures."""

import math
import warnings

import numpy as np
import pytest
import torch

import hallucfilter
from hallucfilter import TrajectoryVariance, Window


def _trajectory(num_steps, shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    # A drifting, noisy trajectory so that mean and variance both matter.
    drift = torch.linspace(0, 3, num_steps, dtype=dtype).view(-1, *([1] * len(shape)))
    return drift + torch.randn(num_steps, *shape, generator=g, dtype=dtype) * 2.0 + 5.0


# --- Welford equals numpy.var over the recorded window ------------------------------------------------


@pytest.mark.parametrize("shape", [(4,), (3, 5), (2, 3, 4, 4)])
@pytest.mark.parametrize("last_k", [1, 3, 10, 20])
def test_scores_equal_numpy_var_over_last_k(shape, last_k):
    num_steps = 20
    traj = _trajectory(num_steps, shape)
    tracker = TrajectoryVariance(last_k=last_k)
    recorded = [tracker.update(traj[i], step=i, num_steps=num_steps) for i in range(num_steps)]
    assert recorded == [i >= num_steps - last_k for i in range(num_steps)]
    assert tracker.count == last_k

    window = traj[num_steps - last_k:].numpy()  # the last last_k steps, the final output included
    ref_map = np.var(window, axis=0)
    ref = ref_map.reshape(shape[0], -1).mean(axis=1)
    # float64 accumulation: Welford and the two-pass numpy formula agree to rounding.
    np.testing.assert_allclose(tracker.scores().numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tracker.variance_map().numpy(), ref_map, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tracker.mean_map().numpy(), window.mean(axis=0), rtol=1e-12)


def test_float32_input_accumulates_in_float32_within_tolerance():
    traj = _trajectory(50, (8, 16), dtype=torch.float32)
    tracker = TrajectoryVariance(last_k=50)
    for i in range(50):
        tracker.update(traj[i], step=i, num_steps=50)
    assert tracker.scores().dtype == torch.float32
    ref = np.var(traj.double().numpy(), axis=0).mean(axis=1)
    np.testing.assert_allclose(tracker.scores().numpy(), ref, rtol=1e-5)


def test_float16_input_is_promoted_and_dtype_override():
    traj = _trajectory(6, (2, 3), dtype=torch.float16)
    t32, t64 = TrajectoryVariance(last_k=6), TrajectoryVariance(last_k=6, dtype=torch.float64)
    for i in range(6):
        t32.update(traj[i], step=i, num_steps=6)
        t64.update(traj[i], step=i, num_steps=6)
    assert t32.scores().dtype == torch.float32 and t64.scores().dtype == torch.float64
    ref = np.var(traj.double().numpy(), axis=0).mean(axis=1)
    np.testing.assert_allclose(t64.scores().numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize(("kind", "cut"), [("timestep_below", 10), ("sigma_below", 0.3)])
def test_noise_level_windows(kind, cut):
    timesteps = list(range(49, -1, -1))  # 49, ..., 0
    sigmas = [t / 49 for t in timesteps]
    traj = _trajectory(50, (3, 4))
    tracker = TrajectoryVariance(**{kind: cut})
    assert tracker.last_k is None
    for i, (t, s) in enumerate(zip(timesteps, sigmas)):
        tracker.update(traj[i], timestep=t, sigma=s)
    inside = [i for i, (t, s) in enumerate(zip(timesteps, sigmas)) if (t if kind == "timestep_below" else s) < cut]
    assert tracker.count == len(inside)
    ref = np.var(traj[inside].numpy(), axis=0).mean(axis=1)
    np.testing.assert_allclose(tracker.scores().numpy(), ref, rtol=1e-12)


def test_no_window_records_everything():
    traj = _trajectory(7, (2, 2))
    tracker = TrajectoryVariance(last_k=None)
    for x in traj:
        assert tracker.update(x)
    np.testing.assert_allclose(tracker.scores().numpy(), np.var(traj.numpy(), axis=0).mean(axis=1), rtol=1e-12)


def test_reductions_max_and_quantile():
    traj = _trajectory(10, (3, 2, 5))
    tracker = TrajectoryVariance(last_k=10)
    for i in range(10):
        tracker.update(traj[i], step=i, num_steps=10)
    var = np.var(traj.numpy(), axis=0).reshape(3, -1)
    np.testing.assert_allclose(tracker.scores("max").numpy(), var.max(axis=1), rtol=1e-12)
    # torch.quantile and numpy's default both interpolate linearly between order statistics.
    np.testing.assert_allclose(tracker.scores("quantile", q=0.9).numpy(), np.quantile(var, 0.9, axis=1), rtol=1e-12)


def test_single_step_window_has_zero_variance_and_reset_forgets():
    traj = _trajectory(5, (2, 3))
    tracker = TrajectoryVariance(last_k=1)
    for i in range(5):
        tracker.update(traj[i], step=i, num_steps=5)
    assert torch.equal(tracker.scores(), torch.zeros(2, dtype=torch.float64))
    tracker.reset()
    assert tracker.count == 0
    with pytest.raises(RuntimeError, match="no step has been recorded"):
        tracker.scores()
    tracker.update(traj[0][:1], step=4, num_steps=5)  # a new batch size is fine after reset
    assert tracker.count == 1


def test_memory_is_independent_of_window_length():
    shapes = set()
    for last_k in (1, 10, 100):
        tracker = TrajectoryVariance(last_k=last_k)
        for i in range(100):
            tracker.update(torch.ones(2, 3), step=i, num_steps=100)
        state = [tracker._mean, tracker._m2, tracker._finite]
        shapes.add(tuple(tuple(t.shape) for t in state))
    assert shapes == {((2, 3), (2, 3), (2,))}


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_x0_marks_that_sample_inf_with_a_warning(bad):
    traj = _trajectory(4, (3, 2))
    traj[2, 1, 0] = bad
    tracker = TrajectoryVariance(last_k=4)
    for i in range(4):
        tracker.update(traj[i], step=i, num_steps=4)
    with pytest.warns(RuntimeWarning, match=r"sample\(s\) \[1\]"):
        scores = tracker.scores()
    assert scores[1] == math.inf
    ref = np.var(traj[:, [0, 2]].numpy(), axis=0).mean(axis=1)  # the other samples are untouched
    np.testing.assert_allclose(scores[[0, 2]].numpy(), ref, rtol=1e-12)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="longer than the schedule"):
        TrajectoryVariance(last_k=10).update(torch.zeros(2, 3), step=0, num_steps=5)
    with pytest.raises(ValueError, match=r"step must be in \[0, 4\]"):
        TrajectoryVariance(last_k=2).update(torch.zeros(2, 3), step=5, num_steps=5)
    with pytest.raises(ValueError, match="needs step= and num_steps="):
        TrajectoryVariance(last_k=2).update(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="needs sigma="):
        TrajectoryVariance(sigma_below=0.5).update(torch.zeros(2, 3), step=1, num_steps=3)
    with pytest.raises(RuntimeError, match="no step has been recorded"):
        TrajectoryVariance(last_k=2).scores()
    tracker = TrajectoryVariance(last_k=3)
    tracker.update(torch.zeros(2, 3), step=0, num_steps=3)
    with pytest.raises(ValueError, match=r"shape \(4, 3\) but earlier steps had \(2, 3\)"):
        tracker.update(torch.zeros(4, 3), step=1, num_steps=3)
    with pytest.raises(ValueError, match="conflicts with a noise-level window"):
        TrajectoryVariance(last_k=5, sigma_below=0.1)
    with pytest.raises(ValueError, match="at most one of"):
        Window(last_k=None, timestep_below=3, sigma_below=0.1)
    with pytest.raises(ValueError, match=r"last_k must be in \[1, inf\), got 0"):
        TrajectoryVariance(last_k=0)
    with pytest.raises(TypeError, match="floating-point tensor"):
        TrajectoryVariance(last_k=1).update(torch.zeros(2, dtype=torch.long), step=0, num_steps=1)
    with pytest.raises(ValueError, match="reduction must be one of"):
        tracker.scores("median")
    with pytest.raises(ValueError, match=r"q must be in \[0.0, 1.0\]"):
        tracker.scores("quantile", q=1.5)


# --- a plain sampling loop with an analytic denoiser whose variance is known ----------------------


def _ddim_loop_gaussian(mu, s, y0, alpha_bars, tracker):
    """DDIM (eta=0) with the exact posterior-mean denoiser of N(mu, s^2) data, in torch."""
    x = y0 + math.sqrt(alpha_bars[0]) * mu
    n = len(alpha_bars)
    for i, ab in enumerate(alpha_bars):
        x0_hat = mu + math.sqrt(ab) * s**2 / (ab * s**2 + 1 - ab) * (x - math.sqrt(ab) * mu)  # E[x0 | x_t]
        tracker.update(x0_hat, step=i, num_steps=n)
        if i + 1 < n:
            eps_hat = (x - math.sqrt(ab) * x0_hat) / math.sqrt(1 - ab)
            ab_next = alpha_bars[i + 1]
            x = math.sqrt(ab_next) * x0_hat + math.sqrt(1 - ab_next) * eps_hat
    return x0_hat


@pytest.mark.parametrize(("s", "last_k"), [(0.0, 5), (0.5, 5), (2.0, 8)])
def test_plain_loop_with_analytic_gaussian_denoiser(s, last_k):
    # With y_t = x_t - sqrt(ab_t) mu, the exact denoiser is x0_hat - mu = c_t y_t with
    # c_t = sqrt(ab) s^2 / (ab s^2 + 1 - ab), and one DDIM step maps y_t to r_t y_t with
    # r_t = sqrt(ab') c_t + sqrt((1 - ab') / (1 - ab)) (1 - sqrt(ab) c_t). So x0_hat_i - mu = g_i y_0 with
    # g_i = c_i prod_{j<i} r_j, and the score of a sample is var_i(g_i) * mean_d(y_0^2) (derived by hand).
    alpha_bars = [float(a) for a in np.linspace(0.02, 0.999, 12)]
    g_coef, prod = [], 1.0
    for i, ab in enumerate(alpha_bars):
        c = math.sqrt(ab) * s**2 / (ab * s**2 + 1 - ab)
        g_coef.append(c * prod)
        if i + 1 < len(alpha_bars):
            ab_next = alpha_bars[i + 1]
            prod *= math.sqrt(ab_next) * c + math.sqrt((1 - ab_next) / (1 - ab)) * (1 - math.sqrt(ab) * c)
    y0 = torch.randn(6, 3, 4, dtype=torch.float64)
    tracker = TrajectoryVariance(last_k=last_k)
    _ddim_loop_gaussian(1.5, s, y0, alpha_bars, tracker)
    expected = np.var(g_coef[-last_k:]) * (y0**2).flatten(1).mean(1).numpy()
    np.testing.assert_allclose(tracker.scores().numpy(), expected, rtol=1e-9, atol=1e-15)
    if s == 0.0:  # a point mass: the exact denoiser never moves, no interpolation, score exactly 0
        assert torch.equal(tracker.scores(), torch.zeros(6, dtype=torch.float64))


# --- filtering measures ---------------------------------------------------------------------------


def test_auroc_matches_sklearn_with_ties_and_inf():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    s_in = np.round(rng.normal(0, 1, 200), 1)
    s_out = np.round(rng.normal(1, 1, 50), 1)
    s_out[:3] = np.inf
    labels = np.r_[np.zeros(200), np.ones(50)]
    pooled = np.r_[s_in, s_out]
    pooled[np.isinf(pooled)] = 1e300  # sklearn rejects inf; any value above the rest ranks the same
    ref = sklearn_metrics.roc_auc_score(labels, pooled)
    assert hallucfilter.auroc(torch.tensor(s_in), s_out) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize(("s_in", "s_out", "expected"), [
    ([0, 1, 2], [3, 4], 1.0), ([3, 4], [0, 1, 2], 0.0), ([1, 1], [1, 1, 1], 0.5), ([0, 1, 2], [1.5, 3], 5 / 6),
])
def test_auroc_by_hand(s_in, s_out, expected):
    assert hallucfilter.auroc(s_in, s_out) == pytest.approx(expected, abs=1e-15)


def test_threshold_removal_and_retention_by_hand():
    s_in = np.arange(100.0)  # 0..99
    s_out = torch.tensor([50.0, 99.5, 100.0, 200.0])
    # The 96th smallest in-support score is 95: 96 of 100 kept.
    assert hallucfilter.calibrate_threshold(s_in, retention=0.96) == 95.0
    assert hallucfilter.removal_at_retention(s_in, s_out, retention=0.96) == 0.75
    assert hallucfilter.retention_at_removal(s_in, s_out, removal=0.75) == 1.0  # cut below 99.5 keeps all 100
    assert hallucfilter.retention_at_removal(s_in, s_out, removal=1.0) == 0.5  # cut below 50 keeps 0..49
    assert hallucfilter.retention_at_removal(s_in, s_out, removal=0.0) == 1.0
    mask = hallucfilter.keep_mask(s_out, 95.0)
    assert isinstance(mask, torch.Tensor) and mask.tolist() == [True, False, False, False]


@pytest.mark.parametrize("retention", [0.5, 0.9, 0.96, 1.0])
def test_calibrated_threshold_keeps_at_least_the_target(retention):
    s_in = np.random.default_rng(1).exponential(size=337)
    thr = hallucfilter.calibrate_threshold(s_in, retention)
    kept = (s_in <= thr).mean()
    assert kept >= retention and kept - 1 / s_in.size < retention  # the smallest such threshold


def test_rank_filter_keeps_lowest_stable_and_same_kind():
    scores = torch.tensor([0.3, 0.1, float("inf"), 0.1, 0.2])
    kept = hallucfilter.rank_filter(scores, 3)
    assert kept.dtype == torch.long and kept.tolist() == [1, 3, 4]
    kept_np = hallucfilter.rank_filter(scores.numpy(), 2)
    assert isinstance(kept_np, np.ndarray) and kept_np.tolist() == [1, 3]
    assert hallucfilter.rank_filter(scores, 0).tolist() == []


def test_filtering_bad_input():
    with pytest.raises(ValueError, match="contains NaN"):
        hallucfilter.auroc([0.0, float("nan")], [1.0])
    with pytest.raises(ValueError, match="at least one score"):
        hallucfilter.auroc([], [1.0])
    with pytest.raises(ValueError, match=r"retention must be in \(0.0, 1.0\]"):
        hallucfilter.calibrate_threshold([1.0], retention=0.0)
    with pytest.raises(ValueError, match=r"keep must be in \[0, 2\]"):
        hallucfilter.rank_filter(np.array([1.0, 2.0]), 3)
    with pytest.raises(ValueError, match="one-dimensional"):
        hallucfilter.removal_at_retention(np.zeros((2, 2)), [1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hallucfilter.auroc([0.0], [float("inf")])


def test_core_imports_neither_diffusers_nor_smoothopt():
    import subprocess
    import sys

    code = ("import sys, hallucfilter; bad = [m for m in ('diffusers', 'smoothopt', 'benchmarks', 'scipy', 'sklearn') "
            "if m in sys.modules]; sys.exit(', '.join(bad) or None)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

"""The hallucination reproduction's building blocks: schedule, sampler, data, labellers, models.

Golden numbers: ``alpha_bar_300 = 7.56e-5`` is PAPERS.md's 7.6e-5 (the paper's remark that
sampling may start at t = 300), recomputed in float64; ``2.8289 = sqrt(0.05^2 + 8)`` is the
paper's normalisation of the 2D grid.
"""

import gzip
import math
import warnings

import numpy as np
import pytest
import torch

from benchmarks._stats import mean_interval, welch_interval
from benchmarks.hallucination import data as D
from benchmarks.hallucination import labels as L
from benchmarks.hallucination.diffusion import LinearSchedule, ddpm_sample, diffusion_loss
from benchmarks.hallucination.experiments import _means_tag, frechet_distance, select_window, unit_keys
from benchmarks.hallucination.models import ShapesUNet, ToyDenoiser
from benchmarks.hallucination.train import cosine_lr, ema_update_, train_denoiser


def mixture_eps(means, std, schedule):
    """The exact epsilon of a 1D equal-weight Gaussian mixture: E[eps | x_t] in closed form."""
    mu = torch.tensor(means, dtype=torch.float64)

    def eps(x, t):
        ab = schedule.alphas_cumprod[t].double()[:, None]
        var = ab * std**2 + (1 - ab)  # variance of x_t given the component
        xd = x.double()
        logw = -0.5 * (xd - ab.sqrt() * mu) ** 2 / var
        w = torch.softmax(logw, dim=1)
        # E[x0 | x_t, component] by Gaussian conditioning, then eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)
        x0 = mu + ab.sqrt() * std**2 / var * (xd - ab.sqrt() * mu)
        x0 = (w * x0).sum(1, keepdim=True)
        return ((xd - ab.sqrt() * x0) / (1 - ab).sqrt()).float()

    return eps


def test_schedule_matches_the_paper():
    s = LinearSchedule()
    assert s.betas[0].item() == pytest.approx(1e-3) and s.betas[-1].item() == pytest.approx(0.2)
    assert s.alphas_cumprod[300].item() == pytest.approx(7.56e-5, rel=1e-2)
    assert set(dict(s.named_buffers())) == {"betas", "alphas_cumprod"}
    assert s.timesteps(300, 300) == list(range(299, -1, -1))
    ts = s.timesteps(300, 50)
    assert ts[0] == 299 and ts[-1] == 0 and len(ts) == 50 and ts == sorted(ts, reverse=True)


BAD_SCHEDULES = [{"num_train_timesteps": 1}, {"beta_start": 0.0}, {"beta_start": 0.3, "beta_end": 0.2}]


@pytest.mark.parametrize("bad", BAD_SCHEDULES, ids=["T", "start", "order"])
def test_schedule_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        LinearSchedule(**bad)


def test_diffusion_loss_is_zero_for_the_true_noise():
    s = LinearSchedule()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 2)
    state = g.get_state()
    # Replay the generator to know the noise the loss will draw: t first, then eps.
    t = torch.randint(0, 1000, (64,), generator=g)
    eps = torch.randn(64, 2, generator=g)
    table = {}

    def oracle(x_t, tt):
        table["x_t"] = x_t
        return eps

    g.set_state(state)
    assert diffusion_loss(oracle, s, x0, generator=g).item() == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(table["x_t"], s.add_noise(x0, eps, t))
    with pytest.raises(ValueError, match="t_max"):
        diffusion_loss(oracle, s, x0, t_max=0)


@pytest.mark.parametrize("num_steps", [300, 60])
def test_exact_score_gives_no_interpolation(num_steps):
    """The paper's sanity check: with the exact score the sampler stays on the modes (well within 6 sigma)."""
    s = LinearSchedule()
    means, std = [1.0, 2.0, 3.0], 0.05
    x = ddpm_sample(mixture_eps(means, std, s), s, (3000, 1), start=300, num_steps=num_steps,
                    generator=torch.Generator().manual_seed(1))
    d = L.mode_distance(x, torch.tensor(means)[:, None], std)
    assert (d > 6).float().mean().item() < 2e-3  # 0 expected; a few of 3,000 allowed
    which = torch.cdist(x, torch.tensor(means)[:, None]).argmin(1)
    counts = torch.bincount(which, minlength=3).float() / 3000
    torch.testing.assert_close(counts, torch.full((3,), 1 / 3), atol=0.04, rtol=0)  # equal weights, ~4 s.e.
    within = x.flatten() - torch.tensor(means)[which]
    if num_steps == 300:
        assert within.std().item() == pytest.approx(std, rel=0.15)
    else:  # fixed-large variance over coarse steps adds noise: measured 0.073 for 60 steps
        assert std < within.std().item() < 2 * std


def test_sampler_reports_x0_hat_and_returns_it_at_the_last_step():
    s = LinearSchedule()
    seen, timesteps = [], []

    class Obs:
        def update(self, x0_hat, *, step, num_steps, timestep):
            seen.append((step, num_steps, x0_hat.clone()))
            timesteps.append(timestep)

    model = ToyDenoiser(2, width=16)
    x = ddpm_sample(model, s, (5, 2), start=20, observers=[Obs()], generator=torch.Generator().manual_seed(0))
    assert [i for i, _, _ in seen] == list(range(20)) and {n for _, n, _ in seen} == {20}
    assert timesteps == list(range(19, -1, -1))
    torch.testing.assert_close(seen[-1][2], x, rtol=0, atol=0)
    # Same generator, same samples; respacing to every step is the plain chain.
    y = ddpm_sample(model, s, (5, 2), start=20, num_steps=20, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("tied,blocks", [(False, 3), (True, 1)])
def test_toy_denoiser_tied_and_untied(tied, blocks):
    m = ToyDenoiser(2, width=32, tied=tied)
    assert len(m.blocks) == blocks and m.num_blocks == 3
    out = m(torch.randn(7, 2), torch.randint(0, 1000, (7,)))
    assert out.shape == (7, 2)
    assert "embed.freqs" in m.state_dict()


def test_shapes_unet_shape():
    m = ShapesUNet(16, (8, 8, 8))
    assert m(torch.randn(2, 1, 16, 16), torch.tensor([0, 999])).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="multiple of 4"):
        ShapesUNet(18)


def test_mixtures_are_seeded_and_scaled():
    a, b = D.mixture_1d([1, 2, 3], 500, seed=3), D.mixture_1d([1, 2, 3], 500, seed=3)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    assert not torch.equal(a.x, D.mixture_1d([1, 2, 3], 500, seed=4).x)
    assert a.scale == 1.0 and a.std == 0.05
    g = D.grid_2d(20_000, seed=0)
    assert g.scale == pytest.approx(math.sqrt(0.05**2 + 8)) and g.scale == pytest.approx(2.8289, abs=1e-4)
    assert g.modes.shape == (25, 2) and g.std == pytest.approx(0.05 / 2.8289, rel=1e-4)
    torch.testing.assert_close(g.x.std(0), torch.ones(2), atol=0.03, rtol=0)  # ~ 1 by construction
    r = D.grid_2d(10, seed=0, rotated=True)
    nn_dist = torch.cdist(r.modes, r.modes).fill_diagonal_(9).min(1).values
    torch.testing.assert_close(nn_dist, torch.full((25,), 2 / 2.8289), atol=1e-4, rtol=0)
    assert r.modes[:, 0].abs().max() > g.modes[:, 0].abs().max() + 0.1  # a diamond reaches further along x


def test_shapes_generator_agrees_with_the_labeller(tmp_path):
    images, meta = D.simple_shapes(120, seed=0, size=32)
    assert images.shape == (120, 1, 32, 32) and set(images.unique().tolist()) <= {0.0, 1.0}
    truth = torch.zeros(120, 3, dtype=torch.long)
    for i, m in enumerate(meta):
        assert m["shapes"]  # blank images are skipped
        for s in m["shapes"]:
            assert s["name"] == D.SHAPE_NAMES[s["column"]]
            truth[i, s["column"]] += 1
    counted = L.count_shapes(images)
    torch.testing.assert_close(counted["counts"], truth, rtol=0, atol=0)
    torch.testing.assert_close(counted["matched"], truth, rtol=0, atol=0)
    assert not L.shapes_hallucinated(images).any()
    frac = truth.float().mean(0)
    assert ((frac > 0.4) & (frac < 0.8)).all()  # P(present | not all blank) = 0.5 / (1 - 0.125) = 0.571
    again, _ = D.simple_shapes(120, seed=0, size=32)
    torch.testing.assert_close(images, again, rtol=0, atol=0)
    back, meta_back = D.read_shapes(D.write_shapes(tmp_path / "shapes", images[:5], meta[:5]))
    torch.testing.assert_close(back, images[:5], rtol=0, atol=0)
    assert meta_back == meta[:5]


def test_shape_labeller_on_constructed_images():
    size = 32
    lo, hi = D.column_bounds(size)[1]
    cx = (lo + hi) / 2
    img = np.zeros((3, size, size), dtype=np.float32)
    img[0] = D.render_shape("square", cx, 8, size) | D.render_shape("square", cx, 22, size)  # two squares
    img[1] = D.render_shape("square", cx, 15, size)
    img[1, 2, 2] = 1.0  # a one-pixel speck in column 0
    img[2, 5:25, lo:hi] = 1.0  # one huge blob: a shape, but not the template
    out = L.count_shapes(torch.from_numpy(img))
    assert out["counts"].tolist() == [[0, 2, 0], [0, 1, 0], [0, 1, 0]]
    assert out["matched"].tolist() == [[0, 2, 0], [0, 1, 0], [0, 0, 0]]
    assert out["specks"].tolist() == [0, 1, 0]
    assert L.shapes_hallucinated(torch.from_numpy(img)).tolist() == [True, False, False]


def test_mode_distance_and_gaps_on_constructed_points():
    modes = torch.tensor([[1.0], [2.0], [4.0]])
    x = torch.tensor([[1.0], [1.3], [2.9], [4.6], [0.5]])
    torch.testing.assert_close(L.mode_distance(x, modes, 0.05), torch.tensor([0.0, 6.0, 18.0, 12.0, 10.0]))
    assert L.out_of_support(x, modes, 0.05, k=6).tolist() == [False, False, True, True, True]
    assert L.gap_of(x, modes).tolist() == [-1, 0, 1, -1, -1]
    with pytest.raises(ValueError, match="std"):
        L.mode_distance(x, modes, 0.0)


@pytest.mark.parametrize("compressed", [False, True])
def test_mnist_loader_reads_idx_files(tmp_path, compressed):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    labs = np.array([7, 0, 9], dtype=np.uint8)
    opener = gzip.open if compressed else open
    suffix = ".gz" if compressed else ""
    with opener(tmp_path / f"train-images-idx3-ubyte{suffix}", "wb") as fh:
        fh.write((0x0803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (3, 28, 28)) + imgs.tobytes())
    with opener(tmp_path / f"train-labels-idx1-ubyte{suffix}", "wb") as fh:
        fh.write((0x0801).to_bytes(4, "big") + (3).to_bytes(4, "big") + labs.tobytes())
    x, y = D.load_mnist(tmp_path)
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [7, 0, 9]
    torch.testing.assert_close(x[1, 0], torch.from_numpy(imgs[1].astype(np.float32) / 255))
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        D.load_mnist(tmp_path, "t10k")


def test_frechet_distance_of_shifted_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([2.0, 0.0, 1.0])
    # Same covariance, mean shifted: the distance is ||shift||^2 = 5 exactly.
    assert frechet_distance(a, a + shift) == pytest.approx(5.0, abs=1e-6)
    # Dead features make the covariance product singular: regularised, no warning, still ||shift||^2.
    dead = torch.zeros(50, 4)
    dead[:, 0] = torch.randn(50, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert frechet_distance(dead, dead + 1.0) == pytest.approx(4.0, abs=1e-4)


def test_cosine_lr_endpoints():
    assert cosine_lr(0, 100, 1e-3, 1e-5) == pytest.approx(1e-3)
    assert cosine_lr(50, 100, 1e-3, 1e-5) == pytest.approx((1e-3 + 1e-5) / 2)
    assert cosine_lr(100, 100, 1e-3, 1e-5) == pytest.approx(1e-5)


def test_unit_keys_cover_every_part():
    from benchmarks.hallucination import EXPERIMENT

    cfg = EXPERIMENT.presets["cpu"]
    keys = unit_keys(cfg, [0])
    reps = cfg["oned"]["replicates"]
    assert reps > 1
    assert "oned_m123_n1000_r0_s0" in keys and f"oned_m1245_n20000_r{reps - 1}_s0" in keys
    assert f"oned_m1245_n20000_r{reps}_s0" not in keys
    assert "oned_mn125_n20000_r0_s0" in keys  # three modes at spacing 3, centred on 2
    assert {"grid_s0", "grid_rotated_s0", "shapes_s0", "recursive_digits_random_s0"} <= set(keys)
    assert len(keys) == len(set(keys))


def test_means_tag_is_file_name_safe():
    assert _means_tag([1, 2, 3]) == "123"
    assert _means_tag([-1, 2, 5]) == "n125"
    assert _means_tag([0.5, 2]) == "0p52"


def test_ema_update_matches_the_closed_form():
    # After values c_1..c_n: d^n a_0 + sum_k (1 - d) d^(n - k) c_k.
    d, a0, cs = 0.9, 2.0, [1.0, -3.0, 0.5, 4.0]
    a = [torch.tensor([a0], dtype=torch.float64)]
    for c in cs:
        ema_update_(a, [torch.tensor([c], dtype=torch.float64)], d)
    n = len(cs)
    expected = d**n * a0 + sum((1 - d) * d ** (n - k) * c for k, c in enumerate(cs, start=1))
    assert float(a[0]) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_ema_rejects_decay_outside_unit_interval(decay):
    with pytest.raises(ValueError, match="decay"):
        ema_update_([torch.zeros(1)], [torch.ones(1)], decay)
    with pytest.raises(ValueError, match="ema_decay"):
        train_denoiser(ToyDenoiser(1, width=8, num_blocks=1), torch.zeros(4, 1), LinearSchedule(), steps=1,
                       batch_size=2, lr=1e-3, lr_final=1e-3, seed=0, device=torch.device("cpu"), ema_decay=decay)


def _train(ema_decay, steps):
    torch.manual_seed(0)
    model = ToyDenoiser(1, width=8, num_blocks=1)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    data = torch.randn(32, 1)
    train_denoiser(model, data, LinearSchedule(), steps=steps, batch_size=8, lr=1e-2, lr_final=1e-2, seed=3,
                   device=torch.device("cpu"), ema_decay=ema_decay)
    return init, model.state_dict()


def test_training_samples_from_the_averaged_weights():
    init, raw = _train(None, 1)
    _, ema = _train(0.75, 1)
    _, ema0 = _train(0.0, 2)
    _, raw2 = _train(None, 2)
    # One step: the average is 0.75 * w_0 + 0.25 * w_1; decay 0 keeps the latest weights exactly.
    changed = 0
    for k in raw:
        torch.testing.assert_close(ema[k], 0.75 * init[k] + 0.25 * raw[k], rtol=1e-6, atol=1e-7)
        assert torch.equal(ema0[k], raw2[k])
        changed += int(not torch.equal(raw[k], init[k]))
    assert changed > 0  # the step moved the weights, so the check above is not vacuous


def test_select_window_prefers_removal_then_auroc():
    det = {"K2": {"removal_at_retention": 0.8, "auroc": 0.99},
           "K5": {"removal_at_retention": 0.9, "auroc": 0.95},
           "K10": {"removal_at_retention": 0.9, "auroc": 0.97},
           "K20": {"removal_at_retention": None, "auroc": None}}
    assert select_window(det) == "K10"
    with pytest.raises(ValueError, match="no out-of-support"):
        select_window({"K2": {"removal_at_retention": None, "auroc": None}})


def test_mean_interval_and_welch_interval():
    from scipy import stats

    m = mean_interval([1.0, 2.0, 3.0])
    # sd 1, t(0.975, 2) = 4.3027: half-width 4.3027 / sqrt(3) = 2.4841.
    assert (m["mean"], m["sd"]) == (2.0, 1.0)
    assert m["high"] - m["mean"] == pytest.approx(2.4841, abs=1e-4)
    assert mean_interval([0.5])["low"] == 0.5
    a, b = [0.31, 0.35, 0.29, 0.40], [0.20, 0.27, 0.22]
    w = welch_interval(a, b)
    assert w["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert w["p"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
    assert w["low"] < w["diff"] < w["high"]
    with pytest.raises(ValueError):
        welch_interval([1.0], [1.0, 2.0])


def test_interpolation_section_reports_intervals_and_differences():
    from benchmarks.hallucination.report import _interpolation_section

    def row(means, n, rate, gap_rates):
        gaps = [{"lo": lo, "hi": hi, "width": hi - lo, "per_neighbour_mass": g}
                for lo, hi, g in zip(means, means[1:], gap_rates)]
        return {"means": means, "n_train": n, "n_samples": 1000, "gaps": gaps,
                "out_of_support": {"6sigma": {"fraction": rate}}}

    small = [row([1, 2, 3], 200, r, [r, r]) for r in (0.004, 0.005, 0.006)]
    large = [row([1, 2, 3], 20000, r, [r, r]) for r in (0.001, 0.002, 0.003)]
    wide = [row([0, 2, 4], 20000, r, [r, r]) for r in (0.0005, 0.0006, 0.0004)]
    four = [row([1, 2, 4, 5], 20000, 0.01, [0.003, 0.001, g]) for g in (0.005, 0.007, 0.009)]
    text = "\n".join(_interpolation_section({"k_sigma": 6.0}, {"a": small, "b": large, "c": wide, "d": four},
                                            "6sigma"))
    # Rate 0.5% at N = 200 with sd 0.1 points: t(0.975, 2) * 0.1 / sqrt(3) = 0.248 points.
    assert "| [1, 2, 3] | 200 | 3 | 1000 | 0.500% [0.252, 0.748] |" in text
    assert "N = 200 minus rate at N = 20000: +0.300 points" in text
    assert "spacing 1 minus spacing 2" in text and "+0.150 points" in text
    # Narrow gaps (mean of 0.3% and 0.5/0.7/0.9%) minus the wide gap (0.1%): 0.3, 0.4, 0.5 points.
    assert "width-1 gaps (mean) minus width-2 gap, normalised: 0.400% [0.152, 0.648]" in text

"""Recovering x0_hat from each parametrisation: exact round trips, and agreement with diffusers' schedulers."""

import math

import pytest
import torch

from hallucfilter import x0_from_edm, x0_from_flow, x0_from_sigma, x0_from_vp


@pytest.fixture
def x0_eps():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 2, 4, 4, generator=g,
                                                                                   dtype=torch.float64)


@pytest.mark.parametrize("alpha_bar", [0.999, 0.5, 1e-4, torch.tensor([0.9, 0.3, 0.01], dtype=torch.float64)])
def test_vp_round_trip_for_each_prediction(x0_eps, alpha_bar):
    x0, eps = x0_eps
    ab = alpha_bar.view(-1, 1, 1, 1) if isinstance(alpha_bar, torch.Tensor) else alpha_bar
    x_t = ab**0.5 * x0 + (1 - ab) ** 0.5 * eps  # forward process
    v = ab**0.5 * eps - (1 - ab) ** 0.5 * x0  # Salimans & Ho (2022) velocity
    # Exact in float64 up to rounding; 1/sqrt(1e-4) amplifies it 100x, hence the 1e-10 tolerance.
    torch.testing.assert_close(x0_from_vp(eps, x_t, alpha_bar, "epsilon"), x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(x0_from_vp(v, x_t, alpha_bar, "v_prediction"), x0, rtol=0, atol=1e-12)
    assert x0_from_vp(x0, x_t, alpha_bar, "sample") is x0


@pytest.mark.parametrize("sigma", [0.0, 0.3, 14.6])
def test_sigma_form_round_trip(x0_eps, sigma):
    x0, eps = x0_eps
    x = x0 + sigma * eps
    torch.testing.assert_close(x0_from_sigma(eps, x, sigma, "epsilon"), x0, rtol=0, atol=1e-12)
    # v in the sigma form is the VP velocity at alpha_bar = 1 / (1 + sigma^2) on the scaled sample.
    ab = 1 / (1 + sigma**2)
    v = math.sqrt(ab) * eps - math.sqrt(1 - ab) * x0
    torch.testing.assert_close(x0_from_sigma(v, x, sigma, "v_prediction"), x0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sigma", [0.0, 0.25, 1.0, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)])
def test_flow_round_trip(x0_eps, sigma):
    x0, eps = x0_eps
    s = sigma.view(-1, 1, 1, 1) if isinstance(sigma, torch.Tensor) else sigma
    x = (1 - s) * x0 + s * eps
    torch.testing.assert_close(x0_from_flow(eps - x0, x, sigma), x0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sigma", [0.002, 0.5, 80.0])
def test_edm_preconditioning_inverts(x0_eps, sigma):
    x0, eps = x0_eps
    x = x0 + sigma * eps
    sd = 0.5
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / math.sqrt(sigma**2 + sd**2)
    raw = (x0 - c_skip * x) / c_out  # the network output F for which D(x; sigma) = x0
    torch.testing.assert_close(x0_from_edm(raw, x, sigma, sigma_data=sd), x0, rtol=0, atol=1e-9)


diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_sigma_form_matches_diffusers_euler(prediction_type):
    sched = diffusers.EulerDiscreteScheduler(prediction_type=prediction_type)
    sched.set_timesteps(5)
    x = torch.randn(2, 3, 4, 4) * sched.init_noise_sigma
    out = torch.randn(2, 3, 4, 4)
    sigma = float(sched.sigmas[0])
    own = sched.step(out, sched.timesteps[0], x).pred_original_sample
    torch.testing.assert_close(x0_from_sigma(out, x, sigma, prediction_type), own, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sigma", [0.01, 1.0, 40.0])
def test_edm_matches_diffusers_precondition_outputs(sigma):
    sched = diffusers.EDMEulerScheduler()
    x, raw = torch.randn(2, 3, 4, 4) * sigma, torch.randn(2, 3, 4, 4)
    expected = sched.precondition_outputs(x, raw, torch.tensor(sigma))
    torch.testing.assert_close(x0_from_edm(raw, x, sigma, sigma_data=sched.config.sigma_data), expected,
                               rtol=1e-5, atol=1e-5)


def test_vp_matches_diffusers_ddim_unclipped():
    sched = diffusers.DDIMScheduler(clip_sample=False, prediction_type="v_prediction")
    sched.set_timesteps(10)
    t = sched.timesteps[3]
    x, out = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    own = sched.step(out, t, x).pred_original_sample
    torch.testing.assert_close(x0_from_vp(out, x, float(sched.alphas_cumprod[t]), "v_prediction"), own,
                               rtol=1e-5, atol=1e-5)


def test_bad_input():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        x0_from_vp(x, x, 0.5, "flow")
    with pytest.raises(ValueError, match=r"alpha_bar must be in \(0, 1\], got 0.0"):
        x0_from_vp(x, x, 0.0)
    with pytest.raises(ValueError, match="model_output has shape"):
        x0_from_sigma(torch.zeros(2, 6), x, 1.0)
    with pytest.raises(ValueError, match=r"one value per sample \(shape \(2,\)\)"):
        x0_from_flow(x, x, torch.ones(3))
    with pytest.raises(ValueError, match=r"sigma_data must be in \(0.0, inf\)"):
        x0_from_edm(x, x, 1.0, sigma_data=0.0)

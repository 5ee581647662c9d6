"""Virtual adversarial training, conditional entropy and the VAADA objective."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smoothopt.adapt import (
    VAADAWeights,
    conditional_entropy,
    vaada_loss,
    vat_loss,
    virtual_adversarial_perturbation,
)


def _kl_at(model, x, p_logits, r):
    log_p = F.log_softmax(p_logits, 1)
    return (log_p.exp() * (log_p - F.log_softmax(model(x + r), 1))).sum()


def _fd_hessian(model, x1, h=1e-4):
    """Hessian of r -> KL(p(x) || p(x + r)) at r = 0 by central finite differences (float64, error O(h^2))."""
    d = x1.shape[1]
    p_logits = model(x1).detach()
    e = torch.eye(d, dtype=torch.float64) * h

    def f(r):
        return float(_kl_at(model, x1, p_logits, r.unsqueeze(0)).detach())

    hess = torch.empty(d, d, dtype=torch.float64)
    for i in range(d):
        for j in range(d):
            hess[i, j] = (f(e[i] + e[j]) - f(e[i] - e[j]) - f(-e[i] + e[j]) + f(-e[i] - e[j])) / (4 * h * h)
    return hess


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vat_direction_and_value_against_finite_differences(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4)).double()
    x = torch.randn(1, 5, dtype=torch.float64)
    hess = _fd_hessian(model, x)
    evals, evecs = torch.linalg.eigh(hess)
    lam, v = evals[-1], evecs[:, -1]
    gen = torch.Generator().manual_seed(seed)
    r = virtual_adversarial_perturbation(model, x, xi=1e-4, eps=1.0, power_iterations=40, generator=gen)[0]
    # the direction is the top eigenvector of the KL Hessian (up to sign); power iteration on a
    # 5x5 matrix with 40 steps, finite-difference error ~1e-8: cosine within 1e-5 of 1
    assert abs(float(r @ v)) == pytest.approx(1.0, abs=1e-5)
    # KL(p || p(x + eps d)) = eps^2/2 * lambda_max + O(eps^3): relative error ~eps at eps = 1e-3
    eps = 1e-3
    loss = vat_loss(model, x, xi=1e-4, eps=eps, power_iterations=40, generator=torch.Generator().manual_seed(seed))
    assert float(loss.detach()) == pytest.approx(0.5 * eps**2 * float(lam), rel=1e-2)


def test_vat_sound_under_autocast():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(8, 6)
    r32 = virtual_adversarial_perturbation(model, x, generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r16 = virtual_adversarial_perturbation(model, x, generator=torch.Generator().manual_seed(3))
        loss = vat_loss(model, x, generator=torch.Generator().manual_seed(3))
    # the power iteration runs in float32 whatever the autocast state: identical directions
    torch.testing.assert_close(r16, r32, rtol=0, atol=0)
    assert torch.isfinite(loss) and loss.dtype == torch.float32 and float(loss.detach()) > 0
    norms = r32.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(8), rtol=1e-5, atol=0)  # eps = 1 per sample


def test_vat_float32_at_tiny_xi_matches_float64():
    """At xi = 1e-6 a float32 forward would round x + xi d back to x; the radius floor prevents that."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    x = 3.0 * torch.randn(16, 6)
    kw = {"xi": 1e-6, "eps": 1.0, "power_iterations": 2}
    r32 = virtual_adversarial_perturbation(model, x, generator=torch.Generator().manual_seed(1), **kw)
    r64 = virtual_adversarial_perturbation(model.double(), x.double(), generator=torch.Generator().manual_seed(1),
                                           **kw)
    cos = (r32.double() * r64).sum(1).abs()
    # same start (drawn in float32), two power iterations; the float32 radius 3.5e-4 * ||x|| against
    # 1e-6 in float64 changes the direction by O(radius) (observed min cosine 0.99998)
    assert float(cos.min()) > 0.999


def test_vat_gradient_flows_through_perturbed_prediction_only():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    logits = model(x)
    loss = vat_loss(model, x, logits)
    loss.backward()
    assert model.weight.grad is not None and torch.isfinite(model.weight.grad).all()
    assert vat_loss(model, x, reduction="none").shape == (5,)
    with pytest.raises(ValueError, match="xi"):
        vat_loss(model, x, xi=0.0)
    with pytest.raises(ValueError, match="reduction"):
        vat_loss(model, x, reduction="sum")


@pytest.mark.parametrize("c", [2, 7])
def test_conditional_entropy_golden(c):
    assert float(conditional_entropy(torch.zeros(3, c))) == pytest.approx(math.log(c), rel=1e-6)
    assert float(conditional_entropy(torch.tensor([[100.0] + [0.0] * (c - 1)]))) == pytest.approx(0.0, abs=1e-6)


def test_vaada_loss_is_the_weighted_sum():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x_l, y_l, x_t = torch.randn(6, 4), torch.randint(0, 3, (6,)), torch.randn(5, 4)
    adv = torch.tensor(0.3)
    w = VAADAWeights()
    assert (w.vat_labelled, w.vat_target, w.entropy_target, w.adversarial) == (1.0, 0.01, 0.01, 0.01)
    out = vaada_loss(model, x_l, y_l, x_t, adversarial_loss=adv, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    ce = F.cross_entropy(model(x_l), y_l)
    vat_l = vat_loss(model, x_l, generator=gen)
    vat_t = vat_loss(model, x_t, generator=gen)
    ent = conditional_entropy(model(x_t))
    expected = ce + vat_l + 0.01 * vat_t + 0.01 * ent + 0.01 * adv
    torch.testing.assert_close(out.total, expected)
    torch.testing.assert_close(out.vat_target, vat_t.detach())
    with pytest.raises(ValueError, match="vat_target"):
        VAADAWeights(vat_target=-1.0)
    with pytest.raises(ValueError, match="y_labelled"):
        vaada_loss(model, x_l, y_l[:3], x_t)

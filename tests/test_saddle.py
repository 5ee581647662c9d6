"""Tests of smoothopt.saddle: perturbed gradient descent (Jin et al. 2017) and phased rho schedules.

Expected values are derived in the tests from the algorithm's definition (a gradient step on a quadratic,
the law P(||xi|| <= s) = (s / r)^d of a point uniform in a d-ball), not copied from another implementation.
"""

import copy
import doctest
import math

import pytest
import torch

import smoothopt.saddle.perturbed
import smoothopt.saddle.rho
from smoothopt.saddle import PerturbedGD, PhasedRho


def _quadratic_closure(opt, x, loss_fn=lambda v: 0.5 * v.square().sum()):
    def closure():
        opt.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        return loss

    return closure


def _set_grad(x, g):
    x.grad = torch.as_tensor(g, dtype=x.dtype).clone()


# ----------------------------------------------------------------------------- PerturbedGD


@pytest.mark.parametrize("grad_norm", [0.5, 2.0, 10.0])
def test_no_noise_above_threshold(grad_norm):
    x = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = PerturbedGD([x], torch.optim.SGD, radius=0.1, threshold=0.4, interval=1, lr=0.0)
    for _ in range(5):
        _set_grad(x, [grad_norm * 0.6, grad_norm * 0.8])
        opt.step()
    assert opt.num_perturbations == 0 and opt.last_perturbation_step is None
    assert torch.equal(x.detach(), torch.tensor([3.0, 4.0]))
    assert float(opt.last_grad_norm) == pytest.approx(grad_norm, rel=1e-6)


@pytest.mark.parametrize("radius", [1e-3, 0.1, 2.0])
def test_noise_below_threshold_has_its_radius(radius):
    x0 = torch.tensor([3.0, 4.0, -1.0], dtype=torch.float64)
    x = torch.nn.Parameter(x0.clone())
    opt = PerturbedGD([x], torch.optim.SGD, radius=radius, threshold=0.4, interval=1, lr=0.0)
    _set_grad(x, [0.1, 0.2, 0.2])  # norm 0.3 <= 0.4
    opt.step()
    assert opt.num_perturbations == 1 and opt.last_perturbation_step == 0
    moved = float((x.detach() - x0).norm())
    assert 0 < moved <= radius * (1 + 1e-12)
    assert moved == pytest.approx(opt.last_noise_norm, rel=1e-12)


def test_noise_is_uniform_in_the_ball():
    # For a point uniform in the d-ball of radius r, (||xi|| / r)^d ~ Uniform(0, 1) (mean 1/2, sd 1/sqrt(12)),
    # and the direction is uniform on the sphere (mean 0). 4000 draws: sd of the means ~0.0046 and ~0.011.
    r, n = 0.5, 4000
    x = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    y = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = PerturbedGD([x, y], torch.optim.SGD, radius=r, seed=7, lr=0.0)
    draws = []
    for _ in range(n):
        with torch.no_grad():
            x.zero_()
            y.zero_()
        opt.perturb([x, y])
        draws.append(torch.cat([x.detach(), y.detach()]))
    xi = torch.stack(draws)
    u = (xi.norm(dim=1) / r) ** 3
    assert float(u.max()) <= 1.0
    assert float(u.mean()) == pytest.approx(0.5, abs=0.02)
    assert float((u < 0.25).double().mean()) == pytest.approx(0.25, abs=0.03)
    unit = xi / xi.norm(dim=1, keepdim=True)
    assert float(unit.mean(0).abs().max()) < 0.05


@pytest.mark.parametrize("interval", [1, 3, 4])
def test_at_most_once_per_interval(interval):
    x0 = torch.tensor([1.0, 2.0])
    x = torch.nn.Parameter(x0.clone())
    opt = PerturbedGD([x], torch.optim.SGD, radius=0.1, threshold=math.inf, interval=interval, lr=0.0)
    changed = []
    for _ in range(10):
        before = x.detach().clone()
        _set_grad(x, [1.0, 1.0])
        opt.step()
        changed.append(not torch.equal(before, x.detach()))
    expected = [t % interval == 0 for t in range(10)]
    assert changed == expected
    assert opt.num_perturbations == sum(expected) and opt.steps == 10


def test_interval_counts_from_the_last_perturbation():
    x = torch.nn.Parameter(torch.zeros(2))
    opt = PerturbedGD([x], torch.optim.SGD, radius=0.1, threshold=0.5, interval=3, lr=0.0)
    grads = [5.0, 0.1, 0.1, 5.0, 0.1, 0.1, 0.1]  # small at 1, 2, 4, 5, 6
    steps = []
    for t, g in enumerate(grads):
        _set_grad(x, [g, 0.0])
        n = opt.num_perturbations
        opt.step()
        if opt.num_perturbations > n:
            steps.append(t)
    assert steps == [1, 4]


def test_closure_regrads_at_the_perturbed_point():
    # f(x) = ||x||^2 / 2, grad = x: after the jump SGD must step from x + xi with gradient x + xi.
    lr = 0.25
    x0 = torch.tensor([0.01, -0.02], dtype=torch.float64)
    x = torch.nn.Parameter(x0.clone())
    opt = PerturbedGD([x], torch.optim.SGD, radius=0.5, threshold=1.0, interval=1, lr=lr)
    loss = opt.step(_quadratic_closure(opt, x))
    assert float(loss.detach()) == pytest.approx(0.5 * float(x0.square().sum()), rel=1e-12)  # loss before the jump
    assert opt.num_perturbations == 1
    # x_new = (1 - lr) (x0 + xi), so x_new / (1 - lr) - x0 is the noise, of norm last_noise_norm <= r.
    xi = x.detach() / (1 - lr) - x0
    assert float(xi.norm()) == pytest.approx(opt.last_noise_norm, rel=1e-9)


def test_escapes_a_strict_saddle_that_gradient_descent_converges_to():
    # f(a, b) = a^2 / 2 - b^2 / 2 + b^4 / 4: a saddle at 0 (f = 0), minima at (0, +-1) with f = -1/4.
    # Started on the stable manifold b = 0, gradient descent goes to the saddle; PGD leaves it.
    def f(v):
        return 0.5 * v[0] ** 2 - 0.5 * v[1] ** 2 + 0.25 * v[1] ** 4

    results = {}
    for name in ("sgd", "pgd"):
        v = torch.nn.Parameter(torch.tensor([1.0, 0.0], dtype=torch.float64))
        if name == "sgd":
            opt = torch.optim.SGD([v], lr=0.1)
        else:
            opt = PerturbedGD([v], torch.optim.SGD, radius=1e-3, threshold=1e-2, interval=20, seed=0, lr=0.1)
        closure = _quadratic_closure(opt, v, f)
        for _ in range(300):
            opt.step(closure)
        results[name] = float(f(v.detach()))
    assert abs(results["sgd"]) < 1e-12
    assert results["pgd"] == pytest.approx(-0.25, abs=1e-6)


def test_only_parameters_with_gradients_are_perturbed():
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(2))
    opt = PerturbedGD([a, b], torch.optim.SGD, radius=0.1, threshold=1.0, interval=1, lr=0.0)
    _set_grad(a, [0.0, 0.0, 0.0])
    opt.step()
    assert not torch.equal(a.detach(), torch.ones(3)) and torch.equal(b.detach(), torch.ones(2))


def test_seed_reproduces_noise_and_different_seeds_differ():
    def run(seed):
        x = torch.nn.Parameter(torch.zeros(5))
        opt = PerturbedGD([x], torch.optim.SGD, radius=1.0, threshold=math.inf, interval=1, seed=seed, lr=0.0)
        for _ in range(3):
            _set_grad(x, torch.zeros(5))
            opt.step()
        return x.detach().clone()

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    data = torch.randn(16, 4), torch.randn(16, 1)

    def make(m, seed):
        return PerturbedGD(m.parameters(), torch.optim.SGD, radius=0.05, threshold=math.inf, interval=2, seed=seed,
                           lr=0.05, momentum=0.9)

    def train(m, opt, n):
        for _ in range(n):
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(data[0]), data[1]).backward()
            opt.step()

    ref_model = copy.deepcopy(model)
    ref = make(ref_model, seed=3)
    train(ref_model, ref, 7)

    first = make(model, seed=3)
    train(model, first, 3)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(first.state_dict())
    resumed_model = copy.deepcopy(model)
    resumed_model.load_state_dict(saved_model)
    resumed = make(resumed_model, seed=99)  # the generator state comes from the state dict
    resumed.load_state_dict(saved_opt)
    assert resumed.param_groups is resumed.base_optimizer.param_groups
    train(resumed_model, resumed, 4)
    for p, q in zip(ref_model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)
    assert (resumed.num_perturbations, resumed.steps) == (ref.num_perturbations, ref.steps) == (4, 7)


def test_instance_as_base_and_shared_param_groups():
    x = torch.nn.Parameter(torch.tensor([1.0]))
    base = torch.optim.SGD([x], lr=0.5)
    opt = PerturbedGD([x], base, radius=0.1, threshold=0.0, interval=1)
    assert opt.param_groups is base.param_groups
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    _set_grad(x, [1.0])
    opt.step()
    sched.step()
    assert base.param_groups[0]["lr"] == pytest.approx(0.05)
    assert float(x.detach()) == pytest.approx(0.5)  # gradient 1 > threshold 0: plain SGD step


def test_bad_arguments_raise():
    x = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match=r"radius must be in \(0.0, inf\), got 0.0"):
        PerturbedGD([x], torch.optim.SGD, radius=0.0, lr=0.1)
    with pytest.raises(ValueError, match=r"threshold must be in \[0.0, inf\), got -1.0"):
        PerturbedGD([x], torch.optim.SGD, threshold=-1.0, lr=0.1)
    with pytest.raises(ValueError, match=r"interval must be in \[1, inf\), got 0"):
        PerturbedGD([x], torch.optim.SGD, interval=0, lr=0.1)
    with pytest.raises(TypeError, match="base_optimizer must be a torch.optim.Optimizer"):
        PerturbedGD([x], "sgd", lr=0.1)
    with pytest.raises(TypeError, match="cannot be applied to an optimizer instance"):
        PerturbedGD([x], torch.optim.SGD([x], lr=0.1), lr=0.1)
    other = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"params\[0\] \(shape \(2,\)\) is not held by base_optimizer"):
        PerturbedGD([other], torch.optim.SGD([x], lr=0.1))


# ----------------------------------------------------------------------------- PhasedRho


def test_phased_rho_values_at_boundaries():
    rho = PhasedRho(values=(0.05, 0.1, 0.5), boundaries=(10, 30))
    expected = [0.05] * 10 + [0.1] * 20 + [0.5] * 5
    assert [rho(t) for t in range(35)] == expected


def test_from_epochs_and_imagenet_lt_recipe():
    spe = 7
    rho = PhasedRho.for_reweighting(total_epochs=90, steps_per_epoch=spe, start=2 / 3)
    assert rho.boundaries == (5 * spe, 60 * spe)
    for epoch in range(90):
        want = 0.05 if epoch < 5 else 0.1 if epoch < 60 else 0.5
        assert rho(epoch * spe) == rho(epoch * spe + spe - 1) == want
    assert PhasedRho.from_epochs((0.1, 0.8), (3,), 4).boundaries == (12,)


@pytest.mark.parametrize(("total", "start"), [(200, 0.8), (200, 160), (90, 2 / 3), (10, 7)])
def test_rise_coincides_with_deferred_reweighting(total, start):
    from smoothopt.losses import DeferredReweighting

    drw = DeferredReweighting([100, 10, 1], total, start=start)
    spe = 3
    rho = PhasedRho.for_reweighting(total, spe, start=start, values=(0.1, 0.8), early_boundaries=())
    for epoch in range(total):
        assert (rho(epoch * spe) == 0.8) == drw.active(epoch)


def test_drives_sam_when_available():
    sam_mod = pytest.importorskip("smoothopt.sam")
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    rho = PhasedRho(values=(0.05, 0.5), boundaries=(2,))
    opt = sam_mod.SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=0.01, momentum=0.9)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for step in range(4):
        opt.step(closure)
        assert float(opt.last_perturbation_norm) == pytest.approx(rho(step), rel=1e-5)


@pytest.mark.parametrize(
    ("factory", "exc", "match"),
    [
        (lambda: PhasedRho((0.1, 0.2), (0,)), ValueError, r"boundaries\[0\] must be in \[1, inf\), got 0"),
        (lambda: PhasedRho((0.1, 0.2), (3, 5)), ValueError, "boundaries must hold len"),
        (lambda: PhasedRho((0.1, 0.2, 0.3), (5, 5)), ValueError, "strictly increasing"),
        (lambda: PhasedRho((0.1, -0.2), (5,)), ValueError, r"values\[1\] must be in \[0.0, inf\)"),
        (lambda: PhasedRho((), ()), ValueError, "at least one rho"),
        (lambda: PhasedRho((0.1,), ())(-1), ValueError, r"step must be in \[0, inf\), got -1"),
        (lambda: PhasedRho((0.1,), ())(1.5), TypeError, "step must be an integer"),
        (lambda: PhasedRho.from_epochs((0.1, 0.2), (3,), 0), ValueError, r"steps_per_epoch must be in \[1, inf\)"),
        (lambda: PhasedRho.for_reweighting(90, 10, start=60, early_boundaries=(60,)), ValueError, "before the"),
        (lambda: PhasedRho.for_reweighting(90, 10, early_boundaries=()), ValueError, "early_boundaries must hold"),
        (lambda: PhasedRho.for_reweighting(90, 10, values=(0.5,)), ValueError, "at least 2 rhos"),
        (lambda: PhasedRho.for_reweighting(90, 10, start=0), ValueError, "start must be after epoch 0"),
        (lambda: PhasedRho.for_reweighting(90, 10, start=1.5), ValueError, r"start must be in \(0.0, 1.0\)"),
    ],
)
def test_phased_rho_bad_arguments(factory, exc, match):
    with pytest.raises(exc, match=match):
        factory()


@pytest.mark.parametrize("module", [smoothopt.saddle.perturbed, smoothopt.saddle.rho])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_grad_scaler_threshold_sees_unscaled_gradients():
    # The scaled gradient (x 2^10) is far above the threshold, the true one (norm 0.05) below it.
    try:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    except (AttributeError, RuntimeError, TypeError) as err:  # pragma: no cover - old torch
        pytest.skip(f"no CPU GradScaler: {err}")
    x = torch.nn.Parameter(torch.tensor([0.05, 0.0]))
    opt = PerturbedGD([x], torch.optim.SGD, radius=0.1, threshold=0.1, interval=1, lr=0.0)
    opt.zero_grad()
    scaler.scale(0.5 * x.square().sum()).backward()
    scaler.step(opt)
    scaler.update()
    assert float(opt.last_grad_norm) == pytest.approx(0.05, rel=1e-5)
    assert opt.num_perturbations == 1

"""The mathematics and the optimizer contract of :class:`smoothopt.SAM` (plain SAM and ASAM).

Golden values are derived in the tests themselves: the perturbation from its closed form on a quadratic, the
trajectories from a per-tensor reference loop written below in float64.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from smoothopt.sam import SAM


def _quadratic_params(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return [nn.Parameter(torch.randn(shape, generator=g, dtype=dtype)) for shape in [(3, 4), (4,), (2, 2, 2)]]


def _quadratic_loss(params, scales):
    # L(w) = sum_i 0.5 * s_i * ||w_i||^2, gradient s_i * w_i
    return sum(0.5 * s * (p**2).sum() for p, s in zip(params, scales))


def _mlp(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def _batches(n, dtype=torch.float64):
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(16, 5, generator=g, dtype=dtype), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("rho", [0.05, 0.5])
def test_perturbation_is_rho_times_normalised_gradient(rho):
    params = _quadratic_params()
    scales = [1.0, 2.0, 3.0]
    w0 = [p.detach().clone() for p in params]
    sam = SAM(params, torch.optim.SGD, rho=rho, lr=0.1)
    _quadratic_loss(params, scales).backward()
    g = [s * w for s, w in zip(scales, w0)]
    norm = math.sqrt(sum(float((t**2).sum()) for t in g))
    assert sam.first_step() is True
    for p, w, gi in zip(params, w0, g):
        torch.testing.assert_close(p.detach() - w, rho * gi / norm, rtol=1e-12, atol=1e-14)
    assert float(sam.last_perturbation_norm) == pytest.approx(rho, rel=1e-12)
    assert float(sam.last_grad_norm) == pytest.approx(norm, rel=1e-12)


@pytest.mark.parametrize("eta", [0.0, 0.01, 0.5])
def test_asam_perturbation_formula(eta):
    # Kwon et al. 2021, Eq. (12): eps = rho * T^2 g / ||T g||, T = |w| + eta elementwise
    params = _quadratic_params()
    scales = [1.0, -2.0, 0.5]
    w0 = [p.detach().clone() for p in params]
    sam = SAM(params, torch.optim.SGD, rho=0.1, adaptive=True, eta=eta, lr=0.1)
    _quadratic_loss(params, scales).backward()
    g = [s * w for s, w in zip(scales, w0)]
    t = [w.abs() + eta for w in w0]
    norm = math.sqrt(sum(float(((ti * gi) ** 2).sum()) for ti, gi in zip(t, g)))
    sam.first_step()
    for p, w, gi, ti in zip(params, w0, g, t):
        torch.testing.assert_close(p.detach() - w, 0.1 * ti**2 * gi / norm, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("adaptive", [False, True])
def test_restore_is_bit_exact(dtype, adaptive):
    model = _mlp(dtype)
    w0 = [p.detach().clone() for p in model.parameters()]
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.7, adaptive=adaptive, lr=0.0)
    (x, y), = _batches(1, dtype)
    nn.functional.cross_entropy(model(x), y).backward()
    sam.first_step(zero_grad=True)
    assert any(not torch.equal(p, w) for p, w in zip(model.parameters(), w0))
    nn.functional.cross_entropy(model(x), y).backward()
    sam.step()
    for p, w in zip(model.parameters(), w0):
        assert torch.equal(p, w)


def test_parameter_with_gradient_in_one_pass_only():
    a = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    b = nn.Parameter(torch.tensor([3.0, -1.0], dtype=torch.float64))
    sam = SAM([a, b], torch.optim.SGD, rho=0.1, lr=0.0)
    a0, b0 = a.detach().clone(), b.detach().clone()
    (a**2).sum().backward()  # first pass: only a has a gradient
    sam.first_step(zero_grad=True)
    assert not torch.equal(a, a0) and torch.equal(b, b0)
    (b**2).sum().backward()  # second pass: only b has a gradient
    sam.step()
    assert torch.equal(a, a0) and torch.equal(b, b0)


def _reference_sam(model, base, rho, batches, adaptive=False, eta=0.01):
    """Per-tensor SAM written from the paper's equations, with a copy-back restore."""
    params = list(model.parameters())
    losses = []
    for x, y in batches:
        base.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            t = [(p.abs() + eta) if adaptive else torch.ones_like(p) for p in params]
            norm = torch.sqrt(sum(((ti * p.grad) ** 2).sum() for ti, p in zip(t, params)))
            saved = [p.clone() for p in params]
            for ti, p in zip(t, params):
                p.add_(rho * ti**2 * p.grad / (norm + 1e-12))
        base.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
        base.step()
    return losses


@pytest.mark.parametrize(
    "base_cls, kwargs",
    [(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}),
     (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1})],
    ids=["sgd_momentum", "adamw"],
)
@pytest.mark.parametrize("api", ["closure", "two_step"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_twenty_steps_match_reference(base_cls, kwargs, api, adaptive):
    batches = _batches(20)
    ref_model = _mlp()
    ref_losses = _reference_sam(ref_model, base_cls(ref_model.parameters(), **kwargs), 0.2, batches, adaptive)
    model = _mlp()
    sam = SAM(model.parameters(), base_cls, rho=0.2, adaptive=adaptive, **kwargs)
    losses = []
    for x, y in batches:
        if api == "closure":
            def closure(x=x, y=y):
                sam.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss
            losses.append(sam.step(closure).item())
        else:
            sam.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            losses.append(loss.item())
            sam.first_step(zero_grad=True)
            nn.functional.cross_entropy(model(x), y).backward()
            sam.second_step()
    # float64 throughout; the only difference is the order of the norm's summation (tolerance 1e-10)
    assert losses == pytest.approx(ref_losses, rel=1e-10, abs=1e-12)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def _run(model, sam, batches):
    for x, y in batches:
        def closure(x=x, y=y):
            sam.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss
        sam.step(closure)


@pytest.mark.parametrize("base_cls, kwargs", [(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
                                              (torch.optim.Adam, {"lr": 0.01})], ids=["sgd", "adam"])
def test_state_dict_round_trip_continues_bit_for_bit(base_cls, kwargs, tmp_path):
    batches = _batches(10, torch.float32)
    model = _mlp(torch.float32)
    sam = SAM(model.parameters(), base_cls, rho=lambda step: 0.05 * (1 + step), **kwargs)
    _run(model, sam, batches)

    resumed_model = _mlp(torch.float32)
    resumed = SAM(resumed_model.parameters(), base_cls, rho=lambda step: 0.05 * (1 + step), **kwargs)
    _run(resumed_model, resumed, batches[:5])
    torch.save({"model": resumed_model.state_dict(), "opt": resumed.state_dict()}, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    fresh_model = _mlp(torch.float32, seed=3)
    fresh_model.load_state_dict(ckpt["model"])
    fresh = SAM(fresh_model.parameters(), base_cls, rho=lambda step: 0.05 * (1 + step), **kwargs)
    fresh.load_state_dict(ckpt["opt"])
    assert fresh.sam_steps == 5 and fresh.param_groups is fresh.base_optimizer.param_groups
    assert len(fresh.base_optimizer.state) == len(list(model.parameters()))
    _run(fresh_model, fresh, batches[5:])
    for p, q in zip(model.parameters(), fresh_model.parameters()):
        assert torch.equal(p, q)


def test_callable_rho_receives_completed_steps():
    seen = []

    def rho(step):
        seen.append(step)
        return 0.1

    model = _mlp()
    sam = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=0.1)
    _run(model, sam, _batches(3))
    assert seen == [0, 1, 2]


def test_per_group_rho_zero_skips_group():
    model = _mlp()
    first, rest = list(model[0].parameters()), [p for m in list(model)[1:] for p in m.parameters()]
    sam = SAM([{"params": first, "rho": 0.0}, {"params": rest}], torch.optim.SGD, rho=0.3, lr=0.1)
    w_first = [p.detach().clone() for p in first]
    (x, y), = _batches(1)
    nn.functional.cross_entropy(model(x), y).backward()
    sam.first_step()
    assert all(torch.equal(p, w) for p, w in zip(first, w_first))
    assert float(sam.last_perturbation_norm) == pytest.approx(0.3, rel=1e-12)


def test_param_groups_shared_with_base_and_scheduler_reaches_it():
    model = _mlp()
    sam = SAM(model.parameters(), torch.optim.SGD, lr=1.0, momentum=0.9)
    assert sam.param_groups is sam.base_optimizer.param_groups
    sched = torch.optim.lr_scheduler.StepLR(sam, step_size=1, gamma=0.5)
    (x, y), = _batches(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the scheduler-order warning would fail the test
        for _ in range(2):
            sam.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            sam.first_step(zero_grad=True)
            nn.functional.cross_entropy(model(x), y).backward()
            sam.step()
            sched.step()
        for _ in range(2):
            sam.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            sam.first_step(zero_grad=True)
            nn.functional.cross_entropy(model(x), y).backward()
            sam.second_step()
            sched.step()
    assert sam.base_optimizer.param_groups[0]["lr"] == pytest.approx(1.0 / 16)


def test_step_hooks_fire_once_per_sam_step():
    model = _mlp()
    sam = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    calls = []
    sam.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    sam.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    _run(model, sam, _batches(2))
    assert calls == ["pre", "post", "pre", "post"]


def test_add_param_group_reaches_base():
    model = _mlp()
    extra = nn.Parameter(torch.ones(3, dtype=torch.float64))
    sam = SAM(list(model.parameters()), torch.optim.SGD, rho=0.1, lr=0.1)
    sam.add_param_group({"params": [extra], "lr": 0.5, "rho": 0.2})
    assert sam.param_groups is sam.base_optimizer.param_groups
    assert sam.base_optimizer.param_groups[-1]["lr"] == 0.5 and sam.param_groups[-1]["rho"] == 0.2
    assert sam.param_groups[-1]["adaptive"] is False
    extra.grad = torch.ones(3, dtype=torch.float64)
    sam.first_step()
    sam.step()
    torch.testing.assert_close(extra.detach(), torch.full((3,), 0.5, dtype=torch.float64))


def test_instance_base_and_subset_of_its_parameters():
    model = _mlp()
    base = torch.optim.SGD(model.parameters(), lr=0.0)
    head = list(model[-1].parameters())
    sam = SAM(head, base, rho=0.1)
    assert sam.base_optimizer is base and sam.param_groups is base.param_groups
    w0 = [p.detach().clone() for p in model.parameters()]
    (x, y), = _batches(1)
    nn.functional.cross_entropy(model(x), y).backward()
    sam.first_step(zero_grad=True)
    changed = [not torch.equal(p, w) for p, w in zip(model.parameters(), w0)]
    assert changed == [False, False, False, False, True, True]
    nn.functional.cross_entropy(model(x), y).backward()
    sam.step()
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), w0))


def test_sdat_style_subset_with_other_modules_in_second_pass():
    # SAM over the head only; the second backward also fills gradients of the body, which the base steps.
    model = _mlp()
    body = [p for m in list(model)[:-1] for p in m.parameters()]
    head = list(model[-1].parameters())
    sam = SAM(head, torch.optim.SGD, rho=0.1, lr=0.1)
    body_opt = torch.optim.SGD(body, lr=0.1)
    (x, y), = _batches(1)
    nn.functional.cross_entropy(model(x), y).backward()
    sam.first_step(zero_grad=True)
    body_opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    sam.second_step()
    body_opt.step()
    assert sam.sam_steps == 1


@pytest.mark.parametrize("rho, exc, msg", [
    (-1.0, ValueError, r"rho must be in \[0.0, inf\), got -1.0"),
    (float("nan"), ValueError, "rho must be in .* got nan"),
    ("0.1", TypeError, "rho must be a real number"),
])
def test_bad_rho(rho, exc, msg):
    with pytest.raises(exc, match=msg):
        SAM(_mlp().parameters(), torch.optim.SGD, rho=rho, lr=0.1)


def test_callable_rho_returning_negative_fails_at_step():
    model = _mlp()
    sam = SAM(model.parameters(), torch.optim.SGD, rho=lambda step: -0.5, lr=0.1)
    (x, y), = _batches(1)
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError, match=r"rho\(0\) must be in \[0.0, inf\), got -0.5"):
        sam.first_step()


@pytest.mark.parametrize("base", [torch.nn.Linear, "sgd", None, 3])
def test_bad_base_optimizer(base):
    with pytest.raises(TypeError, match="base_optimizer must be a torch.optim.Optimizer subclass or instance"):
        SAM(_mlp().parameters(), base, lr=0.1)


def test_kwargs_with_instance_rejected():
    model = _mlp()
    with pytest.raises(TypeError, match="cannot be applied to an optimizer instance"):
        SAM(model.parameters(), torch.optim.SGD(model.parameters(), lr=0.1), lr=0.2)


def test_parameters_not_held_by_base():
    model = _mlp()
    base = torch.optim.SGD(model[0].parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"params\[2\] \(shape \(8, 8\)\) is not held by base_optimizer SGD"):
        SAM(model.parameters(), base)


def test_step_without_closure_and_first_step():
    sam = SAM(_mlp().parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="call first_step\\(\\) after the first backward pass"):
        sam.step()
    with pytest.raises(RuntimeError, match="call first_step"):
        sam.second_step()


def test_first_step_twice():
    model = _mlp()
    sam = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    (x, y), = _batches(1)
    nn.functional.cross_entropy(model(x), y).backward()
    sam.first_step()
    with pytest.raises(RuntimeError, match="first_step\\(\\) was called twice"):
        sam.first_step()


def test_restore_abandons_a_step_and_a_failing_closure_leaves_weights_clean():
    model = _mlp()
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    (x, y), = _batches(1)
    before = [p.detach().clone() for p in model.parameters()]
    nn.functional.cross_entropy(model(x), y).backward()
    sam.first_step()
    assert sam.is_perturbed and any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    sam.restore()
    assert not sam.is_perturbed and sam.sam_steps == 0 and not sam.base_optimizer.state
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    sam.restore()  # nothing perturbed: a no-op
    # A second closure that raises: the weights are back at w, no step was taken, the next step works.
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise FloatingPointError("loss became NaN")
        sam.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(FloatingPointError, match="NaN"):
        sam.step(closure)
    assert not sam.is_perturbed and sam.sam_steps == 0
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    sam.step(closure)
    assert sam.sam_steps == 1 and any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_sparse_gradients_take_the_per_tensor_path():
    torch.manual_seed(0)
    emb = nn.Embedding(10, 4, sparse=True).double()
    lin = nn.Linear(4, 1).double()
    params = list(emb.parameters()) + list(lin.parameters())
    w0 = [p.detach().clone() for p in params]
    sam = SAM(params, torch.optim.SGD, rho=0.1, lr=0.0)
    idx = torch.tensor([1, 3, 3])
    lin(emb(idx)).sum().backward()
    dense_grads = [emb.weight.grad.to_dense()] + [p.grad for p in lin.parameters()]
    norm = math.sqrt(sum(float((g**2).sum()) for g in dense_grads))
    sam.first_step(zero_grad=True)
    torch.testing.assert_close(emb.weight.detach() - w0[0], 0.1 * dense_grads[0] / norm)
    lin(emb(idx)).sum().backward()
    sam.step()
    assert all(torch.equal(p, w) for p, w in zip(params, w0))

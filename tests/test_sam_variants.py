"""GSAM, LookSAM, perturbation schedules, norm-statistics freezing and mixed precision for the SAM family.

Expected values are computed in each test from the papers' formulas, on float64 quadratics or small models.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from smoothopt.sam import GSAM, SAM, EveryKSteps, LookSAM, RandomSteps, freeze_norm_stats, per_replica_first_pass


def _quadratic(dtype=torch.float64):
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(6, 6, generator=gen, dtype=dtype)
    h = a @ a.T + torch.eye(6, dtype=dtype)  # positive definite Hessian
    b = torch.randn(6, generator=gen, dtype=dtype)
    w = nn.Parameter(torch.randn(6, generator=gen, dtype=dtype))

    def grad(v):
        return h @ v - b

    def closure_for(opt):
        def closure():
            opt.zero_grad()
            loss = 0.5 * w @ h @ w - b @ w + 0.1 * (w**4).sum()
            loss.backward()
            return loss
        return closure

    def full_grad(v):
        return grad(v) + 0.4 * v**3

    return w, full_grad, closure_for


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_gsam_descent_direction(alpha):
    w, grad, closure_for = _quadratic()
    w0 = w.detach().clone()
    gsam = GSAM([w], torch.optim.SGD, rho=0.2, alpha=alpha, lr=0.05)
    gsam.step(closure_for(gsam))
    g = grad(w0)
    g_p = grad(w0 + 0.2 * g / g.norm())
    g_perp = g - (g @ g_p) / (g_p @ g_p) * g_p
    expected = w0 - 0.05 * (g_p - alpha * g_perp)
    torch.testing.assert_close(w.detach(), expected, rtol=1e-12, atol=1e-12)


def test_gsam_direction_lowers_surrogate_gap_to_first_order():
    # <grad f_perp, grad f_p> = 0: subtracting alpha * grad f_perp leaves f_p unchanged to first order
    w, grad, _ = _quadratic()
    g = grad(w.detach())
    g_p = grad(w.detach() + 0.2 * g / g.norm())
    g_perp = g - (g @ g_p) / (g_p @ g_p) * g_p
    assert abs(float(g_perp @ g_p)) < 1e-10 * float(g.norm() * g_p.norm())


@pytest.mark.parametrize("k", [1, 3])
def test_looksam_refresh_and_reuse(k):
    w, grad, closure_for = _quadratic()
    opt = LookSAM([w], torch.optim.SGD, rho=0.1, k=k, alpha=0.7, lr=0.02)
    calls = []
    closure = closure_for(opt)

    def counting():
        calls.append(1)
        return closure()

    v = w.detach().clone()
    g_v = None
    for t in range(7):
        opt.step(counting)
        g = grad(v)
        if t % k == 0:
            g_s = grad(v + 0.1 * g / g.norm())
            g_v = g_s - (g_s @ g) / (g @ g) * g  # Eq. (6) of Liu et al. 2022
            d = g_s
        else:
            d = g + 0.7 * g.norm() / g_v.norm() * g_v  # Eq. (7)
        v = v - 0.02 * d
        torch.testing.assert_close(w.detach(), v, rtol=1e-11, atol=1e-12)
    refreshes = len([t for t in range(7) if t % k == 0])
    assert len(calls) == 7 + refreshes  # one forward/backward between refreshes


def test_looksam_state_round_trip_keeps_g_v():
    w, _, closure_for = _quadratic()
    opt = LookSAM([w], torch.optim.SGD, rho=0.1, k=4, lr=0.02, momentum=0.9)
    for _ in range(2):
        opt.step(closure_for(opt))
    sd = copy.deepcopy(opt.state_dict())  # state_dict() returns live tensors, as torch's optimizers do
    w2 = nn.Parameter(w.detach().clone())
    opt2 = LookSAM([w2], torch.optim.SGD, rho=0.1, k=4, lr=0.02, momentum=0.9)
    opt2.load_state_dict(sd)
    assert torch.equal(opt2.state[w2]["g_v"], opt.state[w]["g_v"])
    for _ in range(4):
        opt.step(closure_for(opt))
    # the second copy needs its own closure over w2
    h_w = w2

    def closure2():
        opt2.zero_grad()
        gen = torch.Generator().manual_seed(4)
        a = torch.randn(6, 6, generator=gen, dtype=torch.float64)
        h = a @ a.T + torch.eye(6, dtype=torch.float64)
        b = torch.randn(6, generator=gen, dtype=torch.float64)
        loss = 0.5 * h_w @ h @ h_w - b @ h_w + 0.1 * (h_w**4).sum()
        loss.backward()
        return loss

    for _ in range(4):
        opt2.step(closure2)
    assert torch.equal(w, w2)


@pytest.mark.parametrize("bad, msg", [({"k": 0}, r"k must be in \[1, inf\), got 0"),
                                      ({"alpha": -1.0}, r"alpha must be in \[0.0, inf\), got -1.0")])
def test_looksam_bad_arguments(bad, msg):
    with pytest.raises(ValueError, match=msg):
        LookSAM([nn.Parameter(torch.ones(2))], torch.optim.SGD, lr=0.1, **bad)


def test_gsam_bad_alpha():
    with pytest.raises(ValueError, match=r"alpha must be in \[0.0, inf\), got nan"):
        GSAM([nn.Parameter(torch.ones(2))], torch.optim.SGD, alpha=float("nan"), lr=0.1)


@pytest.mark.parametrize("k", [2, 5])
def test_every_k_steps_costs_one_plus_one_over_k(k):
    w, grad, closure_for = _quadratic()
    sam = SAM([w], torch.optim.SGD, rho=0.1, lr=0.02, schedule=EveryKSteps(k))
    closure = closure_for(sam)
    calls = []

    def counting():
        calls.append(1)
        return closure()

    v = w.detach().clone()
    for t in range(10):
        sam.step(counting)
        g = grad(v)
        d = grad(v + 0.1 * g / g.norm()) if t % k == 0 else g  # plain SGD on the other steps
        v = v - 0.02 * d
    torch.testing.assert_close(w.detach(), v, rtol=1e-11, atol=1e-12)
    assert len(calls) == 10 + 10 // k


def test_random_steps_reproducible_and_near_p():
    a, b = RandomSteps(0.3, seed=7), RandomSteps(0.3, seed=7)
    draws = [a(t) for t in range(2000)]
    assert draws == [b(t) for t in range(2000)]
    assert draws != [RandomSteps(0.3, seed=8)(t) for t in range(2000)]
    # binomial(2000, 0.3): sd 20.5, so +-5 sd is [497, 703]
    assert 497 <= sum(draws) <= 703
    assert not any(RandomSteps(0.0)(t) for t in range(100)) and all(RandomSteps(1.0)(t) for t in range(100))


def test_schedule_bad_arguments():
    with pytest.raises(ValueError, match=r"p must be in \[0.0, 1.0\], got 1.5"):
        RandomSteps(1.5)
    with pytest.raises(ValueError, match=r"k must be in \[1, inf\), got 0"):
        EveryKSteps(0)
    with pytest.raises(TypeError, match="schedule must be a callable"):
        SAM([nn.Parameter(torch.ones(2))], torch.optim.SGD, lr=0.1, schedule=3)


def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def test_bn_stats_untouched_by_second_pass():
    model = _bn_model()
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    x, y = torch.randn(8, 2, 6, 6), torch.randint(0, 3, (8,))
    reference = _bn_model()
    reference.load_state_dict(model.state_dict())

    nn.functional.cross_entropy(model(x), y).backward()
    reference(x)  # the clean pass alone updates these statistics
    bn = model[1]
    expected = {k: v.clone() for k, v in bn.named_buffers()}
    sam.first_step(zero_grad=True)
    with freeze_norm_stats(model):
        out_frozen = model(x)
        nn.functional.cross_entropy(out_frozen, y).backward()
    for k, v in bn.named_buffers():
        assert torch.equal(v, expected[k]), k
    assert torch.equal(bn.running_mean, reference[1].running_mean)
    assert int(bn.num_batches_tracked) == 1 and bn.track_running_stats
    # inside the block the layer still normalises with the batch statistics (training-mode loss)
    with torch.no_grad():
        normed = model[1](model[0](x))
        per_channel_mean = normed.mean(dim=(0, 2, 3))
    assert per_channel_mean.abs().max() < 1e-5 + bn.bias.abs().max()
    sam.step()


def test_freeze_norm_stats_custom_module_and_eval_mode():
    class Tracker(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("running_mean", torch.zeros(3))

        def forward(self, x):
            self.running_mean.add_(x.mean(0))
            return x

    model = nn.Sequential(Tracker(), nn.BatchNorm1d(3))
    model(torch.randn(4, 3))
    model[1].eval()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3)
    eval_out = model[1](x)
    with freeze_norm_stats(model):
        model(torch.randn(4, 3))
        torch.testing.assert_close(model[1](x), eval_out)  # eval mode keeps using running stats
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k


def _scaled_setup(rho=0.1, dtype=torch.float32):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).to(dtype)
    sam = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 4, dtype=dtype), torch.randn(16, 2, dtype=dtype)
    return model, sam, x, y


def _gradscaler_step(model, sam, scaler, x, y, inject_inf=False, unscale_before_step=False):
    sam.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    scaler.scale(loss).backward()
    sam.first_step(zero_grad=True)
    scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
    if inject_inf:
        model[0].weight.grad[0, 0] = float("inf")
    if unscale_before_step:  # e.g. to clip the descent gradient
        scaler.unscale_(sam)
    scaler.step(sam)
    scaler.update()


@pytest.mark.parametrize("unscale_before_step", [False, True])
def test_gradscaler_step_matches_unscaled_sam(unscale_before_step):
    model, sam, x, y = _scaled_setup(dtype=torch.float64)
    ref_model, ref_sam, _, _ = _scaled_setup(dtype=torch.float64)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for _ in range(3):
        _gradscaler_step(model, sam, scaler, x, y, unscale_before_step=unscale_before_step)

        def closure():
            ref_sam.zero_grad()
            loss = nn.functional.mse_loss(ref_model(x), y)
            loss.backward()
            return loss
        ref_sam.step(closure)
    # the scale is a power of two, so unscaling is exact; the perturbation differs by rounding only (float64)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_gradscaler_inf_step_leaves_weights_exactly_restored():
    model, sam, x, y = _scaled_setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    _gradscaler_step(model, sam, scaler, x, y)
    w_before = [p.detach().clone() for p in model.parameters()]
    momentum = [sam.base_optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    steps = sam.sam_steps
    _gradscaler_step(model, sam, scaler, x, y, inject_inf=True)
    for p, w, m in zip(model.parameters(), w_before, momentum):
        assert torch.equal(p, w)
        assert torch.equal(sam.base_optimizer.state[p]["momentum_buffer"], m)
    assert scaler.get_scale() == 2.0**9 and sam.sam_steps == steps + 1
    assert not hasattr(sam, "found_inf")


def test_inf_in_first_pass_restores_exactly():
    model, sam, x, y = _scaled_setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    w_before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
    model[2].bias.grad[0] = float("nan")
    sam.first_step(zero_grad=True)
    scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
    scaler.step(sam)
    scaler.update()
    for p, w in zip(model.parameters(), w_before):
        assert torch.equal(p, w)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_grad_norm_does_not_overflow(dtype):
    # ||g|| = 300 * 1000 = 3e5 > float16 max (65504); squares overflow already at 256
    p = nn.Parameter(torch.zeros(1000, 1000, dtype=dtype))
    sam = SAM([p], torch.optim.SGD, rho=0.05, lr=0.0)
    p.grad = torch.full_like(p, 300.0)
    sam.first_step()
    assert torch.isfinite(p).all()
    assert float(sam.last_grad_norm) == pytest.approx(3e5, rel=1e-3)
    torch.testing.assert_close(p.detach().float(), torch.full((1000, 1000), 0.05 / 1000), rtol=1e-2, atol=0)
    sam.step()
    assert torch.equal(p, torch.zeros_like(p))


def test_per_replica_first_pass_syncs_whenever_the_pass_feeds_the_descent():
    class FakeDDP(nn.Linear):
        def __init__(self):
            super().__init__(2, 1)
            self.unsynced = 0

        @contextlib.contextmanager
        def no_sync(self):
            self.unsynced += 1
            yield

    model = FakeDDP()
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, schedule=EveryKSteps(2))
    x = torch.randn(4, 2)
    seen = []

    def closure():
        sam.zero_grad()
        before = model.unsynced
        with per_replica_first_pass(model, sam):
            loss = model(x).pow(2).mean()
            loss.backward()
        seen.append(model.unsynced - before)
        return loss

    for _ in range(3):
        sam.step(closure)
    # step 0: clean pass unsynced, perturbed pass synced; step 1 (no perturbation): synced; step 2 as step 0
    assert seen == [1, 0, 0, 1, 0]
    with per_replica_first_pass(nn.Linear(2, 1), sam):  # a module without no_sync is left alone
        pass


_VARIANTS = {
    "asam": lambda ps: SAM(ps, torch.optim.SGD, rho=0.5, adaptive=True, lr=0.05, momentum=0.9),
    "gsam": lambda ps: GSAM(ps, torch.optim.AdamW, rho=0.1, alpha=0.2, lr=0.01),
    "looksam": lambda ps: LookSAM(ps, torch.optim.SGD, rho=0.1, k=3, lr=0.05, momentum=0.9),
    "random": lambda ps: SAM(ps, torch.optim.SGD, rho=0.1, lr=0.05, momentum=0.9, schedule=RandomSteps(0.5, 3)),
    "every3": lambda ps: SAM(ps, torch.optim.Adam, rho=0.1, lr=0.01, schedule=EveryKSteps(3)),
}


@pytest.mark.parametrize("name", sorted(_VARIANTS))
def test_every_variant_resumes_bit_for_bit(name):
    gen = torch.Generator().manual_seed(6)
    batches = [(torch.randn(8, 4, generator=gen), torch.randn(8, 2, generator=gen)) for _ in range(8)]

    def run(model, opt, data):
        for x, y in data:
            def closure(x=x, y=y):
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                return loss
            opt.step(closure)

    def fresh():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        return model, _VARIANTS[name](list(model.parameters()))

    model, opt = fresh()
    run(model, opt, batches)
    half_model, half_opt = fresh()
    run(half_model, half_opt, batches[:4])
    ckpt = copy.deepcopy({"model": half_model.state_dict(), "opt": half_opt.state_dict()})
    resumed_model, resumed_opt = fresh()
    resumed_model.load_state_dict(ckpt["model"])
    resumed_opt.load_state_dict(ckpt["opt"])
    run(resumed_model, resumed_opt, batches[4:])
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)

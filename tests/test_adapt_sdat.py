"""SDAT step: SAM on the task loss only, the discriminator stepped by its own optimizer."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smoothopt.adapt import DANNLoss, DomainDiscriminator, GradientReversal, SDATStep, sdat_step
from smoothopt.sam import SAM


def _setup(seed=0, lr=0.0, rho=0.05):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    disc = DomainDiscriminator(3, hidden=(5,), batch_norm=False, dropout=0.0)
    grl = GradientReversal("constant", high=1.0)
    adv_fn = DANNLoss(disc, grl)
    sam = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr)
    d_opt = torch.optim.SGD(disc.parameters(), lr=lr)
    x_s, y_s, x_t = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,)), torch.randn(8, 4)
    model.double()
    disc.double()
    x_t = x_t.double()
    return model, disc, grl, adv_fn, sam, d_opt, (x_s, y_s, x_t)


def _closure(model, adv_fn, batch, record=None):
    x_s, y_s, x_t = batch

    def closure(need_adversarial):
        if record is not None:
            record.append([p.detach().clone() for p in model.parameters()])
        z = model(torch.cat([x_s, x_t]))
        task = F.cross_entropy(z[:8], y_s)
        adv = adv_fn(z[:8], z[8:]) if need_adversarial else None
        return task, adv

    return closure


def _flat(params):
    return torch.cat([p.reshape(-1) for p in params])


@pytest.mark.parametrize("adversarial_at", ["perturbed", "clean"])
def test_sdat_perturbs_only_classifier_and_restores_exactly(adversarial_at):
    model, disc, _, adv_fn, sam, d_opt, batch = _setup(lr=0.0, rho=0.05)
    w0 = [p.detach().clone() for p in model.parameters()]
    phi0 = [p.detach().clone() for p in disc.parameters()]
    # g = grad of the task loss at w0, the ascent direction of Eq. 6
    task, _ = _closure(model, adv_fn, batch)(False)
    g = _flat(torch.autograd.grad(task, list(model.parameters())))
    disc_seen = []
    record = []

    def closure(need_adversarial):
        disc_seen.append([p.detach().clone() for p in disc.parameters()])
        return _closure(model, adv_fn, batch, record)(need_adversarial)

    sdat_step(closure, sam, d_opt, adversarial_at=adversarial_at)
    # second pass ran at w0 + rho g / ||g|| (float64: agreement to 1e-12)
    torch.testing.assert_close(_flat(record[1]), _flat(w0) + 0.05 * g / g.norm(), rtol=0, atol=1e-12)
    # the discriminator was never perturbed
    for seen in disc_seen:
        assert all(torch.equal(a, b) for a, b in zip(seen, phi0))
    # lr = 0: weights restored bit for bit
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), w0))
    assert all(torch.equal(p, q) for p, q in zip(disc.parameters(), phi0))


@pytest.mark.parametrize("adversarial_at", ["perturbed", "clean"])
@pytest.mark.parametrize("trade_off", [0.0, 0.7])
def test_sdat_update_matches_equation(adversarial_at, trade_off):
    """With SGD(lr=1): w1 = w0 - (dE(w0 + e) + mu dD(w')), phi1 = phi0 - mu dD(w'), w' per option."""
    rho = 0.05
    model, disc, _, adv_fn, sam, d_opt, batch = _setup(lr=1.0, rho=rho)
    params, dparams = list(model.parameters()), list(disc.parameters())
    w0 = [p.detach().clone() for p in params]
    closure = _closure(model, adv_fn, batch)

    # reference, by hand
    task, _ = closure(False)
    g = torch.autograd.grad(task, params)
    norm = _flat(g).norm()
    with torch.no_grad():
        for p, gi in zip(params, g):
            p.add_(rho * gi / norm)
    task_p, adv_p = closure(True)
    g_task = torch.autograd.grad(task_p, params, retain_graph=True)
    g_adv_p = torch.autograd.grad(trade_off * adv_p, params + dparams)
    with torch.no_grad():
        for p, w in zip(params, w0):
            p.copy_(w)
    _, adv_c = closure(True)
    g_adv_c = torch.autograd.grad(trade_off * adv_c, params + dparams)
    g_adv = g_adv_p if adversarial_at == "perturbed" else g_adv_c
    expected_w = [w - (a + b) for w, a, b in zip(w0, g_task, g_adv[: len(params)])]
    expected_phi = [p.detach() - b for p, b in zip(dparams, g_adv[len(params):])]

    losses = SDATStep(sam, d_opt, trade_off=trade_off, adversarial_at=adversarial_at)(closure)
    for p, e in zip(params, expected_w):
        torch.testing.assert_close(p.detach(), e, rtol=0, atol=1e-12)
    for p, e in zip(dparams, expected_phi):
        torch.testing.assert_close(p.detach(), e, rtol=0, atol=1e-12)
    torch.testing.assert_close(losses.task_loss, task.detach())


def test_sdat_advances_attached_grl_once_per_step():
    model, _, grl, adv_fn, sam, d_opt, batch = _setup(lr=0.01)
    grl.attach(d_opt)
    for _ in range(3):
        sdat_step(_closure(model, adv_fn, batch), sam, d_opt)
    assert int(grl.num_steps) == 3


def test_sdat_errors():
    model, disc, _, adv_fn, sam, _, batch = _setup()
    overlapping = torch.optim.SGD(list(disc.parameters()) + [next(model.parameters())], lr=0.1)
    with pytest.raises(ValueError, match="share 1 parameter"):
        sdat_step(_closure(model, adv_fn, batch), sam, overlapping)
    d_opt = torch.optim.SGD(disc.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="no adversarial loss"):
        sdat_step(lambda need: (_closure(model, adv_fn, batch)(False)[0], None), sam, d_opt)
    with pytest.raises(ValueError, match="trade_off"):
        SDATStep(sam, d_opt, trade_off=-1.0)


@pytest.mark.parametrize("adversarial_at", ["perturbed", "clean"])
def test_sdat_with_grad_scaler_matches_unscaled(adversarial_at):
    """A power-of-two loss scale cancels exactly; the update equals the unscaled one."""
    results = []
    for use_scaler in (False, True):
        model, disc, _, adv_fn, sam, d_opt, batch = _setup(lr=0.5)
        model.float()
        disc.float()
        batch = (batch[0].float(), batch[1], batch[2].float())
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if use_scaler else None
        sdat_step(_closure(model, adv_fn, batch), sam, d_opt, adversarial_at=adversarial_at, scaler=scaler)
        results.append([p.detach().clone() for p in list(model.parameters()) + list(disc.parameters())])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_sdat_skipped_scaler_step_restores_weights():
    model, disc, _, adv_fn, sam, d_opt, batch = _setup(lr=0.5)
    model.float()
    disc.float()
    x_s, y_s, x_t = batch
    batch = (x_s.float(), y_s, x_t.float())
    w0 = [p.detach().clone() for p in list(model.parameters()) + list(disc.parameters())]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    closure = _closure(model, adv_fn, batch)

    def poisoned(need_adversarial):
        task, adv = closure(need_adversarial)
        return task, (adv * float("inf") if adv is not None else None)

    sdat_step(poisoned, sam, d_opt, scaler=scaler)
    assert scaler.get_scale() == 2.0**9  # the skipped step halves the scale
    for p, w in zip(list(model.parameters()) + list(disc.parameters()), w0):
        assert torch.equal(p, w)


def test_sdat_closure_raising_in_second_pass_restores_classifier():
    model, disc, _, adv_fn, sam, d_opt, batch = _setup(lr=0.1)
    before = _flat(model.parameters()).clone()
    d_before = _flat(disc.parameters()).clone()
    inner = _closure(model, adv_fn, batch)
    calls = []

    def closure(need_adversarial):
        calls.append(need_adversarial)
        if len(calls) == 2:
            raise RuntimeError("out of memory in the second pass")
        return inner(need_adversarial)

    with pytest.raises(RuntimeError, match="second pass"):
        sdat_step(closure, sam, d_opt)
    assert not sam.is_perturbed and sam.sam_steps == 0
    assert torch.equal(_flat(model.parameters()), before)
    assert torch.equal(_flat(disc.parameters()), d_before)

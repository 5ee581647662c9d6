"""Gradient reversal, discriminator, DANN, CDAN, MCC and the classifier wrapper of smoothopt.adapt."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smoothopt.adapt import (
    BottleneckClassifier,
    CDANLoss,
    ClassifierOutput,
    DANNLoss,
    DomainDiscriminator,
    GradientReversal,
    MultilinearMap,
    RandomizedMultilinearMap,
    dann_coefficient,
    domain_bce,
    grad_reverse,
    mcc_loss,
    warm_start_coefficient,
)

# ----------------------------------------------------------------------------- gradient reversal


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (0.0, 0.0),
        # 2 / (1 + e^-5) - 1 = tanh(2.5) = 0.98661429815143..., by the identity 2 sigmoid(2a) - 1 = tanh(a)
        (0.5, math.tanh(2.5)),
        (1.0, math.tanh(5.0)),
    ],
)
def test_dann_coefficient_golden(p, expected):
    assert dann_coefficient(p) == pytest.approx(expected, rel=1e-12)
    assert dann_coefficient(p, low=0.2, high=0.7) == pytest.approx(0.2 + 0.5 * expected, rel=1e-12)


def test_warm_start_coefficient_golden():
    # alpha = 1 at i = T: tanh(1 / 2) = 0.4621171572600098
    assert warm_start_coefficient(1000, 1000) == pytest.approx(math.tanh(0.5), rel=1e-12)
    assert warm_start_coefficient(0, 1000) == 0.0


@pytest.mark.parametrize("schedule", ["dann", "warm_start", "constant"])
@pytest.mark.parametrize("steps", [0, 3, 50])
def test_grl_flips_and_scales_per_schedule(schedule, steps):
    grl = GradientReversal(schedule, max_steps=20, high=0.8)
    grl.step(steps)
    expected = {
        "dann": 0.8 * dann_coefficient(steps / 20),
        "warm_start": 0.8 * warm_start_coefficient(steps, 20),
        "constant": 0.8,
    }[schedule]
    assert grl.coeff == pytest.approx(expected, rel=1e-12)
    x = torch.randn(4, 3, requires_grad=True)
    upstream = torch.randn(4, 3)
    y = grl(x)
    assert torch.equal(y, x)
    y.backward(upstream)
    torch.testing.assert_close(x.grad, -expected * upstream, rtol=1e-6, atol=0)


def test_grl_not_advanced_by_forward_passes():
    grl = GradientReversal("dann", max_steps=10)
    grl.step()
    before = grl.coeff
    x = torch.randn(2, 2, requires_grad=True)
    (grl(x).sum() + grl(x).sum()).backward()  # two passes, as in one SAM step
    assert grl.coeff == before
    assert int(grl.num_steps) == 1
    torch.testing.assert_close(x.grad, torch.full((2, 2), -2 * before))


def test_grl_driven_by_optimizer_step_and_state_dict():
    grl = GradientReversal("dann", max_steps=10)
    w = nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([w], lr=0.1)
    handle = grl.attach(opt)
    for _ in range(3):
        grl(w).sum().backward()
        grl(w).sum().backward()
        opt.step()
    assert int(grl.num_steps) == 3
    handle.remove()
    opt.step()
    assert int(grl.num_steps) == 3
    other = GradientReversal("dann", max_steps=10)
    other.load_state_dict(grl.state_dict())
    assert other.coeff == grl.coeff


def test_grl_step_restored_through_a_parent_state_dict():
    a = DANNLoss(DomainDiscriminator(3, hidden=(4,)), GradientReversal("dann", max_steps=10))
    a.grl.step(4)
    b = DANNLoss(DomainDiscriminator(3, hidden=(4,)), GradientReversal("dann", max_steps=10))
    b.load_state_dict(a.state_dict())
    assert b.grl.coeff == a.grl.coeff == dann_coefficient(0.4)
    b.grl.set_step(1)
    assert b.grl.coeff == dann_coefficient(0.1) and int(b.grl.num_steps) == 1


def test_grl_bad_arguments():
    with pytest.raises(ValueError, match="schedule"):
        GradientReversal("tanh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_steps"):
        GradientReversal(max_steps=0)
    with pytest.raises(ValueError, match="coeff"):
        grad_reverse(torch.ones(1), -1.0)
    with pytest.raises(TypeError, match="optimizer"):
        GradientReversal().attach(object())  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- discriminator and DANN


def test_discriminator_outputs_logits():
    d = DomainDiscriminator(6, hidden=(5, 4))
    assert d(torch.randn(3, 6)).shape == (3,)
    d_nobn = DomainDiscriminator(6, hidden=(5,), batch_norm=False).eval()
    assert not any(isinstance(m, nn.BatchNorm1d) for m in d_nobn.modules())


def test_domain_bce_matches_formula_and_is_autocast_safe():
    z = torch.randn(7)
    manual = -F.logsigmoid(z).mean()
    torch.testing.assert_close(domain_bce(z, True), manual)
    torch.testing.assert_close(domain_bce(z, False), -F.logsigmoid(-z).mean())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = domain_bce(z.bfloat16(), True)
    assert out.dtype == torch.float32
    # bfloat16 input rounding only: 8 bits of mantissa -> relative error below 1e-2
    torch.testing.assert_close(out, manual, rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="weight"):
        domain_bce(z, True, torch.ones(3))


def test_dann_loss_value_and_reversed_gradient():
    torch.manual_seed(1)
    disc = DomainDiscriminator(4, hidden=(8,))
    loss_fn = DANNLoss(disc, GradientReversal("constant", high=1.0))
    f_s = torch.randn(5, 4, requires_grad=True)
    f_t = torch.randn(3, 4, requires_grad=True)
    loss = loss_fn(f_s, f_t)
    logits = disc(torch.cat([f_s, f_t]))
    manual = 0.5 * (domain_bce(logits[:5], True) + domain_bce(logits[5:], False))
    torch.testing.assert_close(loss, manual)
    g_rev = torch.autograd.grad(loss, f_s)[0]
    g_plain = torch.autograd.grad(manual, f_s)[0]
    torch.testing.assert_close(g_rev, -g_plain)
    with pytest.raises(ValueError, match="f_s and f_t"):
        loss_fn(torch.randn(2, 4), torch.randn(2, 5))


# ----------------------------------------------------------------------------- CDAN


def test_multilinear_map_is_flattened_outer_product():
    f, g = torch.randn(3, 4), torch.randn(3, 2)
    out = MultilinearMap()(f, g)
    torch.testing.assert_close(out, torch.einsum("nc,nf->ncf", g, f).reshape(3, 8))


def test_randomized_map_state_dict_round_trip():
    a = RandomizedMultilinearMap(6, 3, 16, generator=torch.Generator().manual_seed(1))
    b = RandomizedMultilinearMap(6, 3, 16, generator=torch.Generator().manual_seed(2))
    f, g = torch.randn(4, 6), torch.softmax(torch.randn(4, 3), 1)
    assert not torch.equal(a(f, g), b(f, g))
    assert set(a.state_dict()) == {"Rf", "Rg"}
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(f, g), b(f, g))
    expected = (f @ a.Rf) * (g @ a.Rg) / 4.0  # sqrt(16) = 4
    torch.testing.assert_close(a(f, g), expected)


def test_cdan_loss_picks_map_by_size_and_round_trips():
    small = CDANLoss(DomainDiscriminator(8 * 3, hidden=(4,)), 8, 3)
    assert isinstance(small.map, MultilinearMap) and small.map_dim == 24
    big = CDANLoss(DomainDiscriminator(32, hidden=(4,)), 8, 3, max_multilinear_dim=10, randomized_dim=32,
                   generator=torch.Generator().manual_seed(0))
    assert isinstance(big.map, RandomizedMultilinearMap)
    assert "map.Rf" in big.state_dict() and "map.Rg" in big.state_dict()
    clone = CDANLoss(DomainDiscriminator(32, hidden=(4,)), 8, 3, max_multilinear_dim=10, randomized_dim=32,
                     generator=torch.Generator().manual_seed(5))
    clone.load_state_dict(big.state_dict())
    big.eval()
    clone.eval()
    args = (torch.randn(4, 3), torch.randn(4, 8), torch.randn(5, 3), torch.randn(5, 8))
    assert torch.equal(big(*args), clone(*args))


def test_cdan_entropy_conditioning_uniform_predictions_is_unweighted():
    torch.manual_seed(0)
    disc = DomainDiscriminator(6, hidden=(4,)).eval()
    plain = CDANLoss(disc, 3, 2)
    cond = CDANLoss(disc, 3, 2, entropy_conditioning=True)
    z = torch.zeros(4, 2)  # uniform predictions: equal entropy, equal weights
    f_s, f_t = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(plain(z, f_s, z, f_t), cond(z, f_s, z, f_t))
    z_conf = torch.tensor([[9.0, -9.0]] * 4)
    assert not torch.allclose(plain(z_conf, f_s, z, f_t), cond(z_conf, f_s, z, f_t))
    with pytest.raises(ValueError, match="C=2"):
        plain(torch.randn(4, 5), f_s, z, f_t)


# ----------------------------------------------------------------------------- MCC


@pytest.mark.parametrize("c", [2, 5])
def test_mcc_uniform_is_maximal_confusion(c):
    # All rows uniform: every row-normalised entry is 1/C, so the loss is (C - 1) / C.
    assert float(mcc_loss(torch.zeros(6, c))) == pytest.approx((c - 1) / c, rel=1e-6)


def test_mcc_confident_distinct_classes_is_zero():
    z = 50.0 * torch.eye(4)
    assert float(mcc_loss(z, temperature=1.0)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        mcc_loss(z, temperature=0.0)


# ----------------------------------------------------------------------------- classifier


def test_classifier_same_type_in_train_and_eval_and_param_groups():
    model = BottleneckClassifier(nn.Sequential(nn.Linear(5, 7), nn.ReLU()), 3, features_dim=7, bottleneck_dim=4)
    x = torch.randn(6, 5)
    out_train = model.train()(x)
    out_eval = model.eval()(x)
    assert type(out_train) is type(out_eval) is ClassifierOutput
    assert out_eval.logits.shape == (6, 3) and out_eval.features.shape == (6, 4)
    groups = model.param_groups(lr=0.01)
    assert [g["lr"] for g in groups] == pytest.approx([0.001, 0.01])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="features_dim"):
        BottleneckClassifier(nn.Linear(5, 7), 3)


def test_classifier_from_timm_random_and_checkpoint(tmp_path):
    pytest.importorskip("timm")
    model = BottleneckClassifier.from_timm("test_resnet", 4, pretrained=False, bottleneck_dim=8)
    logits, features = model.eval()(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 4) and features.shape == (2, 8)
    path = tmp_path / "backbone.pt"
    torch.save(model.backbone.state_dict(), path)
    again = BottleneckClassifier.from_timm("test_resnet", 4, checkpoint_path=path, bottleneck_dim=8)
    for (k, v), w in zip(model.backbone.state_dict().items(), again.backbone.state_dict().values()):
        assert torch.equal(v, w), k
    with pytest.raises(ValueError, match="either"):
        BottleneckClassifier.from_timm("test_resnet", 4, pretrained=True, checkpoint_path=path)

"""Tests of smoothopt.losses: reductions to cross-entropy, hand-computed values, gradients, buffers, errors.

Golden numbers are computed in each test from the paper formulas with the ``math`` module, never
copied from another implementation.
"""

import copy
import doctest
import math

import pytest
import torch
import torch.nn.functional as F

import smoothopt.losses.cosine
import smoothopt.losses.focal
import smoothopt.losses.ldam
import smoothopt.losses.reweighting
import smoothopt.losses.vs
from smoothopt.losses import (
    CDTLoss,
    CosineClassifier,
    DeferredReweighting,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    VSLoss,
    class_balanced_weights,
)

COUNTS = [50, 20, 7, 3, 1]
C = len(COUNTS)
REDUCTIONS = ["none", "mean", "sum"]


def _batch(n=12, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(1)
    logits = scale * torch.randn(n, C, generator=g, dtype=dtype)
    target = torch.arange(n) % C
    return logits, target


def _weights(dtype=torch.float64):
    return torch.tensor([0.2, 0.5, 1.0, 1.5, 1.8], dtype=dtype)


def _log_softmax_at(z, y):
    return z[y] - math.log(sum(math.exp(v) for v in z))


# ----------------------------------------------------------------------------- reductions to cross-entropy


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_ldam_without_margin_and_unit_scale_is_cross_entropy(reduction, weighted):
    logits, target = _batch()
    w = _weights() if weighted else None
    loss = LDAMLoss(COUNTS, max_m=0.0, s=1.0, weight=w, reduction=reduction)(logits, target)
    ref = F.cross_entropy(logits, target, weight=w, reduction=reduction)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("max_m", [1e-3, 1e-6])
def test_ldam_tends_to_cross_entropy_as_max_m_tends_to_zero(max_m):
    logits, target = _batch()
    loss = LDAMLoss(COUNTS, max_m=max_m, s=1.0)(logits, target)
    ref = F.cross_entropy(logits, target)
    # The loss is Lipschitz in the margin with constant at most 1 (softmax probabilities are <= 1).
    assert 0 < float(loss - ref) <= max_m


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_vs_with_gamma_and_tau_zero_is_cross_entropy(reduction, weighted):
    logits, target = _batch()
    w = _weights() if weighted else None
    loss = VSLoss(COUNTS, gamma=0.0, tau=0.0, weight=w, reduction=reduction)(logits, target)
    ref = F.cross_entropy(logits, target, weight=w, reduction=reduction)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_logit_adjustment_is_cross_entropy_on_shifted_logits(tau, weighted):
    logits, target = _batch()
    w = _weights() if weighted else None
    pi = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    loss = LogitAdjustedLoss(COUNTS, tau=tau, weight=w)(logits, target)
    ref = F.cross_entropy(logits + tau * pi.log(), target, weight=w)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-7)  # log(pi) is held in float32
    torch.testing.assert_close(loss, VSLoss(COUNTS, gamma=0.0, tau=tau, weight=w)(logits, target))


def test_cdt_is_vs_without_additive_term():
    logits, target = _batch()
    delta = (torch.tensor(COUNTS, dtype=torch.float64) / max(COUNTS)) ** 0.3
    loss = CDTLoss(COUNTS, gamma=0.3)(logits, target)
    torch.testing.assert_close(loss, F.cross_entropy(logits * delta, target), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_focal_with_gamma_zero_is_cross_entropy(reduction):
    logits, target = _batch()
    w = _weights()
    loss = FocalLoss(gamma=0.0, weight=w, reduction=reduction)(logits, target)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target, weight=w, reduction=reduction))


# ----------------------------------------------------------------------------- hand-computed values


def test_ldam_hand_computed():
    # n = [16, 1]: n^(-1/4) = [1/2, 1], so with max_m = 0.5 the margins are [0.25, 0.5].
    loss_fn = LDAMLoss([16, 1], max_m=0.5, s=2.0, reduction="none")
    torch.testing.assert_close(loss_fn.margins, torch.tensor([0.25, 0.5]))
    logits = torch.tensor([[0.3, -0.2], [0.3, -0.2]], dtype=torch.float64)
    target = torch.tensor([0, 1])
    # Sample 0 (class 0): s * [0.3 - 0.25, -0.2]; sample 1 (class 1): s * [0.3, -0.2 - 0.5].
    expected = [-_log_softmax_at([2 * 0.05, 2 * -0.2], 0), -_log_softmax_at([2 * 0.3, 2 * -0.7], 1)]
    torch.testing.assert_close(loss_fn(logits, target), torch.tensor(expected, dtype=torch.float64))
    assert expected[0] == pytest.approx(math.log1p(math.exp(-0.5)), rel=1e-12)


def test_ldam_margins_follow_quarter_power_law():
    m = LDAMLoss(COUNTS, max_m=0.7).margins.double()
    expected = torch.tensor([n**-0.25 for n in COUNTS], dtype=torch.float64)
    torch.testing.assert_close(m, 0.7 * expected / expected.max(), rtol=1e-6, atol=0)
    assert float(m.max()) == pytest.approx(0.7) and int(m.argmax()) == COUNTS.index(min(COUNTS))


def test_vs_hand_computed():
    # n = [3, 1]: Delta = [1, (1/3)^0.5], iota = [log 3/4, log 1/4].
    loss_fn = VSLoss([3, 1], gamma=0.5, tau=1.0, reduction="none")
    logits = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    adjusted = [1.0 + math.log(0.75), 2.0 * math.sqrt(1 / 3) + math.log(0.25)]
    got = loss_fn(logits, torch.tensor([1]))
    torch.testing.assert_close(got, torch.tensor([-_log_softmax_at(adjusted, 1)], dtype=torch.float64))


def test_logit_adjustment_hand_computed():
    # n = [3, 1], tau = 1: the logits [0, 0] become [log 3/4, log 1/4], so p = [3/4, 1/4] and the loss of
    # class 1 is -log(1/4) = log 4.
    got = LogitAdjustedLoss([3, 1], tau=1.0)(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([1]))
    assert float(got) == pytest.approx(math.log(4.0), rel=1e-7)


def test_cdt_hand_computed():
    # n = [4, 1], gamma = 1/2: Delta = [1, 1/2]; logits [log 2, 2 log 3] become [log 2, log 3], p_1 = 3/5.
    logits = torch.tensor([[math.log(2.0), 2 * math.log(3.0)]], dtype=torch.float64)
    got = CDTLoss([4, 1], gamma=0.5)(logits, torch.tensor([1]))
    assert float(got) == pytest.approx(-math.log(0.6), rel=1e-7)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_focal_hand_computed(gamma):
    # logits [0, log 3]: p = softmax = [1/4, 3/4].
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]], dtype=torch.float64)
    got = FocalLoss(gamma=gamma, reduction="none")(logits, torch.tensor([1, 0]))
    expected = [-(0.25**gamma) * math.log(0.75), -(0.75**gamma) * math.log(0.25)]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_weighted_mean_divides_by_sum_of_selected_weights():
    logits, target = _batch(n=7)
    w = _weights()
    for loss_cls in (lambda r, w: VSLoss(COUNTS, weight=w, reduction=r), lambda r, w: FocalLoss(2.0, w, r)):
        per_sample_unweighted = loss_cls("none", None)(logits, target)
        mean = loss_cls("mean", w)(logits, target)
        expected = (w[target] * per_sample_unweighted).sum() / w[target].sum()
        torch.testing.assert_close(mean, expected)
        torch.testing.assert_close(loss_cls("sum", w)(logits, target), (w[target] * per_sample_unweighted).sum())
        torch.testing.assert_close(loss_cls("none", w)(logits, target), w[target] * per_sample_unweighted)


def test_focal_uses_unweighted_probability_in_modulating_factor():
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    w = torch.tensor([1.0, 4.0], dtype=torch.float64)
    got = FocalLoss(gamma=1.0, weight=w, reduction="sum")(logits, torch.tensor([1]))
    assert float(got) == pytest.approx(-4.0 * 0.25 * math.log(0.75), rel=1e-12)


# ----------------------------------------------------------------------------- weights and schedules


def test_class_balanced_weights_hand_computed():
    # beta = 0.5, n = [1, 2]: (1 - beta) / (1 - beta^n) = [1, 2/3]; sum 5/3; times C / sum = [6/5, 4/5].
    w = class_balanced_weights([1, 2], beta=0.5, dtype=torch.float64)
    torch.testing.assert_close(w, torch.tensor([1.2, 0.8], dtype=torch.float64), rtol=1e-14, atol=0)


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999, 0.9999])
def test_class_balanced_weights_match_formula_and_sum_to_num_classes(beta):
    w = class_balanced_weights(COUNTS, beta=beta, dtype=torch.float64)
    raw = torch.tensor([(1 - beta) / (1 - beta**n) for n in COUNTS], dtype=torch.float64)
    torch.testing.assert_close(w, raw * C / raw.sum(), rtol=1e-10, atol=0)
    assert float(w.sum()) == pytest.approx(C, rel=1e-12)
    assert class_balanced_weights(COUNTS, beta).dtype == torch.float32


def test_class_balanced_weights_limits():
    torch.testing.assert_close(class_balanced_weights(COUNTS, 0.0), torch.ones(C))
    inv_freq = 1.0 / torch.tensor(COUNTS, dtype=torch.float64)
    w = class_balanced_weights(COUNTS, 1 - 1e-12, dtype=torch.float64)
    torch.testing.assert_close(w, inv_freq * C / inv_freq.sum(), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("total", "start", "start_epoch"), [(200, 0.8, 160), (90, 2 / 3, 60), (10, 3, 3), (10, 0, 0), (10, 10, 10)]
)
def test_deferred_reweighting_schedule(total, start, start_epoch):
    drw = DeferredReweighting(COUNTS, total, start=start, beta=0.999)
    assert drw.start_epoch == start_epoch
    cb = class_balanced_weights(COUNTS, 0.999)
    for epoch in range(total + 2):
        assert drw.active(epoch) == (epoch >= start_epoch)
        w = drw.weights(epoch)
        if epoch < start_epoch:
            assert w is None
        else:
            assert torch.equal(w, cb)


def test_deferred_reweighting_drives_a_loss_between_epochs():
    logits, target = _batch()
    drw = DeferredReweighting(COUNTS, total_epochs=5, start=0.6)
    loss_fn = LDAMLoss(COUNTS, max_m=0.0, s=1.0)
    seen = []
    for epoch in range(5):
        loss_fn.set_weight(drw.weights(epoch))
        w = None if loss_fn.weight is None else loss_fn.weight.double()
        torch.testing.assert_close(loss_fn(logits, target), F.cross_entropy(logits, target, weight=w))
        seen.append(loss_fn.weight is not None)
    assert seen == [False, False, False, True, True]


def test_weights_returned_are_copies():
    drw = DeferredReweighting(COUNTS, 10, start=1)
    drw.weights(5).zero_()
    assert float(drw.weights(5).sum()) == pytest.approx(C, rel=1e-6)


# ----------------------------------------------------------------------------- gradients, buffers, dtypes


LOSSES = {
    "ldam": lambda w: LDAMLoss(COUNTS, max_m=0.5, s=3.0, weight=w),
    "vs": lambda w: VSLoss(COUNTS, gamma=0.3, tau=1.0, weight=w),
    "la": lambda w: LogitAdjustedLoss(COUNTS, tau=1.0, weight=w),
    "cdt": lambda w: CDTLoss(COUNTS, gamma=0.2, weight=w),
    "focal": lambda w: FocalLoss(gamma=1.5, weight=w),
    "focal_half": lambda w: FocalLoss(gamma=0.5, weight=w),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_float64(name, reduction):
    logits, target = _batch(n=6)
    loss_fn = LOSSES[name](_weights())
    loss_fn.reduction = reduction
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: loss_fn(z, target), (logits,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_buffers_follow_state_dict_deepcopy_and_to(name):
    logits, target = _batch()
    loss_fn = LOSSES[name](_weights())
    ref = loss_fn(logits, target)
    clone = copy.deepcopy(loss_fn)
    torch.testing.assert_close(clone(logits, target), ref)
    assert "weight" in loss_fn.state_dict()

    # A weighted state loads into an unweighted loss of the same kind, and back.
    fresh = LOSSES[name](None)
    assert "weight" not in fresh.state_dict()
    fresh.load_state_dict(loss_fn.state_dict())
    torch.testing.assert_close(fresh(logits, target), ref)
    fresh.load_state_dict(LOSSES[name](None).state_dict())
    assert fresh.weight is None

    moved = copy.deepcopy(loss_fn).to(torch.float64)
    for buf in moved.buffers():
        assert buf.dtype == torch.float64
    torch.testing.assert_close(moved(logits, target), ref, rtol=1e-6, atol=1e-7)


def test_constants_are_registered_buffers():
    assert set(dict(LDAMLoss(COUNTS).named_buffers())) == {"margins"}
    assert set(dict(VSLoss(COUNTS, weight=_weights()).named_buffers())) == {"delta", "iota", "weight"}
    assert set(LDAMLoss(COUNTS).state_dict()) == {"margins"}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_output_dtype(name):
    loss_fn = LOSSES[name](None)
    for dtype, out in [(torch.float64, torch.float64), (torch.float32, torch.float32), (torch.float16, torch.float32)]:
        logits, target = _batch(dtype=dtype)
        assert loss_fn(logits, target).dtype == out


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_logits_do_not_overflow(name, half):
    # Logits of 3000 times s = 3 reach 9000, and exp of that overflows even float64; cross-entropy in
    # float32 through log-sum-exp stays finite. fp16 holds 3000 exactly enough for a 1e-2 comparison.
    logits, target = _batch(dtype=torch.float32, scale=3000.0)
    loss_fn = LOSSES[name](_weights(torch.float32))
    got = loss_fn(logits.to(half), target)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, loss_fn(logits.to(half).float(), target))


def test_ldam_scale_on_fp16_logits_is_applied_in_float32():
    # s * z = 30 * 3000 = 9e4 exceeds the fp16 maximum (65504): scaling in fp16 would give inf.
    logits = torch.full((2, C), -3000.0, dtype=torch.float16)
    logits[:, 0] = 3000.0
    target = torch.tensor([0, 1])
    assert torch.isinf(30.0 * logits).any()
    loss_fn = LDAMLoss(COUNTS, s=30.0, reduction="none")
    got = loss_fn(logits, target)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, loss_fn(logits.double(), target).float())


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_under_autocast(name, half):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, C)
    x = 50 * torch.randn(16, 8)
    target = torch.arange(16) % C
    loss_fn = LOSSES[name](_weights(torch.float32))
    try:
        with torch.autocast("cpu", dtype=half):
            logits = model(x)
            got = loss_fn(logits, target)
    except RuntimeError as err:  # pragma: no cover - depends on the CPU build
        pytest.skip(f"CPU autocast with {half} unavailable: {err}")
    assert logits.dtype == half and got.dtype == torch.float32 and torch.isfinite(got)
    got.backward()
    assert torch.isfinite(model.weight.grad).all()
    # Same loss as computing from the half logits outside autocast (bf16 rounding of the inputs only).
    torch.testing.assert_close(got, loss_fn(logits.detach().float(), target))


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_any_integer_label_dtype(name, dtype):
    # uint8 labels would index the weights as a boolean-like mask if they were not converted to long.
    logits, target = _batch()
    loss_fn = LOSSES[name](_weights())
    torch.testing.assert_close(loss_fn(logits, target.to(dtype)), loss_fn(logits, target))


def test_set_weight_changes_the_loss_and_validates():
    logits, target = _batch()
    loss_fn = VSLoss(COUNTS, gamma=0.0, tau=0.0)
    loss_fn.set_weight(_weights())
    torch.testing.assert_close(loss_fn(logits, target), F.cross_entropy(logits, target, weight=_weights()))
    loss_fn.set_weight(None)
    torch.testing.assert_close(loss_fn(logits, target), F.cross_entropy(logits, target))
    with pytest.raises(ValueError, match="weight must have shape"):
        loss_fn.set_weight(torch.ones(C + 1))


# ----------------------------------------------------------------------------- cosine head


def test_cosine_classifier_is_cosine_similarity():
    head = CosineClassifier(6, 4).double()
    x = torch.randn(10, 6, dtype=torch.float64)
    z = head(x)
    expected = torch.stack(
        [torch.stack([F.cosine_similarity(x[i], head.weight[j], dim=0) for j in range(4)]) for i in range(10)]
    )
    torch.testing.assert_close(z, expected)
    assert float(z.detach().abs().max()) <= 1.0
    torch.testing.assert_close(head(7.5 * x), z)  # invariant to the feature norm


def test_cosine_classifier_state_dict_and_shape_error():
    head = CosineClassifier(3, 2)
    other = CosineClassifier(3, 2)
    other.load_state_dict(head.state_dict())
    x = torch.randn(4, 3)
    torch.testing.assert_close(other(x), head(x))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3\)"):
        head(torch.randn(4, 5))
    with pytest.raises(ValueError, match="num_classes"):
        CosineClassifier(3, 0)


def test_ldam_on_cosine_head_trains_where_logits_are_bounded():
    # Three separable blobs, one of them a single example; LDAM (s = 30) on the cosine head must fit them.
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    target = torch.tensor([0] * 20 + [1] * 5 + [2])
    x = centers[target] + 0.3 * torch.randn(len(target), 2, generator=g)
    head = CosineClassifier(2, 3)
    loss_fn = LDAMLoss([20, 5, 1], max_m=0.5, s=30.0)
    opt = torch.optim.SGD(head.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        loss = loss_fn(head(x), target)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    assert torch.equal(head(x).argmax(1), target)


def test_ldam_diverges_on_a_linear_head_and_trains_on_a_cosine_head():
    # The note in LDAMLoss's docstring, measured: five Gaussian classes of 200 down to 2 points in 16-D, an
    # MLP, SGD (lr 0.05, momentum 0.9), 8 epochs. Seed 0 gave full-data losses of 2.6e4 (linear head) and
    # 1.17 (cosine head) on torch 2.14 CPU; the bounds below leave an order of magnitude of room.
    last = {}
    for head in ("linear", "cosine"):
        torch.manual_seed(0)
        counts = [200, 60, 20, 6, 2]
        centers = 0.5 * torch.randn(5, 16)
        y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
        x = centers[y] + torch.randn(len(y), 16)
        top = torch.nn.Linear(32, 5) if head == "linear" else CosineClassifier(32, 5)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), top)
        loss_fn = LDAMLoss(counts, max_m=0.5, s=30.0)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(8):
            perm = torch.randperm(len(y))
            for i in range(0, len(y), 32):
                idx = perm[i : i + 32]
                opt.zero_grad()
                loss = loss_fn(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
        with torch.no_grad():
            last[head] = float(loss_fn(model(x), y))
    assert last["linear"] > 1e3
    assert last["cosine"] < 5.0


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("counts", "exc", "match"),
    [
        ([10, 0, 3], ValueError, r"cls_num_list\[1\] must be in \[1, inf\), got 0"),
        ([10, -2], ValueError, r"cls_num_list\[1\] must be in \[1, inf\), got -2"),
        ([10, 2.5], ValueError, r"cls_num_list\[1\] must be a positive integer, got 2.5"),
        ([10, float("nan")], ValueError, r"cls_num_list\[1\] must be a positive integer"),
        ([], ValueError, "at least one class"),
        ([10, "3"], TypeError, "cls_num_list must hold integers"),
        ([True, 3], TypeError, "cls_num_list must hold integers"),
        (7, TypeError, "cls_num_list must be a sequence"),
        (torch.tensor([[1, 2]]), ValueError, "cls_num_list must be one-dimensional"),
    ],
)
@pytest.mark.parametrize(
    "factory",
    [LDAMLoss, VSLoss, LogitAdjustedLoss, CDTLoss, class_balanced_weights, lambda c: DeferredReweighting(c, 10)],
)
def test_bad_counts_raise(counts, exc, match, factory):
    with pytest.raises(exc, match=match):
        factory(counts)


def test_counts_accept_integer_valued_tensors_and_arrays():
    np = pytest.importorskip("numpy")
    a = LDAMLoss(torch.tensor(COUNTS)).margins
    torch.testing.assert_close(LDAMLoss(np.array(COUNTS)).margins, a)
    torch.testing.assert_close(LDAMLoss([float(n) for n in COUNTS]).margins, a)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bad_logits_and_targets_raise(name):
    loss_fn = LOSSES[name](_weights(torch.float32))
    logits, target = _batch(dtype=torch.float32)
    with pytest.raises(ValueError, match=f"logits has {C + 1} columns but the loss was built for {C} classes"):
        loss_fn(torch.randn(len(target), C + 1), target)
    with pytest.raises(ValueError, match=r"target must hold class indices in \[0, 4\], got 5"):
        loss_fn(logits, torch.full_like(target, C))
    with pytest.raises(ValueError, match=r"target must hold class indices in \[0, 4\], got -1"):
        loss_fn(logits, torch.full_like(target, -1))
    with pytest.raises(TypeError, match="target must be an integer tensor"):
        loss_fn(logits, target.float())
    with pytest.raises(TypeError, match="target must be an integer tensor"):
        loss_fn(logits, target == 0)
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        loss_fn(logits.long(), target)
    with pytest.raises(ValueError, match="logits must have shape"):
        loss_fn(logits[0], target)
    with pytest.raises(ValueError, match="target must have shape"):
        loss_fn(logits, target[:-1])


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: LDAMLoss(COUNTS, max_m=-0.1), r"max_m must be in \[0.0, inf\), got -0.1"),
        (lambda: LDAMLoss(COUNTS, s=0.0), r"s must be in \(0.0, inf\), got 0.0"),
        (lambda: VSLoss(COUNTS, gamma=-1.0), r"gamma must be in \[0.0, inf\)"),
        (lambda: VSLoss(COUNTS, tau=-0.5), r"tau must be in \[0.0, inf\)"),
        (lambda: FocalLoss(gamma=-1.0), r"gamma must be in \[0.0, inf\)"),
        (lambda: LDAMLoss(COUNTS, reduction="avg"), "reduction must be one of 'none', 'mean', 'sum'"),
        (lambda: FocalLoss(reduction="batchmean"), "reduction must be one of"),
        (lambda: LDAMLoss(COUNTS, weight=torch.ones(C - 1)), r"weight must have shape \(5,\)"),
        (lambda: VSLoss(COUNTS, weight=[1.0, -1.0, 1.0, 1.0, 1.0]), r"weight must hold finite values in \[0, inf\)"),
        (lambda: VSLoss(COUNTS, weight=[1.0, math.inf, 1.0, 1.0, 1.0]), "weight must hold finite values"),
        (lambda: FocalLoss(weight=torch.zeros(3)), "weight must have a positive sum"),
        (lambda: FocalLoss(weight=torch.ones(2, 2)), r"weight must have shape \(C,\)"),
        (lambda: class_balanced_weights(COUNTS, beta=1.0), r"beta must be in \[0.0, 1.0\), got 1.0"),
        (lambda: class_balanced_weights(COUNTS, beta=-0.1), r"beta must be in \[0.0, 1.0\)"),
        (lambda: DeferredReweighting(COUNTS, 0), r"total_epochs must be in \[1, inf\), got 0"),
        (lambda: DeferredReweighting(COUNTS, 10, start=1.0), r"start must be in \(0.0, 1.0\), got 1.0"),
        (lambda: DeferredReweighting(COUNTS, 10, start=0.0), r"start must be in \(0.0, 1.0\), got 0.0"),
        (lambda: DeferredReweighting(COUNTS, 10, start=11), r"start must be in \[0, 10\], got 11"),
        (lambda: DeferredReweighting(COUNTS, 10, start=-1), r"start must be in \[0, 10\], got -1"),
        (lambda: DeferredReweighting(COUNTS, 10, beta=1.5), r"beta must be in \[0.0, 1.0\)"),
        (lambda: DeferredReweighting(COUNTS, 10).weights(-1), r"epoch must be in \[0, inf\), got -1"),
    ],
)
def test_bad_arguments_raise_value_error(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_bad_argument_types_raise_type_error():
    with pytest.raises(TypeError, match="start must be a float fraction in"):
        DeferredReweighting(COUNTS, 10, start="0.8")
    with pytest.raises(TypeError, match="start must be a float fraction in"):
        DeferredReweighting(COUNTS, 10, start=True)
    with pytest.raises(TypeError, match="epoch must be an integer"):
        DeferredReweighting(COUNTS, 10).active(1.5)
    with pytest.raises(TypeError, match="s must be a real number"):
        LDAMLoss(COUNTS, s="30")


@pytest.mark.parametrize(
    "module",
    [smoothopt.losses.cosine, smoothopt.losses.focal, smoothopt.losses.ldam, smoothopt.losses.reweighting,
     smoothopt.losses.vs],
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0

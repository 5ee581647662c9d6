"""Tests of smoothopt.evaluation: per-class accuracy and group summaries against hand-counted values."""

import doctest
import math

import pytest
import torch

import smoothopt.evaluation
from smoothopt.evaluation import group_accuracy, head_tail_accuracy, per_class_accuracy


def test_per_class_accuracy_hand_counted():
    # class 0: 2 of 3 right; class 1: 1 of 1; class 2: 0 of 2; class 3: no sample -> NaN.
    targets = torch.tensor([0, 0, 0, 1, 2, 2])
    preds = torch.tensor([0, 1, 0, 1, 0, 1])
    acc = per_class_accuracy(preds, targets, 4)
    assert acc.dtype == torch.float64 and acc.shape == (4,)
    torch.testing.assert_close(acc[:3], torch.tensor([2 / 3, 1.0, 0.0], dtype=torch.float64))
    assert math.isnan(acc[3])


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_per_class_accuracy_from_logits_is_argmax(dtype):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(40, 5, generator=g).to(dtype)
    targets = torch.randint(0, 5, (40,), generator=g)
    torch.testing.assert_close(
        per_class_accuracy(logits, targets, 5), per_class_accuracy(logits.argmax(1), targets, 5), equal_nan=True
    )


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        # Boundaries: 101 > 100 is many; 100 and 20 are medium; 19 is few.
        ([101, 100, 20, 19], {"many": 0.125, "medium": 0.5, "few": 1.0}),
        ([500, 400, 300, 200], {"many": (0.125 + 0.25 + 0.75 + 1.0) / 4, "medium": math.nan, "few": math.nan}),
    ],
)
def test_group_accuracy_thresholds(counts, expected):
    acc = torch.tensor([0.125, 0.25, 0.75, 1.0], dtype=torch.float64)
    got = group_accuracy(acc, counts)
    assert set(got) == {"many", "medium", "few"}
    for key, value in expected.items():
        assert (math.isnan(got[key]) and math.isnan(value)) or got[key] == pytest.approx(value, rel=1e-12)


def test_group_accuracy_custom_thresholds_and_nan_skipping():
    acc = [1.0, math.nan, 0.5, 0.0]
    got = group_accuracy(acc, [10, 9, 5, 1], many_threshold=8, few_threshold=2)
    assert got == {"many": 1.0, "medium": 0.5, "few": 0.0}  # the NaN class (no test sample) is skipped


@pytest.mark.parametrize(
    ("counts", "fraction", "head", "tail"),
    [
        ([100, 50, 10, 1], 0.5, [0, 1], [2, 3]),
        ([1, 10, 100, 50], 0.5, [2, 3], [0, 1]),
        ([5, 5, 5, 5], 0.25, [0], [1, 2, 3]),  # ties go to the lower class index
        ([9, 8, 7, 6, 5], 0.5, [0, 1], [2, 3, 4]),  # round(2.5) = 2
    ],
)
def test_head_tail_accuracy(counts, fraction, head, tail):
    acc = torch.tensor([0.5, 0.25, 0.125, 0.0625, 1.0][: len(counts)], dtype=torch.float64)
    got = head_tail_accuracy(acc, counts, head_fraction=fraction)
    assert got["head"] == pytest.approx(float(acc[head].mean()), rel=1e-12)
    assert got["tail"] == pytest.approx(float(acc[tail].mean()), rel=1e-12)


def test_bad_inputs_raise():
    t = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"targets must hold class indices in \[0, 2\], got 3"):
        per_class_accuracy(t, torch.tensor([0, 1, 3]), 3)
    with pytest.raises(ValueError, match=r"preds_or_logits must hold class indices in \[0, 2\], got -1"):
        per_class_accuracy(torch.tensor([0, -1, 2]), t, 3)
    with pytest.raises(TypeError, match="targets must be an integer tensor"):
        per_class_accuracy(t, t.float(), 3)
    with pytest.raises(TypeError, match="preds_or_logits must be an integer tensor"):
        per_class_accuracy(t.float(), t, 3)
    with pytest.raises(ValueError, match="preds_or_logits has 4 columns but num_classes is 3"):
        per_class_accuracy(torch.randn(3, 4), t, 3)
    with pytest.raises(ValueError, match="preds_or_logits has 2 samples but targets has 3"):
        per_class_accuracy(t[:2], t, 3)
    with pytest.raises(ValueError, match=r"num_classes must be in \[1, inf\), got 0"):
        per_class_accuracy(t, t, 0)
    with pytest.raises(ValueError, match="per_class_acc has 2 classes but cls_num_list has 3"):
        group_accuracy([0.1, 0.2], [3, 2, 1])
    with pytest.raises(ValueError, match=r"cls_num_list\[2\] must be in \[1, inf\), got 0"):
        head_tail_accuracy([0.1, 0.2, 0.3], [3, 2, 0])
    with pytest.raises(ValueError, match=r"few_threshold must be in \[0, 11\], got 50"):
        group_accuracy([0.1], [3], many_threshold=10, few_threshold=50)
    with pytest.raises(ValueError, match=r"head_fraction must be in \(0.0, 1.0\), got 1.0"):
        head_tail_accuracy([0.1], [3], head_fraction=1.0)


def test_docstring_examples():
    result = doctest.testmod(smoothopt.evaluation)
    assert result.attempted > 0 and result.failed == 0

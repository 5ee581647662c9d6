"""Decisions and measures for the trajectory-variance filter: thresholds, the rank filter, AUROC.

Convention throughout: a HIGHER score means MORE likely hallucinated; ``in_scores`` are scores of
in-support samples (to keep) and ``out_scores`` of hallucinated ones (to remove). A sample is kept when
``score <= threshold``. Every function accepts tensors, numpy arrays or sequences.

The paper (Aithal et al. 2024, Sec. 5) reports the share of hallucinations removed while 96% of
in-support samples are kept; its released code only ranks (draw ``N`` plus extra samples, keep the ``N``
lowest), which :func:`rank_filter` does.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np
import torch

from hallucfilter._checks import as_numpy_1d, check_int, check_real

__all__ = [
    "auroc",
    "calibrate_threshold",
    "keep_mask",
    "rank_filter",
    "removal_at_retention",
    "retention_at_removal",
]

ArrayLike = TypeVar("ArrayLike", torch.Tensor, np.ndarray)


def auroc(in_scores: Any, out_scores: Any) -> float:
    r"""Area under the ROC curve for telling hallucinated from in-support samples by score.

    The probability that a random hallucinated sample scores higher than a random in-support one, ties
    counting one half (the Mann-Whitney statistic):

    .. math::
        \mathrm{AUROC} = \frac{1}{n_{in} n_{out}} \sum_{i,j}
            \bigl[\mathbb{1}(o_j > s_i) + \tfrac12 \mathbb{1}(o_j = s_i)\bigr].

    Args:
        in_scores: Scores of in-support samples, shape ``(n_in,)``.
        out_scores: Scores of hallucinated samples, shape ``(n_out,)``.

    Returns:
        AUROC in ``[0, 1]``; 0.5 is chance, 1.0 a perfect separation.

    Raises:
        ValueError: If either set is empty, not 1-D, or contains NaN.
    """
    s_in = as_numpy_1d("in_scores", in_scores)
    s_out = as_numpy_1d("out_scores", out_scores)

    # 1. Mid-ranks of the pooled scores (ties share the mean of their ranks; inf ranks like any value).
    pooled = np.concatenate([s_in, s_out])
    order = np.argsort(pooled, kind="stable")
    sorted_vals = pooled[order]
    ranks = np.empty(pooled.size, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], pooled.size]
    for lo, hi in zip(starts, ends):
        ranks[order[lo:hi]] = 0.5 * (lo + hi - 1) + 1.0

    # 2. Mann-Whitney U of the hallucinated set, normalised.
    n_in, n_out = s_in.size, s_out.size
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2.0
    return float(u / (n_in * n_out))


def calibrate_threshold(in_scores: Any, retention: float = 0.96) -> float:
    """Threshold that keeps a target share of in-support samples (``score <= threshold`` is kept).

    The threshold is the ``ceil(retention * n)``-th smallest in-support score, so at least ``retention``
    of the calibration set is kept and the threshold is one of the observed scores.

    Args:
        in_scores: Scores of in-support (calibration) samples.
        retention: Share of them to keep, in ``(0, 1]``.

    Returns:
        The threshold.

    Raises:
        ValueError: If ``retention`` is out of range or the scores are empty or contain NaN.
    """
    retention = check_real("retention", retention, low=0.0, high=1.0, low_open=True)
    s_in = np.sort(as_numpy_1d("in_scores", in_scores))
    k = max(1, math.ceil(retention * s_in.size - 1e-9))
    return float(s_in[k - 1])


def keep_mask(scores: ArrayLike, threshold: float) -> ArrayLike:
    """Per-sample decisions: ``True`` where ``score <= threshold`` (keep), ``False`` to filter out.

    Args:
        scores: One score per sample (tensor or numpy array).
        threshold: From :func:`calibrate_threshold`.

    Returns:
        A boolean mask of the same kind (tensor or array) as ``scores``.
    """
    threshold = check_real("threshold", threshold)
    if isinstance(scores, torch.Tensor):
        return scores <= threshold
    return as_numpy_1d("scores", scores) <= threshold


def removal_at_retention(in_scores: Any, out_scores: Any, retention: float = 0.96) -> float:
    """Share of hallucinated samples removed by the threshold that keeps ``retention`` of in-support ones.

    Args:
        in_scores: Scores of in-support samples (the threshold is calibrated on them).
        out_scores: Scores of hallucinated samples.
        retention: Share of in-support samples kept, in ``(0, 1]``.

    Returns:
        The share of ``out_scores`` strictly above the threshold, in ``[0, 1]``.
    """
    threshold = calibrate_threshold(in_scores, retention)
    s_out = as_numpy_1d("out_scores", out_scores)
    return float((s_out > threshold).mean())


def retention_at_removal(in_scores: Any, out_scores: Any, removal: float = 0.95) -> float:
    """Largest share of in-support samples kept by a threshold that removes at least ``removal`` of hallucinations.

    With hallucinated scores sorted ascending, removing ``r = ceil(removal * n_out)`` of them requires a
    threshold below the ``r``-th largest; the best such threshold keeps every in-support sample scoring
    strictly below it.

    Args:
        in_scores: Scores of in-support samples.
        out_scores: Scores of hallucinated samples.
        removal: Share of hallucinated samples to remove, in ``[0, 1]``.

    Returns:
        The share of ``in_scores`` kept, in ``[0, 1]``.
    """
    removal = check_real("removal", removal, low=0.0, high=1.0)
    s_in = as_numpy_1d("in_scores", in_scores)
    s_out = np.sort(as_numpy_1d("out_scores", out_scores))
    r = math.ceil(removal * s_out.size - 1e-9)
    if r == 0:
        return 1.0
    cut = s_out[s_out.size - r]
    return float((s_in < cut).mean())


def rank_filter(scores: ArrayLike, keep: int) -> ArrayLike:
    """The paper's rank filter: indices of the ``keep`` samples with the lowest scores.

    Over-generate (e.g. ``N + 2500`` samples for ``N`` wanted), score, and keep the ``keep`` lowest. Ties are
    broken by index (stable), so the result is deterministic.

    Args:
        scores: One score per sample, shape ``(n,)`` (tensor or numpy array).
        keep: Number of samples to keep, in ``[0, n]``.

    Returns:
        The kept indices in increasing index order, as a ``torch.long`` tensor on ``scores``' device if
        ``scores`` is a tensor, else an ``int64`` numpy array.

    Raises:
        ValueError: If ``keep`` is out of range or the scores contain NaN.
    """
    values = as_numpy_1d("scores", scores)
    keep = check_int("keep", keep, low=0, high=values.size)
    kept = np.sort(np.argsort(values, kind="stable")[:keep]).astype(np.int64)
    if isinstance(scores, torch.Tensor):
        return torch.from_numpy(kept).to(scores.device)
    return kept

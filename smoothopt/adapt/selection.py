r"""Active selection for domain adaptation: the S3 criterion of S3VAADA (Rangwani et al., ICCV 2021) and baselines.

The S3 score of a set ``S`` of target candidates is a weighted sum of three terms, each scaled to
comparable ranges once per round, so that the score is a true set function (it depends on ``S``
only, not on the order of insertion):

.. math::
    F(S) = w_u\, U(S) + w_d\, D(S) + w_r\, R(S),\qquad (w_u, w_d, w_r) = (0.5, 0.3, 0.2)

* uncertainty :math:`U(S) = \sum_{i \in S} \tilde u_i`, with :math:`\tilde u` the uncertainty
  scores min-max scaled to ``[0, 1]`` over the pool (VAT sensitivity as in the paper, see
  :func:`vat_sensitivity`, or margin / entropy);
* diversity :math:`D(S) = \sum_k \sqrt{|S \cap P_k|}`, where :math:`P_k` are the candidates
  predicted as class ``k``: a concave-over-modular reward for spreading the labels over predicted
  classes (its singleton range is 1, so it needs no scaling);
* representativeness, facility location :math:`R(S) = \frac{1}{R^*} \sum_{j \in \mathcal{R}}
  \max_{i \in S} s_{ij}` over representatives :math:`\mathcal{R}` with the Bhattacharyya
  coefficient :math:`s_{ij} = \sum_c \sqrt{p_{ic} p_{jc}} \in [0, 1]`, scaled by the largest
  singleton value :math:`R^* = \max_i \sum_j s_{ij}`.

Each term is monotone and submodular, so ``F`` is, and greedy maximisation is within
:math:`1 - 1/e` of the optimum; :func:`lazy_greedy` gives the same picks as plain greedy at a
fraction of the cost.

Note:
    Departures from the public code, on purpose: its diversity gain (the KL divergence to the
    closest selected sample) depends on the order of insertion, so it is no set function and the
    greedy guarantee does not apply; here diversity is the partition reward above. Its scaling
    renormalises the marginal gains at every greedy step (again no set function); here each term is
    scaled once per round. Its dense ``N x N`` float64 similarity matrix is replaced by similarity
    rows computed on demand, in blocks of ``block_size`` candidates against the representatives:
    peak memory ``O(block_size * M + N * C)``. By default every candidate is a representative
    (exact facility location); ``num_representatives`` draws a uniform subsample instead, for
    speed on very large pools.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple, Protocol

import torch
from torch import Tensor

from smoothopt._validation import check_choice, check_int, check_real
from smoothopt.adapt._utils import entropy
from smoothopt.adapt.vat import _kl_from_logits, virtual_adversarial_perturbation

__all__ = [
    "S3Objective",
    "Selection",
    "entropy_scores",
    "greedy",
    "lazy_greedy",
    "margin_scores",
    "s3_select",
    "select",
    "vat_sensitivity",
]

logger = logging.getLogger(__name__)

Strategy = Literal["s3", "random", "entropy", "margin"]
PROB_EPS = 1e-12


class Selection(NamedTuple):
    """Result of a selection round."""

    indices: Tensor
    """``(budget,)`` long tensor of pool indices, in the order picked (best first)."""
    gains: Tensor
    """``(budget,)`` float64 marginal gain (S3) or score (baselines) of each pick."""


# --------------------------------------------------------------------------- input checks


def check_probs(probs: Tensor, name: str = "probs", atol: float | None = None) -> Tensor:
    """Check a ``(N, C)`` matrix of class probabilities and return it as float64.

    Raises:
        TypeError: If ``probs`` is not a floating-point tensor.
        ValueError: If it is not 2-D, is empty, holds NaN/inf or negative entries, or a row does
            not sum to 1 within ``atol`` (default 1e-4, 1e-2 for half precision).
    """
    if not isinstance(probs, Tensor) or not probs.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(probs).__name__}")
    if probs.ndim != 2 or probs.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N, C) with C >= 1, got {tuple(probs.shape)}")
    if probs.shape[0] == 0:
        raise ValueError(f"{name} is an empty pool (N = 0); there is nothing to select from")
    if not torch.isfinite(probs).all():
        bad = int((~torch.isfinite(probs)).any(dim=1).nonzero()[0])
        raise ValueError(f"{name} must be finite; row {bad} holds NaN or inf")
    if (probs < 0).any():
        raise ValueError(f"{name} must be non-negative probabilities; got min {float(probs.min())}")
    if atol is None:
        atol = 1e-2 if probs.dtype in (torch.float16, torch.bfloat16) else 1e-4
    p = probs.double()
    err = (p.sum(dim=1) - 1).abs()
    if (err > atol).any():
        row = int(err.argmax())
        raise ValueError(f"{name} rows must sum to 1 (pass softmax outputs, not logits); row {row} sums to "
                         f"{float(p[row].sum()):.6g}")
    return p


def _check_budget(budget: int, n: int) -> int:
    return check_int("budget", budget, 0, n)


def _check_scores(scores: Tensor, n: int, name: str) -> Tensor:
    if not isinstance(scores, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(scores).__name__}")
    if scores.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match probs, got {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError(f"{name} must be finite")
    return scores.double()


# --------------------------------------------------------------------------- uncertainty scores


def margin_scores(probs: Tensor) -> Tensor:
    """Margin uncertainty ``1 - (p_(1) - p_(2))`` of each row (1 = the two top classes tie)."""
    p = check_probs(probs)
    if p.shape[1] == 1:
        return torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
    top2 = p.topk(2, dim=1).values
    return 1.0 - (top2[:, 0] - top2[:, 1])


def entropy_scores(probs: Tensor) -> Tensor:
    """Predictive entropy (nats) of each row, guarded against ``log(0)``."""
    return entropy(check_probs(probs), PROB_EPS)


@torch.no_grad()
def vat_sensitivity(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    xi: float = 1e-6,
    eps: float = 1.0,
    restarts: int = 3,
    power_iterations: int = 1,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Uncertainty as sensitivity to a virtual adversarial perturbation (S3VAADA, Sec. 3.2).

    .. math::
        u_i = \frac{1}{K} \sum_{k=1}^{K} \mathrm{KL}\big(p(y|x_i) \,\|\, p(y|x_i + r^{(k)}_{adv})\big)

    with :math:`r^{(k)}_{adv}` from :func:`~smoothopt.adapt.virtual_adversarial_perturbation`
    started from ``K = restarts`` random directions.

    Args:
        model: Maps inputs to logits (put it in eval mode first).
        x: The pool's inputs.
        xi: Power-iteration radius.
        eps: Perturbation radius.
        restarts: ``K``.
        power_iterations: Power iterations per restart.
        batch_size: Inputs per forward pass.
        generator: Source of the random starts.

    Returns:
        ``(N,)`` float64 scores.
    """
    restarts = check_int("restarts", restarts, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (N, ...), got shape {tuple(x.shape)}")
    out = []
    for xb in x.split(batch_size):
        logits = model(xb)
        total = torch.zeros(xb.shape[0], dtype=torch.float64, device=xb.device)
        for _ in range(restarts):
            r = virtual_adversarial_perturbation(model, xb, logits, xi=xi, eps=eps,
                                                 power_iterations=power_iterations, generator=generator)
            total += _kl_from_logits(logits, model(xb + r)).double()
        out.append(total / restarts)
    return torch.cat(out)


# --------------------------------------------------------------------------- the set function


class GreedyState:
    """What a greedy maximiser of :class:`S3Objective` keeps between picks."""

    def __init__(self, coverage: Tensor, counts: Tensor) -> None:
        self.coverage = coverage
        """``(M,)`` current ``max_{i in S} s_ij`` of each representative (0 for ``S`` empty)."""
        self.counts = counts
        """``(C,)`` number of selected candidates per predicted class."""
        self.selected: list[int] = []


class SetFunction(Protocol):
    """What :func:`greedy` and :func:`lazy_greedy` need from a monotone submodular set function."""

    num_items: int

    def new_state(self) -> GreedyState: ...  # noqa: D102

    def gains(self, state: GreedyState, items: Tensor) -> Tensor: ...  # noqa: D102

    def add(self, state: GreedyState, item: int) -> None: ...  # noqa: D102


class S3Objective:
    """The S3 set function ``F(S)`` over a pool of candidates (see the module docstring).

    Args:
        probs: ``(N, C)`` predicted class probabilities of the pool.
        uncertainty: ``(N,)`` uncertainty scores (higher = more uncertain); min-max scaled here.
        weights: ``(w_u, w_d, w_r)``; the paper's 0.5, 0.3, 0.2 by default.
        representatives: Indices of the representatives ``R``; every candidate if None.
        block_size: Candidates per similarity block (memory ``block_size * M`` float64).

    Raises:
        ValueError: On malformed ``probs``, mismatched ``uncertainty``, or negative weights.

    Example:
        >>> probs = torch.softmax(torch.randn(6, 3), dim=1)
        >>> f = S3Objective(probs, margin_scores(probs))
        >>> f.value([0, 2]) <= f.value([0, 2, 5])
        True
    """

    def __init__(
        self,
        probs: Tensor,
        uncertainty: Tensor,
        *,
        weights: Sequence[float] = (0.5, 0.3, 0.2),
        representatives: Tensor | None = None,
        block_size: int = 256,
    ) -> None:
        p = check_probs(probs)
        n = p.shape[0]
        u = _check_scores(uncertainty, n, "uncertainty").to(p.device)
        if len(weights) != 3:
            raise ValueError(f"weights must be (w_u, w_d, w_r), got {len(weights)} values")
        self.weights = tuple(check_real(f"weights[{i}]", w, 0.0) for i, w in enumerate(weights))
        self.block_size = check_int("block_size", block_size, 1)
        self.num_items = n

        # Uncertainty: min-max scaled to [0, 1] over the pool (all zero if constant).
        span = u.max() - u.min()
        self.u = (u - u.min()) / span if span > 0 else torch.zeros_like(u)

        # Diversity: the predicted class of each candidate (ties to the lowest class index).
        self.cls = p.argmax(dim=1)
        self.num_classes = p.shape[1]

        # Representativeness: Bhattacharyya coefficients s_ij = <sqrt p_i, sqrt p_j>.
        # NOTE: the representatives are stored transposed and contiguous, (C, M), for fast row blocks.
        self.sqrt_p = p.sqrt()
        if representatives is None:
            self.sqrt_rep_t = self.sqrt_p.T.contiguous()
        else:
            if representatives.ndim != 1 or representatives.numel() == 0:
                raise ValueError("representatives must be a non-empty 1-D index tensor")
            self.sqrt_rep_t = self.sqrt_p[representatives.to(p.device)].T.contiguous()
        # Singleton values R({i}) = sum_j s_ij = <sqrt p_i, sum_j sqrt p_j> (exact, O(N C)).
        self._rep_sum = self.sqrt_rep_t.sum(dim=1)
        singleton = self.sqrt_p @ self._rep_sum
        self.r_scale = float(singleton.max()) if float(singleton.max()) > 0 else 1.0

    def new_state(self) -> GreedyState:
        """The state of the empty set."""
        dev = self.sqrt_p.device
        return GreedyState(
            torch.zeros(self.sqrt_rep_t.shape[1], dtype=torch.float64, device=dev),
            torch.zeros(self.num_classes, dtype=torch.float64, device=dev),
        )

    def _similarity(self, items: Tensor) -> Tensor:
        return self.sqrt_p[items] @ self.sqrt_rep_t

    def gains(self, state: GreedyState, items: Tensor) -> Tensor:
        """Marginal gains ``F(S + i) - F(S)`` of ``items`` given the selected set of ``state``.

        Args:
            state: The current selection.
            items: ``(B,)`` candidate indices.

        Returns:
            ``(B,)`` float64 gains.
        """
        w_u, w_d, w_r = self.weights
        items = items.to(self.sqrt_p.device)
        n_k = state.counts[self.cls[items]]
        gain = w_u * self.u[items] + w_d * ((n_k + 1).sqrt() - n_k.sqrt())
        if not state.selected:
            # Empty set: sum_j max(s_ij - 0, 0) = <sqrt p_i, sum_j sqrt p_j>.
            rep = self.sqrt_p[items] @ self._rep_sum
        else:
            rep = torch.cat([
                self._similarity(block).sub_(state.coverage).clamp_min_(0).sum(dim=1)
                for block in items.split(self.block_size)
            ])
        return gain + (w_r / self.r_scale) * rep

    def add(self, state: GreedyState, item: int) -> None:
        """Add ``item`` to the selection of ``state``."""
        idx = torch.tensor([item], device=self.sqrt_p.device)
        torch.maximum(state.coverage, self._similarity(idx)[0], out=state.coverage)
        state.counts[self.cls[item]] += 1
        state.selected.append(int(item))

    def value(self, subset: Sequence[int] | Tensor) -> float:
        """``F(S)`` computed from scratch (for checks; greedy uses :meth:`gains`)."""
        s = torch.as_tensor(subset, dtype=torch.long, device=self.sqrt_p.device).reshape(-1)
        if s.unique().numel() != s.numel():
            raise ValueError("subset must not repeat an index")
        if s.numel() == 0:
            return 0.0
        w_u, w_d, w_r = self.weights
        u = self.u[s].sum()
        d = torch.bincount(self.cls[s], minlength=self.num_classes).double().sqrt().sum()
        r = self._similarity(s).max(dim=0).values.sum() / self.r_scale
        return float(w_u * u + w_d * d + w_r * r)


# --------------------------------------------------------------------------- maximisers


def greedy(fn: SetFunction, budget: int) -> Selection:
    """Plain greedy: at each step evaluate every remaining item and take the best (lowest index on ties).

    Costs ``O(budget * N)`` gain evaluations; a reference for :func:`lazy_greedy`.
    """
    budget = _check_budget(budget, fn.num_items)
    state = fn.new_state()
    remaining = torch.ones(fn.num_items, dtype=torch.bool)
    picks, gains = [], []
    for _ in range(budget):
        items = remaining.nonzero().squeeze(1)
        g = fn.gains(state, items).cpu()
        best = int(torch.argmax(g))  # first maximum: the lowest index among ties
        i = int(items[best])
        fn.add(state, i)
        remaining[i] = False
        picks.append(i)
        gains.append(float(g[best]))
    return Selection(torch.tensor(picks, dtype=torch.long), torch.tensor(gains, dtype=torch.float64))


def lazy_greedy(fn: SetFunction, budget: int, *, batch: int = 32) -> Selection:
    """Lazy greedy (Minoux, 1978): the picks of :func:`greedy` with far fewer gain evaluations.

    Stale gains are upper bounds of the current ones (submodularity), kept in a max-heap keyed by
    ``(-gain, index)``. An item whose gain is fresh at the top of the heap is the greedy pick, and
    the lowest index among equal gains, as in plain greedy. Stale items at the top are re-evaluated
    ``batch`` at a time (extra evaluations only tighten bounds, so the picks do not change).

    Args:
        fn: A monotone submodular set function, e.g. :class:`S3Objective`.
        budget: Number of items to pick, in ``[0, N]``.
        batch: Stale items re-evaluated together.

    Returns:
        The picks in order, with their marginal gains.

    Note:
        The argument is exact in real arithmetic. In floating point a stale bound can sit a rounding
        error below the fresh gain of another item, so two items whose gains agree to the last bits
        may be picked in a different order than by plain greedy; the tests find identical picks on
        every small pool tried, duplicates included.
    """
    budget = _check_budget(budget, fn.num_items)
    batch = check_int("batch", batch, 1)
    state = fn.new_state()
    n = fn.num_items
    # Step 1: gains of all singletons (one blockwise pass), all fresh at pick 0.
    g0 = fn.gains(state, torch.arange(n)).cpu().tolist()
    heap = [(-g, i) for i, g in enumerate(g0)]
    heapq.heapify(heap)
    fresh_at = [0] * n
    picks: list[int] = []
    gains: list[float] = []
    evaluations = n

    # Step 2: pop until the top is fresh; re-evaluate stale tops in batches.
    for t in range(budget):
        while fresh_at[heap[0][1]] != t:
            stale: list[int] = []
            while heap and len(stale) < batch and fresh_at[heap[0][1]] != t:
                stale.append(heapq.heappop(heap)[1])
            g = fn.gains(state, torch.tensor(stale)).cpu().tolist()
            evaluations += len(stale)
            for i, gi in zip(stale, g):
                fresh_at[i] = t
                heapq.heappush(heap, (-gi, i))
        neg_gain, i = heapq.heappop(heap)
        fn.add(state, i)
        picks.append(i)
        gains.append(-neg_gain)
    logger.debug("lazy greedy: %d picks, %d gain evaluations (plain greedy: %d)", budget, evaluations,
                 sum(n - t for t in range(budget)))
    return Selection(torch.tensor(picks, dtype=torch.long), torch.tensor(gains, dtype=torch.float64))


# --------------------------------------------------------------------------- strategies


def s3_select(
    probs: Tensor,
    budget: int,
    *,
    uncertainty: Tensor | Literal["margin", "entropy"] = "margin",
    weights: Sequence[float] = (0.5, 0.3, 0.2),
    num_representatives: int | None = None,
    block_size: int = 256,
    generator: torch.Generator | None = None,
) -> Selection:
    """Select ``budget`` candidates by lazy-greedy maximisation of the S3 score.

    Args:
        probs: ``(N, C)`` predicted class probabilities of the target pool.
        budget: Number of candidates to label, in ``[0, N]``.
        uncertainty: ``(N,)`` scores, e.g. from :func:`vat_sensitivity` (the paper's choice), or
            ``"margin"`` / ``"entropy"`` to compute them from ``probs``.
        weights: ``(w_u, w_d, w_r)``.
        num_representatives: Size of a uniform subsample of representatives for the facility
            location term; every candidate if None.
        block_size: Candidates per similarity block.
        generator: Source of the representative subsample.

    Returns:
        The picks in greedy order, with marginal gains.

    Raises:
        ValueError: On an empty pool, ``budget`` outside ``[0, N]``, NaN or unnormalised
            ``probs``, or ``uncertainty`` of the wrong shape.

    Example:
        >>> probs = torch.softmax(torch.randn(100, 5), dim=1)
        >>> s3_select(probs, 4).indices.shape
        torch.Size([4])
    """
    p = check_probs(probs)
    n = p.shape[0]
    budget = _check_budget(budget, n)
    if isinstance(uncertainty, str):
        kind = check_choice("uncertainty", uncertainty, ("margin", "entropy"))
        u = margin_scores(p) if kind == "margin" else entropy_scores(p)
    else:
        u = _check_scores(uncertainty, n, "uncertainty")
    reps = None
    if num_representatives is not None:
        m = check_int("num_representatives", num_representatives, 1, n)
        reps = torch.randperm(n, generator=generator)[:m].sort().values
    fn = S3Objective(p, u, weights=weights, representatives=reps, block_size=block_size)
    return lazy_greedy(fn, budget)


def _top(scores: Tensor, budget: int) -> Selection:
    order = torch.sort(-scores.cpu(), stable=True).indices[:budget]  # ties: lowest index first
    return Selection(order, scores.cpu()[order])


def select(
    strategy: Strategy,
    probs: Tensor,
    budget: int,
    *,
    generator: torch.Generator | None = None,
    **s3_kwargs: object,
) -> Selection:
    """Select ``budget`` candidates from a pool with one of the strategies.

    Strategies: ``"s3"`` (:func:`s3_select`, extra keyword arguments go there), ``"random"``
    (uniform without replacement from ``generator``), ``"entropy"`` (highest predictive entropy),
    ``"margin"`` (smallest gap between the two most probable classes). Ties go to the lowest index.

    Args:
        strategy: The strategy.
        probs: ``(N, C)`` predicted class probabilities of the pool.
        budget: Number of candidates, in ``[0, N]``.
        generator: Randomness of ``"random"`` (and of the S3 representative subsample).
        **s3_kwargs: Options of :func:`s3_select`.

    Returns:
        The selection.
    """
    check_choice("strategy", strategy, ("s3", "random", "entropy", "margin"))
    if strategy != "s3" and s3_kwargs:
        raise TypeError(f"strategy {strategy!r} takes no options, got {sorted(s3_kwargs)}")
    p = check_probs(probs)
    budget = _check_budget(budget, p.shape[0])
    if strategy == "s3":
        return s3_select(p, budget, generator=generator, **s3_kwargs)  # type: ignore[arg-type]
    if strategy == "random":
        idx = torch.randperm(p.shape[0], generator=generator)[:budget]
        return Selection(idx, torch.zeros(budget, dtype=torch.float64))
    return _top(entropy_scores(p) if strategy == "entropy" else margin_scores(p), budget)


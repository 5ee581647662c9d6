"""Which steps perturb: SAM every k steps, or at random with probability p.

A schedule is a callable ``schedule(step) -> bool`` passed as ``SAM(..., schedule=...)``; ``step`` counts the SAM
steps completed before the current one. On steps where it returns ``False`` the SAM step costs one
forward/backward (the base optimizer steps on the clean gradient), so the average cost per step is
``1 + fraction of perturbing steps`` forward/backward passes instead of 2.

Both schedules here are stateless functions of ``step`` (the random one hashes ``seed`` and ``step``), so a run
resumed from :meth:`SAM.state_dict` makes the same choices as an uninterrupted one.
"""

from __future__ import annotations

import torch

from smoothopt._validation import check_int, check_real

__all__ = ["EveryKSteps", "RandomSteps"]


class EveryKSteps:
    """Perturb on steps ``offset, offset + k, offset + 2k, ...`` (cost ``1 + 1/k`` passes per step).

    Args:
        k: Period, at least 1 (1 is plain SAM).
        offset: First perturbing step, in ``[0, k)``.

    Example:
        >>> [EveryKSteps(3)(t) for t in range(6)]
        [True, False, False, True, False, False]
    """

    def __init__(self, k: int, offset: int = 0) -> None:
        self.k = check_int("k", k, 1)
        self.offset = check_int("offset", offset, 0, self.k - 1)

    def __call__(self, step: int) -> bool:
        """Whether step ``step`` (0-based count of completed SAM steps) perturbs."""
        return step % self.k == self.offset

    def __repr__(self) -> str:
        return f"EveryKSteps(k={self.k}, offset={self.offset})"


class RandomSteps:
    """Perturb each step independently with probability ``p`` (the randomised schedule of Zhao et al. 2022).

    The draw for step ``t`` is a Bernoulli(p) from a ``torch.Generator`` seeded with a hash of ``(seed, t)``: the
    same seed gives the same steps on every device and after a resume.

    Args:
        p: Probability of perturbing, in ``[0, 1]``.
        seed: Seed of the draws.

    Example:
        >>> sched = RandomSteps(0.5, seed=0)
        >>> sum(sched(t) for t in range(1000)) in range(430, 571)
        True
    """

    def __init__(self, p: float, seed: int = 0) -> None:
        self.p = check_real("p", p, 0.0, 1.0)
        self.seed = check_int("seed", seed, 0)

    def __call__(self, step: int) -> bool:
        """Whether step ``step`` (0-based count of completed SAM steps) perturbs."""
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + int(step) * 7_919 + 17) % (2**63 - 1))
        return bool(torch.rand((), generator=gen) < self.p)

    def __repr__(self) -> str:
        return f"RandomSteps(p={self.p}, seed={self.seed})"

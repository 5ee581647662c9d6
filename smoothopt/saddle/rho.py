"""Rho schedules for SAM keyed to the phases of long-tail training (Rangwani et al., NeurIPS 2022).

A schedule is a callable ``rho(step) -> float`` passed as ``SAM(..., rho=schedule)``; ``step`` counts the
SAM steps completed before the current one, so the first step of epoch ``e`` is ``e * steps_per_epoch``.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from smoothopt._validation import check_int, check_real
from smoothopt.losses._common import resolve_start_epoch

__all__ = ["PhasedRho"]


class PhasedRho:
    r"""Piecewise-constant rho: ``values[i]`` from step ``boundaries[i - 1]`` up to ``boundaries[i]``.

    .. math::

        \rho(t) = \text{values}[k], \qquad k = \#\{\, i : \text{boundaries}[i] \le t \,\}.

    For the long-tail recipe use :meth:`for_reweighting`, which puts the last rise of rho on the first step
    of deferred re-weighting (Rangwani et al.: 0.05 -> 0.1 -> 0.5 on ImageNet-LT and iNaturalist, rho
    rising to 0.5 when DRW starts).

    Args:
        values: Rho of each phase, each in ``[0, inf)``; at least one.
        boundaries: First step of each phase after the first: ``len(values) - 1`` strictly increasing ints in
            ``[1, inf)``.

    Raises:
        ValueError: If the lengths disagree, a value is negative, or the boundaries are not increasing.

    Example:
        >>> rho = PhasedRho(values=(0.05, 0.1, 0.5), boundaries=(10, 30))
        >>> [rho(t) for t in (0, 9, 10, 29, 30, 1000)]
        [0.05, 0.05, 0.1, 0.1, 0.5, 0.5]
    """

    def __init__(self, values: Sequence[float], boundaries: Sequence[int]) -> None:
        self.values = tuple(check_real(f"values[{i}]", v, 0.0, high_open=True) for i, v in enumerate(values))
        if not self.values:
            raise ValueError("values must hold at least one rho, got an empty sequence")
        self.boundaries = tuple(check_int(f"boundaries[{i}]", b, 1) for i, b in enumerate(boundaries))
        if len(self.boundaries) != len(self.values) - 1:
            raise ValueError(
                f"boundaries must hold len(values) - 1 = {len(self.values) - 1} steps, got {len(self.boundaries)}"
            )
        for i in range(1, len(self.boundaries)):
            if self.boundaries[i] <= self.boundaries[i - 1]:
                raise ValueError(f"boundaries must be strictly increasing, got {list(self.boundaries)}")

    def __call__(self, step: int) -> float:
        """Return rho for the SAM step that follows ``step`` completed steps."""
        step = check_int("step", step, 0)
        return self.values[bisect.bisect_right(self.boundaries, step)]

    @classmethod
    def from_epochs(cls, values: Sequence[float], epoch_boundaries: Sequence[int], steps_per_epoch: int) -> PhasedRho:
        """Build the schedule from phase boundaries given in epochs (counted from 0).

        Args:
            values: Rho of each phase.
            epoch_boundaries: First epoch of each phase after the first, strictly increasing, in ``[1, inf)``.
            steps_per_epoch: Optimizer steps per epoch, in ``[1, inf)``.

        Returns:
            The schedule, whose phase ``i`` starts at step ``epoch_boundaries[i - 1] * steps_per_epoch``.
        """
        steps_per_epoch = check_int("steps_per_epoch", steps_per_epoch, 1)
        epochs = [check_int(f"epoch_boundaries[{i}]", e, 1) for i, e in enumerate(epoch_boundaries)]
        return cls(values, [e * steps_per_epoch for e in epochs])

    @classmethod
    def for_reweighting(
        cls,
        total_epochs: int,
        steps_per_epoch: int,
        start: float | int = 0.8,
        values: Sequence[float] = (0.05, 0.1, 0.5),
        early_boundaries: Sequence[int] = (5,),
    ) -> PhasedRho:
        """The long-tail recipe: rho rises to ``values[-1]`` exactly when deferred re-weighting starts.

        Phases before re-weighting switch at the epochs ``early_boundaries``; the last phase starts at the
        re-weighting epoch, resolved from ``start`` exactly as :class:`~smoothopt.losses.DeferredReweighting`
        does (pass the same ``start``, or ``drw.start_epoch``). The defaults are the ImageNet-LT recipe: 0.05
        up to epoch 5 (the end of the learning-rate warm-up; the switch epoch is unconfirmed), 0.1 until DRW
        starts, 0.5 afterwards.

        Args:
            total_epochs: Length of training in epochs, in ``[1, inf)``.
            steps_per_epoch: Optimizer steps per epoch, in ``[1, inf)``.
            start: Start of re-weighting: a float fraction in ``(0, 1)`` or an int epoch.
            values: Rho of each phase; the last is used from the re-weighting epoch on.
            early_boundaries: First epoch of each phase between the first and the last, strictly increasing
                and before the re-weighting epoch; ``len(values) - 2`` of them.

        Returns:
            The schedule.

        Raises:
            ValueError: If the phase counts disagree, re-weighting starts at epoch 0, or an early boundary is not
                before the re-weighting epoch.

        Example:
            >>> rho = PhasedRho.for_reweighting(total_epochs=90, steps_per_epoch=100, start=60)
            >>> rho(0), rho(499), rho(500), rho(5999), rho(6000)
            (0.05, 0.05, 0.1, 0.1, 0.5)
        """
        if len(values) < 2:
            raise ValueError(f"values must hold at least 2 rhos (before and after re-weighting), got {len(values)}")
        drw_epoch = resolve_start_epoch(total_epochs, start)
        if drw_epoch == 0:
            raise ValueError("start must be after epoch 0: re-weighting from the first step leaves no phase before it")
        early = [check_int(f"early_boundaries[{i}]", e, 1) for i, e in enumerate(early_boundaries)]
        if len(early) != len(values) - 2:
            raise ValueError(
                f"early_boundaries must hold len(values) - 2 = {len(values) - 2} epochs, got {len(early)}"
            )
        if early and early[-1] >= drw_epoch:
            raise ValueError(
                f"early_boundaries must lie before the re-weighting epoch {drw_epoch}, got {list(early)}"
            )
        return cls.from_epochs(values, [*early, drw_epoch], steps_per_epoch)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(values={self.values}, boundaries={self.boundaries})"

"""Which reverse steps enter the hallucination score: the last K of the schedule, or a noise-level cut.

The paper takes the last ``K = 10`` of ``T = 1000`` DDPM steps (``t = 9, ..., 0``, the output included).
Ten of fifty DDIM steps cover a very different stretch of the reverse process, so the window can be
given three ways, exactly one at a time:

- ``last_k``: position in the schedule, ``step >= num_steps - last_k`` with ``step`` the 0-based index of
  the reverse step (``0`` is the noisiest, ``num_steps - 1`` produces the output);
- ``timestep_below``: the step's timestep ``t < timestep_below`` (the paper's window is
  ``timestep_below=10`` on the 1000-step DDPM schedule);
- ``sigma_below``: the step's noise level ``sigma < sigma_below`` (the scheduler's own sigma: the
  ``sqrt((1 - alpha_bar) / alpha_bar)`` of a VP schedule, the Karras sigma, or the flow-matching sigma).
"""

from __future__ import annotations

from dataclasses import dataclass

from hallucfilter._checks import check_int, check_real

__all__ = ["Window"]


@dataclass(frozen=True)
class Window:
    """The set of reverse steps whose ``x0_hat`` is recorded.

    Args:
        last_k: Number of final steps of the schedule, by position. ``None`` together with no noise cut
            records every step it is given (the caller does the windowing).
        timestep_below: Record steps whose timestep is strictly below this value.
        sigma_below: Record steps whose sigma is strictly below this value.

    Raises:
        ValueError: If more than one criterion is given, or a bound is out of range.
    """

    last_k: int | None = 10
    timestep_below: float | None = None
    sigma_below: float | None = None

    def __post_init__(self) -> None:
        given = [n for n in ("last_k", "timestep_below", "sigma_below") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of last_k, timestep_below, sigma_below; got {', '.join(given)}")
        if self.last_k is not None:
            check_int("last_k", self.last_k, low=1)
        if self.timestep_below is not None:
            check_real("timestep_below", self.timestep_below, low=0.0, low_open=True)
        if self.sigma_below is not None:
            check_real("sigma_below", self.sigma_below, low=0.0, low_open=True)

    @property
    def kind(self) -> str:
        """``"position"``, ``"timestep"``, ``"sigma"`` or ``"all"``."""
        if self.last_k is not None:
            return "position"
        if self.timestep_below is not None:
            return "timestep"
        if self.sigma_below is not None:
            return "sigma"
        return "all"

    def check_schedule(self, num_steps: int) -> None:
        """Raise ``ValueError`` if a position window is longer than a schedule of ``num_steps`` steps."""
        num_steps = check_int("num_steps", num_steps, low=1)
        if self.last_k is not None and self.last_k > num_steps:
            raise ValueError(
                f"last_k={self.last_k} is longer than the schedule of num_steps={num_steps} steps; "
                f"use last_k <= {num_steps} (or a timestep_below / sigma_below cut)"
            )

    def contains(self, *, step: int | None = None, num_steps: int | None = None,
                 timestep: float | None = None, sigma: float | None = None) -> bool:
        """Whether a reverse step lies in the window.

        Args:
            step: 0-based index of the step in the schedule (needed for ``last_k``).
            num_steps: Length of the schedule (needed for ``last_k``).
            timestep: The step's timestep (needed for ``timestep_below``).
            sigma: The step's noise level (needed for ``sigma_below``).

        Returns:
            ``True`` if the step's ``x0_hat`` belongs to the score.

        Raises:
            ValueError: If the quantity the window needs is missing or out of range.
        """
        kind = self.kind
        if kind == "position":
            if step is None or num_steps is None:
                raise ValueError("a last_k window needs step= and num_steps= (0-based step index, schedule length)")
            self.check_schedule(num_steps)
            step = check_int("step", step, low=0, high=num_steps - 1)
            return step >= num_steps - self.last_k  # type: ignore[operator]
        if kind == "timestep":
            if timestep is None:
                raise ValueError("a timestep_below window needs timestep= at each update")
            return float(timestep) < self.timestep_below  # type: ignore[operator]
        if kind == "sigma":
            if sigma is None:
                raise ValueError("a sigma_below window needs sigma= at each update")
            return float(sigma) < self.sigma_below  # type: ignore[operator]
        return True

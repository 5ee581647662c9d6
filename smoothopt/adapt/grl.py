"""Gradient reversal (Ganin and Lempitsky, DANN) with a coefficient that follows the training step.

The coefficient ``lambda`` multiplies the reversed gradient. It is a function of the optimisation
step, never of the number of forward passes: a two-pass step (SAM, SDAT) runs the network twice
per update and must not advance the schedule twice. The step is advanced either explicitly with
:meth:`GradientReversal.step` or by an optimizer hook installed with :meth:`GradientReversal.attach`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from smoothopt._validation import check_choice, check_int, check_real

__all__ = [
    "GradientReversal",
    "dann_coefficient",
    "grad_reverse",
    "warm_start_coefficient",
]

Schedule = Literal["dann", "warm_start", "constant"]


def dann_coefficient(progress: float, *, gamma: float = 10.0, low: float = 0.0, high: float = 1.0) -> float:
    r"""Return the DANN gradient-reversal coefficient at training progress ``p``.

    .. math::
        \lambda(p) = \mathrm{low} + (\mathrm{high} - \mathrm{low})
        \left(\frac{2}{1 + e^{-\gamma p}} - 1\right)

    Args:
        progress: Fraction of training done, ``p`` in ``[0, 1]`` (values above 1 are allowed and
            saturate towards ``high``).
        gamma: Steepness; the DANN paper uses 10.
        low: Coefficient at ``p = 0``.
        high: Limit as ``p`` grows.

    Returns:
        The coefficient.

    Raises:
        ValueError: If ``progress`` is negative or ``gamma`` is not positive.
    """
    p = check_real("progress", progress, 0.0)
    gamma = check_real("gamma", gamma, 0.0, low_open=True)
    return low + (high - low) * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


def warm_start_coefficient(
    step: int, max_steps: int, *, alpha: float = 1.0, low: float = 0.0, high: float = 1.0
) -> float:
    r"""Return the warm-start coefficient: the DANN sigmoid ramp driven by ``alpha * step / max_steps``.

    .. math::
        \lambda(i) = \mathrm{low} + (\mathrm{high} - \mathrm{low})
        \left(\frac{2}{1 + e^{-\alpha i / T}} - 1\right)

    With ``alpha = 1`` the coefficient reaches only about 46% of ``high`` at ``i = T``: a slow start
    that keeps the adversarial gradient small while the discriminator is still random.

    Args:
        step: Optimisation step ``i`` (>= 0).
        max_steps: Step scale ``T`` (> 0).
        alpha: Steepness.
        low: Coefficient at step 0.
        high: Limit as the step grows.

    Returns:
        The coefficient.
    """
    step = check_int("step", step, 0)
    max_steps = check_int("max_steps", max_steps, 1)
    alpha = check_real("alpha", alpha, 0.0, low_open=True)
    return low + (high - low) * (2.0 / (1.0 + math.exp(-alpha * step / max_steps)) - 1.0)


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, coeff: float) -> Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output.neg() * ctx.coeff, None


def grad_reverse(x: Tensor, coeff: float = 1.0) -> Tensor:
    r"""Identity in the forward pass; multiplies the gradient by ``-coeff`` in the backward pass.

    Args:
        x: Any tensor.
        coeff: The reversal coefficient :math:`\lambda \ge 0`.

    Returns:
        ``x`` unchanged (a view).
    """
    coeff = check_real("coeff", coeff, 0.0)
    return _ReverseGrad.apply(x, coeff)


class GradientReversal(nn.Module):
    r"""Gradient reversal layer whose coefficient follows the optimisation step.

    The forward pass is the identity; the backward pass multiplies the gradient by
    :math:`-\lambda(i)`, where ``i`` is the number of times :meth:`step` has been called (kept in
    the ``num_steps`` buffer, so it is saved in the ``state_dict``). Forward passes never change
    ``i``.

    Schedules:
        * ``"dann"``: :func:`dann_coefficient` at ``p = i / max_steps``;
        * ``"warm_start"``: :func:`warm_start_coefficient` with ``alpha``;
        * ``"constant"``: ``high`` at every step.

    Args:
        schedule: One of ``"dann"``, ``"warm_start"``, ``"constant"``.
        max_steps: Length of training ``T`` in optimisation steps (the step scale of the schedule).
        low: Coefficient at step 0 (not used by ``"constant"``).
        high: Final (or constant) coefficient.
        gamma: Steepness of the ``"dann"`` schedule.
        alpha: Steepness of the ``"warm_start"`` schedule.

    Shape:
        - Input: any shape.
        - Output: the same shape.

    Example:
        >>> grl = GradientReversal("dann", max_steps=1000)
        >>> handle = grl.attach(discriminator_optimizer)  # one schedule step per update  # doctest: +SKIP
        >>> grl.step(); round(grl.coeff, 4)
        0.005
    """

    num_steps: Tensor

    def __init__(
        self,
        schedule: Schedule = "dann",
        max_steps: int = 10_000,
        *,
        low: float = 0.0,
        high: float = 1.0,
        gamma: float = 10.0,
        alpha: float = 1.0,
    ) -> None:
        super().__init__()
        self.schedule = check_choice("schedule", schedule, ("dann", "warm_start", "constant"))
        self.max_steps = check_int("max_steps", max_steps, 1)
        self.low = check_real("low", low, 0.0)
        self.high = check_real("high", high, 0.0)
        self.gamma = check_real("gamma", gamma, 0.0, low_open=True)
        self.alpha = check_real("alpha", alpha, 0.0, low_open=True)
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))
        # NOTE: a host-side copy of the step, so that a forward pass never reads the (maybe CUDA)
        # buffer and synchronises; it is refreshed whenever the buffer is loaded.
        self._step = 0
        self.register_load_state_dict_post_hook(lambda module, _: module._sync_step())

    def _sync_step(self) -> None:
        self._step = int(self.num_steps)

    @property
    def coeff(self) -> float:
        """The reversal coefficient at the current step."""
        i = self._step
        if self.schedule == "constant":
            return self.high
        if self.schedule == "dann":
            return dann_coefficient(i / self.max_steps, gamma=self.gamma, low=self.low, high=self.high)
        return warm_start_coefficient(i, self.max_steps, alpha=self.alpha, low=self.low, high=self.high)

    def step(self, num: int = 1) -> None:
        """Advance the schedule by ``num`` optimisation steps."""
        num = check_int("num", num, 0)
        self.num_steps += num
        self._step += num

    def set_step(self, step: int) -> None:
        """Set the schedule to optimisation step ``step`` (e.g. when resuming without a state dict)."""
        self.num_steps.fill_(check_int("step", step, 0))
        self._step = int(step)

    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        """Advance the schedule once after every ``optimizer.step()``.

        Attach to an optimizer that steps exactly once per iteration: for SDAT, the discriminator's.

        Args:
            optimizer: The optimizer whose steps drive the schedule.

        Returns:
            The hook handle; call ``handle.remove()`` to detach.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        return optimizer.register_step_post_hook(lambda *_: self.step())

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x``; its gradient will be multiplied by ``-coeff``."""
        return _ReverseGrad.apply(x, self.coeff)

    def extra_repr(self) -> str:  # noqa: D102
        return f"schedule={self.schedule!r}, max_steps={self.max_steps}, low={self.low}, high={self.high}"

r"""Negative-curvature escape: a step along the most negative Hessian eigenvector, wrapped around an optimizer.

At a saddle point the gradient vanishes but the Hessian has an eigenvalue :math:`\lambda_{min} < 0`
with unit eigenvector :math:`u`. Along :math:`\pm u` the second-order model of the loss decreases,

.. math::
    L(\theta + s\eta u) \approx L(\theta) + s\eta\, g^\top u + \tfrac{1}{2}\eta^2 \lambda_{min},

so with the sign :math:`s = -\operatorname{sign}(g^\top u)` both terms decrease it (Nesterov and
Polyak 2006; the curvature step of Jin et al. 2017 uses random noise instead of :math:`u`). Every
``every`` steps the wrapper finds :math:`(\lambda_{min}, u)` by Lanczos on the current batch and,
when :math:`\lambda_{min} < -\epsilon`, moves the weights by :math:`s \eta u` after the base step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from smoothopt._validation import check_choice, check_int, check_real
from smoothopt.hessian._flat import make_generator, unflatten
from smoothopt.hessian.lanczos import lanczos
from smoothopt.hessian.operator import HessianOperator

__all__ = ["NegativeCurvatureEscape"]

logger = logging.getLogger(__name__)


class NegativeCurvatureEscape(torch.optim.Optimizer):
    r"""Wrap ``base_optimizer``; every ``every`` steps, step along negative curvature when there is some.

    Args:
        base_optimizer: Any ``torch.optim.Optimizer`` over the model's parameters; its
            ``param_groups`` and ``state`` are shared, so LR schedulers and hooks see it unchanged.
        model: The network whose loss Hessian is probed.
        loss_fn: ``loss_fn(model(inputs), targets)``, mean-reduced.
        epsilon: Curvature threshold :math:`\\epsilon`; an escape happens when
            :math:`\\lambda_{min} < -\\epsilon`. In ``[0, inf)``.
        step_size: Length :math:`\\eta` of the escape step (a unit eigenvector is scaled by it). In ``(0, inf)``.
        every: Check every this many calls of :meth:`step`.
        lanczos_steps: Lanczos steps per check (operator products on the batch).
        mode: Model mode for the Hessian (``"train"`` keeps dropout/BatchNorm as trained; buffers are restored).
        seed: Seed of the Lanczos start vectors and of the sign when :math:`g^\top u = 0`.

    Raises:
        ValueError: If an argument is out of range.

    Note:
        Each check costs about ``lanczos_steps + 2`` gradient computations on the batch.

    Example:
        >>> model = nn.Linear(4, 3)
        >>> base = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> opt = NegativeCurvatureEscape(base, model, nn.functional.cross_entropy, every=1, lanczos_steps=5)
        >>> x, y = torch.randn(16, 4), torch.randint(3, (16,))
        >>> opt.zero_grad(); nn.functional.cross_entropy(model(x), y).backward()
        >>> opt.step(batch=(x, y)) is None
        True
    """

    def __init__(
        self,
        base_optimizer: torch.optim.Optimizer,
        model: nn.Module,
        loss_fn: Callable[[Any, Tensor], Tensor],
        *,
        epsilon: float = 1e-3,
        step_size: float = 0.1,
        every: int = 10,
        lanczos_steps: int = 20,
        mode: Literal["eval", "train"] = "train",
        seed: int = 0,
    ) -> None:
        if not isinstance(base_optimizer, torch.optim.Optimizer):
            raise TypeError(f"base_optimizer must be a torch.optim.Optimizer, got {type(base_optimizer).__name__}")
        check_real("epsilon", epsilon, 0.0)
        check_real("step_size", step_size, 0.0, low_open=True)
        check_int("every", every, 1)
        check_int("lanczos_steps", lanczos_steps, 1)
        check_choice("mode", mode, ("eval", "train"))
        defaults = {"epsilon": epsilon, "step_size": step_size}
        super().__init__([p for g in base_optimizer.param_groups for p in g["params"]], defaults)
        self.base_optimizer = base_optimizer
        self.param_groups = base_optimizer.param_groups
        self.state = base_optimizer.state
        self.model = model
        self.loss_fn = loss_fn
        self.epsilon = epsilon
        self.step_size = step_size
        self.every = every
        self.lanczos_steps = lanczos_steps
        self.mode = mode
        self.generator = make_generator(None, seed)
        self.num_steps = 0
        self.num_escapes = 0
        self.last_lambda_min: float | None = None

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[[], Tensor] | None = None, batch: tuple[Any, Tensor] | None = None
    ) -> Any:
        """Base step, then (every ``every`` calls, when ``batch`` is given) a negative-curvature check.

        Args:
            closure: Passed to the base optimizer.
            batch: ``(inputs, targets)`` on which the Hessian is probed; without it no check runs.

        Returns:
            Whatever the base optimizer's ``step`` returns (the loss when a closure is given).
        """
        loss = self.base_optimizer.step(closure)  # type: ignore[arg-type]
        self.num_steps += 1
        if batch is not None and self.num_steps % self.every == 0:
            with torch.enable_grad():
                self.escape(batch)
        return loss

    def escape(self, batch: tuple[Any, Tensor]) -> bool:
        r"""Find :math:`(\lambda_{min}, u)` on ``batch`` and step along :math:`s u` if it is below :math:`-\epsilon`.

        Returns:
            Whether the weights moved.
        """
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]

        # Step 1: bottom eigenpair by Lanczos on the batch's Hessian.
        op = HessianOperator(self.model, self.loss_fn, batch, params=params, engine="graph", mode=self.mode)
        res = lanczos(op, 1, which="bottom", max_steps=self.lanczos_steps, return_eigenvectors=True,
                      generator=self.generator)
        self.last_lambda_min = float(res.bottom[0])
        if self.last_lambda_min >= -self.epsilon:
            return False

        # Step 2: sign s = -sign(g^T u), random when g^T u = 0.
        assert res.bottom_vectors is not None  # noqa: S101 - requested above
        u = res.bottom_vectors[0]
        slope = float(op.gradient() @ u)
        sign = -1.0 if slope > 0 else 1.0
        if slope == 0:
            sign = 1.0 if bool(torch.randint(0, 2, (1,), generator=self.generator)) else -1.0

        # Step 3: theta <- theta + s * eta * u.
        with torch.no_grad():
            for p, d in zip(params, unflatten(u, params)):
                p.add_(d, alpha=sign * self.step_size)
        self.num_escapes += 1
        logger.debug("escape step along lambda_min=%.4g (slope %.3g)", self.last_lambda_min, slope)
        return True

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients through the base optimizer."""
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state plus the wrapper's counters and generator state."""
        return {
            "base_optimizer": self.base_optimizer.state_dict(),
            "num_steps": self.num_steps,
            "num_escapes": self.num_escapes,
            "generator": self.generator.get_state() if self.generator is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.base_optimizer.load_state_dict(state_dict["base_optimizer"])
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.num_steps = int(state_dict["num_steps"])
        self.num_escapes = int(state_dict["num_escapes"])
        if state_dict.get("generator") is not None and self.generator is not None:
            self.generator.set_state(state_dict["generator"])

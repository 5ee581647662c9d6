r"""Perturbed gradient descent (Jin, Ge, Netrapalli, Kakade, Jordan, ICML 2017, arXiv 1703.00887).

Map from the paper (its Algorithm 2) to the code:

=====================  ==============================================================
paper                  code
=====================  ==============================================================
:math:`x_t`            the parameters (of every group) that have a gradient
:math:`g_{thres}`      ``threshold``
:math:`r`              ``radius``
:math:`t_{thres}`      ``interval``
:math:`t_{noise}`      ``last_perturbation_step``
:math:`\xi_t`          noise drawn uniformly from the ball :math:`\mathbb{B}_0(r)`
=====================  ==============================================================
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from smoothopt._foreach import global_norm
from smoothopt._validation import check_int, check_real
from smoothopt._wrapping import bind_base_optimizer

__all__ = ["PerturbedGD"]

logger = logging.getLogger(__name__)


class PerturbedGD(Optimizer):
    r"""Perturbed gradient descent (PGD, Jin et al. 2017) wrapped around any ``torch.optim`` optimizer.

    Before each step of the base optimizer, when the gradient is small and no perturbation happened in the
    last ``interval`` steps, the parameters jump by noise drawn uniformly from a ball of radius ``r``:

    .. math::

        \text{if } \lVert \nabla f(x_t) \rVert \le g_{thres} \text{ and } t - t_{noise} \ge t_{thres}:\quad
        x_t \leftarrow x_t + \xi_t,\ \ \xi_t \sim \mathrm{Uniform}(\mathbb{B}_0(r)),\ \ t_{noise} \leftarrow t,

    then :math:`x_{t+1} = \mathrm{base\_step}(x_t)`. Near a strict saddle point the gradient vanishes, and
    the isotropic jump has a component along the negative-curvature directions that gradient descent then
    amplifies. The ball is the joint one over every parameter that has a gradient (one draw of dimension
    :math:`d` = their total number of entries), as in the paper.

    With a closure, :meth:`step` evaluates the gradient at :math:`x_t`, perturbs, and re-evaluates it at the
    perturbed point, as Algorithm 2 does; without one, the base optimizer steps with the gradient taken
    before the jump (a first-order approximation for small ``r``).

    The wrapper shares ``param_groups`` with the base optimizer, so LR schedulers built on either reach the
    base's ``lr``; :meth:`state_dict` holds the base optimizer's state together with the step counters and
    the noise generator, so a resumed run draws the same noise.

    Args:
        params: Parameters or parameter groups. With a class as ``base_optimizer`` these are also the ones it
            optimizes; with an instance they must be held by it, and only these are perturbed.
        base_optimizer: An optimizer class, built here on the same groups with ``**base_kwargs``, or an
            optimizer already built.
        radius: Radius :math:`r` of the noise ball, in ``(0, inf)``.
        threshold: Gradient-norm threshold :math:`g_{thres}`, in ``[0, inf]``; noise is added only when the
            joint gradient norm is at most this.
        interval: Minimum number of steps :math:`t_{thres}` between two perturbations, in ``[1, inf)``.
        seed: Seed of the CPU generator the noise is drawn from.
        **base_kwargs: Keyword arguments for ``base_optimizer`` when it is a class (``lr``, ``momentum``, ...).

    Attributes:
        base_optimizer: The wrapped optimizer.
        steps: Number of steps completed.
        num_perturbations: Number of perturbations so far, for logging.
        last_perturbation_step: Step index (0-based) of the last perturbation, or ``None``.
        last_grad_norm: 0-dim tensor, the joint gradient norm seen by the last step whose check was due
            (``None`` before).
        last_noise_norm: Norm of the last noise vector :math:`\lVert \xi \rVert \le r` (``None`` before).

    Raises:
        TypeError: If ``base_optimizer`` is neither an optimizer class nor an instance, or ``base_kwargs`` are
            given with an instance.
        ValueError: If an argument is outside its range, or a parameter is not held by the base instance.

    Note:
        The threshold test reads the gradient norm on the host, one device synchronisation on each step where
        a perturbation is due (not on the ``interval - 1`` steps after a perturbation). The noise is drawn on
        the CPU and copied to each parameter's device, so a run draws the same noise on any device.

    Note:
        Under DDP give every rank the same ``seed``: the gradients are averaged before :meth:`step`, so every
        rank takes the same decision and draws the same noise, and the replicas stay identical. With a
        closure, a perturbation costs one more forward/backward, which also updates BatchNorm statistics
        once more.

    Note:
        Under ``torch.amp.GradScaler`` call ``scaler.step(opt)``: the scaler unscales the gradients before
        :meth:`step` runs, so the threshold is compared with the true gradient norm.

    Note:
        ``radius``, ``threshold`` and ``interval`` must be sized for the problem: the paper's values follow
        from the smoothness constants and the target accuracy, which are rarely known in deep learning.

    Example:
        >>> import torch
        >>> from smoothopt import PerturbedGD
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = PerturbedGD(model.parameters(), torch.optim.SGD, radius=1e-2, threshold=1e-3, interval=10, lr=0.1)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
        >>> opt.num_perturbations
        0
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer] | Optimizer,
        radius: float = 1e-2,
        threshold: float = 1e-3,
        interval: int = 10,
        seed: int = 0,
        **base_kwargs: Any,
    ) -> None:
        self.radius = check_real("radius", radius, 0.0, math.inf, low_open=True, high_open=True)
        self.threshold = check_real("threshold", threshold, 0.0, math.inf)
        self.interval = check_int("interval", interval, 1)
        self.seed = check_int("seed", seed)
        self.steps = 0
        self.num_perturbations = 0
        self.last_perturbation_step: int | None = None
        self.last_grad_norm: Tensor | None = None
        self.last_noise_norm: float | None = None
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)

        self.base_optimizer: Optimizer  # set by bind_base_optimizer, which shares its param_groups
        self._only: set[Tensor] | None = bind_base_optimizer(self, params, base_optimizer, {}, base_kwargs)

    def _params_with_grad(self) -> list[Tensor]:
        return [
            p
            for g in self.param_groups
            for p in g["params"]
            if p.grad is not None and (self._only is None or p in self._only)
        ]

    def perturbation_due(self) -> bool:
        """Return whether at least ``interval`` steps have passed since the last perturbation (or none happened)."""
        return self.last_perturbation_step is None or self.steps - self.last_perturbation_step >= self.interval

    @torch.no_grad()
    def perturb(self, params: list[Tensor]) -> float:
        r"""Add noise drawn uniformly from the ball :math:`\mathbb{B}_0(r)` to ``params`` in place.

        Args:
            params: The tensors forming the joint vector :math:`x`.

        Returns:
            The norm of the noise added.
        """
        # 1. Direction: a standard normal vector over all d entries, normalised (isotropic on the sphere).
        noise = [
            torch.randn(p.shape, generator=self.generator, dtype=torch.float64 if p.dtype == torch.float64 else None)
            for p in params
        ]
        d = sum(n.numel() for n in noise)
        norm = math.sqrt(sum(float(n.double().square().sum()) for n in noise))

        # 2. Radius r * U^(1/d), U ~ Uniform(0, 1), makes the point uniform in the ball, not on its surface.
        u = float(torch.rand((), generator=self.generator, dtype=torch.float64))
        length = self.radius * math.exp(math.log(u) / d) if u > 0 else 0.0

        # 3. x <- x + xi.
        scale = length / norm if norm > 0 else 0.0
        for p, n in zip(params, noise):
            p.add_(n.to(device=p.device, dtype=p.dtype), alpha=scale)
        return length

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Perturb if the gradient is small and a perturbation is due, then take one base optimizer step.

        Args:
            closure: Optional callable that zeroes the gradients, computes the loss, calls ``backward`` and
                returns the loss. It runs at the current point and, after a perturbation, once more at the
                perturbed point.

        Returns:
            The closure's loss at the unperturbed point, or ``None`` without a closure.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # 1. Check ||grad f(x_t)|| <= g_thres and t - t_noise >= t_thres (Algorithm 2, first line of the loop).
        if self.perturbation_due():
            params = self._params_with_grad()
            if params:
                self.last_grad_norm = global_norm([p.grad for p in params if p.grad is not None])
                if float(self.last_grad_norm) <= self.threshold:
                    # 2. x_t <- x_t + xi_t, t_noise <- t.
                    self.last_noise_norm = self.perturb(params)
                    self.last_perturbation_step = self.steps
                    self.num_perturbations += 1
                    logger.debug(
                        "perturbation %d at step %d: grad norm %.3e, noise norm %.3e",
                        self.num_perturbations,
                        self.steps,
                        float(self.last_grad_norm),
                        self.last_noise_norm,
                    )
                    if closure is not None:
                        with torch.enable_grad():
                            closure()

        # 3. x_{t+1} = base_step(x_t).
        self.base_optimizer.step()
        self.steps += 1
        return loss

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group to the wrapper and to the base optimizer (they share ``param_groups``)."""
        if not hasattr(self, "base_optimizer"):
            super().add_param_group(param_group)
            return
        self.base_optimizer.add_param_group(param_group)
        self.param_groups = self.base_optimizer.param_groups
        if self._only is not None:
            params = param_group["params"]
            self._only.update([params] if isinstance(params, Tensor) else params)

    def state_dict(self) -> dict[str, Any]:
        """Return the base optimizer's state dict with the perturbation state under the key ``"pgd"``."""
        sd = self.base_optimizer.state_dict()
        sd["pgd"] = {
            "steps": self.steps,
            "num_perturbations": self.num_perturbations,
            "last_perturbation_step": self.last_perturbation_step,
            "last_noise_norm": self.last_noise_norm,
            "generator_state": self.generator.get_state(),
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a dict produced by :meth:`state_dict` (or a plain state dict of the base optimizer).

        Args:
            state_dict: The dict to load; it is not modified.
        """
        state_dict = dict(state_dict)
        pgd = state_dict.pop("pgd", None)
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        if pgd is not None:
            self.steps = int(pgd["steps"])
            self.num_perturbations = int(pgd["num_perturbations"])
            last = pgd["last_perturbation_step"]
            self.last_perturbation_step = None if last is None else int(last)
            self.last_noise_norm = pgd.get("last_noise_norm")
            self.generator.set_state(pgd["generator_state"].cpu())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_optimizer={type(self.base_optimizer).__name__}, radius={self.radius}, "
            f"threshold={self.threshold}, interval={self.interval}, seed={self.seed})"
        )

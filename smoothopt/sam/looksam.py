r"""LookSAM (Liu et al., CVPR 2022): full SAM every k steps, a reused correction in between.

Map from the paper to the code: :math:`g` is the clean gradient, :math:`g_s` the gradient at
:math:`w + \epsilon`, :math:`g_v` the stored component of :math:`g_s` orthogonal to :math:`g`
(``state[p]["g_v"]``), :math:`k` and :math:`\alpha` are ``k`` and ``alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from smoothopt._foreach import bucket, dot, global_norm, scale_
from smoothopt._validation import check_int, check_real
from smoothopt.sam.sam import SAM, Rho
from smoothopt.sam.schedules import EveryKSteps

__all__ = ["LookSAM"]


class LookSAM(SAM):
    r"""LookSAM (Liu et al. 2022): a SAM step every ``k`` steps and one forward/backward on the others.

    On a refresh step (``sam_steps % k == 0``) this is SAM, and the component of the perturbed gradient
    orthogonal to the clean one is stored (Eq. 6 of the paper):

    .. math::
        g_v = g_s - \frac{\langle g_s, g \rangle}{\lVert g \rVert^2} \, g

    On the other steps :meth:`first_step` returns ``False`` (no ascent, no second pass; :meth:`step` with a
    closure runs it once) and the base optimizer steps with the clean gradient corrected by the stored
    component, rescaled to the current gradient (Eq. 7):

    .. math::
        g_s \approx g + \alpha \, \frac{\lVert g \rVert}{\lVert g_v \rVert} \, g_v

    The cost is ``1 + 1/k`` forward/backward passes per step.

    Args:
        params: As for :class:`~smoothopt.sam.SAM`.
        base_optimizer: As for :class:`~smoothopt.sam.SAM`.
        rho: As for :class:`~smoothopt.sam.SAM`.
        adaptive: As for :class:`~smoothopt.sam.SAM`.
        k: Refresh period, at least 1 (1 is SAM).
        alpha: Weight :math:`\alpha \ge 0` of the reused component.
        eta: As for :class:`~smoothopt.sam.SAM`.
        **base_kwargs: As for :class:`~smoothopt.sam.SAM`.

    Raises:
        ValueError: If ``k`` < 1 or ``alpha`` is negative or NaN, and as :class:`~smoothopt.sam.SAM`.
        RuntimeError: At a refresh, if a perturbed parameter has a sparse gradient.

    Note:
        :math:`g_v` is part of :meth:`state_dict` (one tensor per perturbed parameter), so a resumed run reuses it.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> looksam = LookSAM(model.parameters(), torch.optim.SGD, rho=0.1, k=5, alpha=0.7, lr=0.1)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer] | Optimizer,
        rho: Rho = 0.05,
        adaptive: bool = False,
        *,
        k: int = 5,
        alpha: float = 0.7,
        eta: float = 0.01,
        **base_kwargs: Any,
    ) -> None:
        self.k = check_int("k", k, 1)
        self.alpha = check_real("alpha", alpha, 0.0, math.inf, high_open=True)
        self._clean: tuple[list[Tensor], list[Tensor]] = ([], [])
        super().__init__(params, base_optimizer, rho, adaptive, eta=eta, schedule=EveryKSteps(self.k),
                         **base_kwargs)

    def _on_ascent(self, groups: list[tuple[dict[str, Any], float, list[Tensor], list[Tensor]]]) -> None:
        params = [p for _, _, ps, _ in groups for p in ps]
        grads = [g for _, _, _, gs in groups for g in gs]
        if any(g.is_sparse for g in grads):
            raise RuntimeError("LookSAM does not support sparse gradients; use SAM for models with sparse gradients")
        self._clean = (params, [g.clone() for g in grads])

    def _adjust_gradient(self, ascended: bool, inv_scale: Tensor | None) -> None:
        if ascended:
            self._refresh(inv_scale)
        else:
            self._reuse()

    def _refresh(self, inv_scale: Tensor | None) -> None:
        params, clean = self._clean
        self._clean = ([], [])
        pairs = [(p, p.grad, c) for p, c in zip(params, clean) if p.grad is not None]
        if not pairs:
            return
        g_s = [gs for _, gs, _ in pairs]
        g = [c for _, _, c in pairs]
        if inv_scale is not None:
            scale_(g, inv_scale)

        # Eq. (6): g_v = g_s - <g_s, g> / ||g||^2 * g, kept for the next k - 1 steps
        coef = dot(g_s, g) / (dot(g, g) + 1e-24)
        for gs_b, g_b in bucket(g_s, g):
            torch._foreach_mul_(g_b, -coef.to(g_b[0].device, g_b[0].dtype))
            torch._foreach_add_(g_b, gs_b)
        for (p, _, _), g_v in zip(pairs, g):
            self.state[p]["g_v"] = g_v

    def _reuse(self) -> None:
        pairs = [(p.grad, self.state[p]["g_v"]) for group in self.param_groups if self.current_rho(group) > 0
                 for p in group["params"]
                 if p.grad is not None and "g_v" in self.state.get(p, {}) and (self._only is None or p in self._only)]
        if not pairs:
            return
        grads = [g for g, _ in pairs]
        g_v = [v for _, v in pairs]

        # Eq. (7): g_s ~ g + alpha * ||g|| / ||g_v|| * g_v, written into .grad
        factor = self.alpha * global_norm(grads) / (global_norm(g_v) + 1e-12)
        for gs, vs in bucket(grads, g_v):
            torch._foreach_add_(gs, torch._foreach_mul(vs, factor.to(gs[0].device, gs[0].dtype)))

r"""Surrogate-gap guided SAM (GSAM, Zhuang et al., ICLR 2022).

Map from the paper to the code: :math:`\nabla f` is the clean gradient saved by the ascent, :math:`\nabla f_p`
the gradient at :math:`w + \epsilon` (``.grad`` at the descent), :math:`\alpha` is ``alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from smoothopt._foreach import bucket, dot, scale_
from smoothopt._validation import check_real
from smoothopt.sam.sam import SAM, Rho

__all__ = ["GSAM"]


class GSAM(SAM):
    r"""Surrogate-gap guided SAM (GSAM, Zhuang et al. 2022): SAM's descent plus an ascent on the surrogate gap.

    The ascent is SAM's. At the descent, the clean gradient :math:`\nabla f` is split into its component along
    the perturbed gradient :math:`\nabla f_p` and the rest, :math:`\nabla f_\perp`; the component orthogonal to
    :math:`\nabla f_p` raises the surrogate gap :math:`h = f_p - f` without changing :math:`f_p` to first order,
    so subtracting it lowers the gap (Algorithm 1 of the paper):

    .. math::
        \nabla f_\perp = \nabla f - \frac{\langle \nabla f, \nabla f_p \rangle}{\lVert \nabla f_p \rVert^2}
        \nabla f_p, \qquad d = \nabla f_p - \alpha \, \nabla f_\perp

    and the base optimizer steps with :math:`d`. The paper also scales :math:`\rho` with the learning rate; pass
    a callable ``rho`` for that.

    Args:
        params: As for :class:`~smoothopt.sam.SAM`.
        base_optimizer: As for :class:`~smoothopt.sam.SAM`.
        rho: As for :class:`~smoothopt.sam.SAM`.
        adaptive: As for :class:`~smoothopt.sam.SAM` (GSAM on ASAM's neighbourhood).
        alpha: Weight :math:`\alpha \ge 0` of the surrogate-gap term (0 is SAM).
        eta: As for :class:`~smoothopt.sam.SAM`.
        schedule: As for :class:`~smoothopt.sam.SAM`.
        **base_kwargs: As for :class:`~smoothopt.sam.SAM`.

    Raises:
        ValueError: If ``alpha`` is negative or NaN, and as :class:`~smoothopt.sam.SAM`.
        RuntimeError: At the ascent, if a perturbed parameter has a sparse gradient.

    Note:
        GSAM keeps a copy of the clean gradient between the two passes (one extra tensor per parameter).

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> gsam = GSAM(model.parameters(), torch.optim.SGD, rho=0.05, alpha=0.1, lr=0.1)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer] | Optimizer,
        rho: Rho = 0.05,
        adaptive: bool = False,
        *,
        alpha: float = 0.1,
        eta: float = 0.01,
        schedule: Callable[[int], bool] | None = None,
        **base_kwargs: Any,
    ) -> None:
        self.alpha = check_real("alpha", alpha, 0.0, math.inf, high_open=True)
        self._clean: tuple[list[Tensor], list[Tensor]] = ([], [])
        self._clean_buffers: dict[Tensor, Tensor] = {}
        super().__init__(params, base_optimizer, rho, adaptive, eta=eta, schedule=schedule, **base_kwargs)

    def _on_ascent(self, groups: list[tuple[dict[str, Any], float, list[Tensor], list[Tensor]]]) -> None:
        params = [p for _, _, ps, _ in groups for p in ps]
        grads = [g for _, _, _, gs in groups for g in gs]
        if any(g.is_sparse for g in grads):
            raise RuntimeError("GSAM does not support sparse gradients; use SAM for models with sparse gradients")
        buffers = []
        for p, g in zip(params, grads):
            buf = self._clean_buffers.get(p)
            if buf is None or buf.shape != g.shape or buf.dtype != g.dtype:
                buf = self._clean_buffers[p] = torch.empty_like(g)
            buffers.append(buf)
        for bs, gs in bucket(buffers, grads):
            torch._foreach_copy_(bs, gs)
        self._clean = (params, buffers)

    def _adjust_gradient(self, ascended: bool, inv_scale: Tensor | None) -> None:
        params, clean = self._clean
        self._clean = ([], [])
        if not ascended or self.alpha == 0.0:
            return
        pairs = [(p.grad, c) for p, c in zip(params, clean) if p.grad is not None]
        if not pairs:
            return
        perturbed = [gp for gp, _ in pairs]
        clean = [c for _, c in pairs]
        if inv_scale is not None:
            scale_(clean, inv_scale)

        # 1. projection coefficient <grad f, grad f_p> / ||grad f_p||^2 (Algorithm 1 of Zhuang et al.)
        coef = dot(clean, perturbed) / (dot(perturbed, perturbed) + 1e-24)

        # 2. grad f_perp = grad f - coef * grad f_p, then d = grad f_p - alpha * grad f_perp
        #    = (1 + alpha * coef) * grad f_p - alpha * grad f, written into .grad
        for gps, cs in bucket(perturbed, clean):
            torch._foreach_mul_(gps, (1.0 + self.alpha * coef).to(gps[0].device, gps[0].dtype))
            torch._foreach_add_(gps, cs, alpha=-self.alpha)

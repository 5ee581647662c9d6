r"""Sharpness-Aware Minimization (Foret et al., ICLR 2021) and adaptive SAM (Kwon et al., ICML 2021).

Map from the papers to the code:

=====================  ==============================================================
paper                  code
=====================  ==============================================================
:math:`w`              the parameters of the groups whose ``rho`` is positive
:math:`\rho`           ``group["rho"]`` (a float, or a callable of the step count)
:math:`\epsilon(w)`    the perturbation applied by :meth:`SAM.first_step`
:math:`T_w`            ``|w| + eta`` elementwise when ``group["adaptive"]`` (ASAM)
=====================  ==============================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from smoothopt._foreach import bucket, global_norm, scale_, split_sparse
from smoothopt._validation import check_real
from smoothopt._wrapping import bind_base_optimizer

__all__ = ["SAM", "Rho"]

Rho = float | Callable[[int], float]
"""A perturbation radius: a constant, or a function of the number of SAM steps completed so far."""

_SAM_OPTIONS = ("rho", "adaptive", "eta")
_EPS = 1e-12


def _check_rho(rho: Any, name: str = "rho") -> Rho:
    if callable(rho):
        return rho
    return check_real(name, rho, 0.0, math.inf, high_open=True)


class SAM(Optimizer):
    r"""Sharpness-Aware Minimization (SAM, Foret et al. 2021) wrapped around any ``torch.optim`` optimizer.

    Each step climbs to the worst point of a ball of radius :math:`\rho` around the weights, takes the gradient
    there, returns to the weights exactly, and lets the base optimizer descend with that gradient:

    .. math::
        \epsilon(w) = \rho \, \frac{T_w^2 \, g}{\lVert T_w \, g \rVert_2}, \qquad
        w \leftarrow \mathrm{base\_step}\bigl(w, \nabla L(w + \epsilon(w))\bigr)

    with :math:`g = \nabla L(w)`, :math:`T_w = I` for SAM and :math:`T_w = \mathrm{diag}(|w| + \eta)` for
    adaptive SAM (ASAM, Kwon et al. 2021). The norm is joint over every parameter of every group with a positive
    ``rho``; a group may carry its own ``rho`` (0 leaves it unperturbed), ``adaptive`` and ``eta``.

    Two ways to drive it:

    * ``loss = sam.step(closure)``: the closure (which zeroes the gradients, computes the loss and calls
      ``backward``) runs at :math:`w` and at :math:`w + \epsilon`; the first loss is returned.
    * ``sam.first_step(zero_grad=True)`` after the first backward, a second forward/backward, then
      ``sam.step()`` (equivalently ``sam.second_step()``). Because the descent is an ordinary ``step()``, LR
      schedulers and optimizer step hooks see one step per SAM step.

    The SAM optimizer shares ``param_groups`` with the base optimizer, so an LR scheduler built on either
    reaches the base's ``lr``. :meth:`state_dict` holds the base optimizer's state (momentum, Adam moments)
    together with the SAM step count, and a resumed run continues bit for bit.

    The weights are restored by copying back the values saved before the ascent, for exactly the tensors that
    were perturbed: the restore is bit-exact, and a parameter that receives a gradient in only one of the two
    passes is never left perturbed.

    Args:
        params: Parameters or parameter groups to perturb. With a class as ``base_optimizer`` these are also the
            parameters it optimizes; with an instance they must be a subset of what the instance holds (held
            parameters that are not listed are stepped by the base but not perturbed).
        base_optimizer: An optimizer class, built here on the same parameter groups with ``**base_kwargs``, or
            an optimizer already built (for example by ``timm.optim.create_optimizer_v2``).
        rho: Radius of the neighbourhood, in ``[0, inf)``, or a callable ``rho(step) -> float`` where ``step``
            counts the SAM steps completed before this one (0 on the first step).
        adaptive: Use ASAM's scale-invariant neighbourhood :math:`T_w = |w| + \eta`.
        eta: ASAM's offset :math:`\eta \ge 0`, which keeps zero weights perturbable.
        schedule: Optional callable ``schedule(step) -> bool`` choosing the steps that perturb (see
            :mod:`smoothopt.sam.schedules`); on the other steps :meth:`first_step` returns ``False``, the
            second forward/backward is skipped by :meth:`step` and the base optimizer steps on the clean
            gradient.
        **base_kwargs: Keyword arguments for ``base_optimizer`` when it is a class (``lr``, ``momentum``, ...).

    Attributes:
        base_optimizer: The wrapped optimizer.
        last_grad_norm: 0-dim tensor, :math:`\lVert T_w g \rVert_2` at the last ascent (``None`` before).
        last_perturbation_norm: 0-dim tensor, :math:`\lVert \epsilon \rVert_2` of the last ascent (``None``
            before, 0 after a step without perturbation).
        last_sharpness: 0-dim tensor, :math:`L(w + \epsilon) - L(w)` of the last :meth:`step` with a closure
            (``None`` otherwise).
        sam_steps: Number of SAM steps completed; the argument passed to a callable ``rho``.

    Raises:
        TypeError: If ``base_optimizer`` is neither an optimizer class nor an optimizer instance, or if
            ``base_kwargs`` are given together with an instance.
        ValueError: If ``rho`` or ``eta`` is negative or NaN, or a parameter is not held by the base instance.

    Note:
        BatchNorm running statistics are updated by every forward pass in training mode; wrap the second
        forward in :func:`smoothopt.sam.freeze_norm_stats` so that they see only the clean pass.

    Note:
        Under ``torch.amp.GradScaler`` pass the optimizer to ``scaler.step(sam)`` and do not call
        ``scaler.unscale_`` before :meth:`first_step` (the perturbation does not depend on the gradient's scale).
        A step that the scaler skips for inf or NaN still restores the weights exactly.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
        >>> x, y = torch.randn(8, 4), torch.randn(8, 2)
        >>> def closure():
        ...     sam.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = sam.step(closure)
    """

    # GradScaler hands such optimizers ``grad_scale`` and ``found_inf`` instead of skipping ``step()``, so that a
    # skipped step can still restore the weights.
    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer] | Optimizer,
        rho: Rho = 0.05,
        adaptive: bool = False,
        *,
        eta: float = 0.01,
        schedule: Callable[[int], bool] | None = None,
        **base_kwargs: Any,
    ) -> None:
        rho = _check_rho(rho)
        eta = check_real("eta", eta, 0.0, math.inf, high_open=True)
        if schedule is not None and not callable(schedule):
            raise TypeError(f"schedule must be a callable step -> bool or None, got {type(schedule).__name__}")
        defaults = {"rho": rho, "adaptive": bool(adaptive), "eta": eta}
        self.schedule = schedule
        self.sam_steps = 0
        self.last_grad_norm: Tensor | None = None
        self.last_perturbation_norm: Tensor | None = None
        self.last_sharpness: Tensor | None = None
        self._first_done = False
        self._ascended = False
        self._perturbed: list[tuple[list[Tensor], list[Tensor]]] = []
        self._backup: dict[Tensor, Tensor] = {}
        self._backup_lists: dict[tuple[int, ...], list[Tensor]] = {}

        user_params: list[Any] = list(params)
        if isinstance(base_optimizer, Optimizer):
            for i, g in enumerate(user_params):
                if isinstance(g, dict) and any(k in g for k in _SAM_OPTIONS):
                    raise ValueError(
                        f"params[{i}] sets {sorted(k for k in _SAM_OPTIONS if k in g)}, which cannot be mapped onto "
                        "the groups of an optimizer instance; set them on sam.param_groups after construction"
                    )
        self.base_optimizer: Optimizer  # set by bind_base_optimizer, which shares its param_groups
        self._only: set[Tensor] | None = bind_base_optimizer(self, user_params, base_optimizer, defaults, base_kwargs)
        for g in self.param_groups:
            for k, v in defaults.items():
                g.setdefault(k, v)
        for i, g in enumerate(self.param_groups):
            g["rho"] = _check_rho(g["rho"], f"param_groups[{i}]['rho']")

    # ------------------------------------------------------------------ bookkeeping

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group to SAM and to the base optimizer (they share ``param_groups``).

        Args:
            param_group: Parameters and per-group options, SAM's (``rho``, ``adaptive``, ``eta``) and the base's.
        """
        if not hasattr(self, "base_optimizer"):
            super().add_param_group(param_group)
            return
        for k in _SAM_OPTIONS:
            param_group.setdefault(k, self.defaults[k])
        param_group["rho"] = _check_rho(param_group["rho"], "param_group['rho']")
        self.base_optimizer.add_param_group(param_group)
        self.param_groups = self.base_optimizer.param_groups
        self._backup_lists.clear()
        if self._only is not None:
            params = param_group["params"]
            self._only.update([params] if isinstance(params, Tensor) else params)

    def state_dict(self) -> dict[str, Any]:
        """Return the base optimizer's state dict with SAM's own state under the key ``"sam"``."""
        sd = self.base_optimizer.state_dict()
        # NOTE: a callable rho is code, not state: it is saved as None and kept from the live groups on load, so
        # that lambdas do not break torch.save.
        for saved in sd["param_groups"]:
            if callable(saved.get("rho")):
                saved["rho"] = None
        index = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        per_param = {index[p]: dict(s) for p, s in self.state.items() if p in index and s}
        sd["sam"] = {"sam_steps": self.sam_steps, "state": per_param, **self._extra_state()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a dict produced by :meth:`state_dict` (or a plain state dict of the base optimizer).

        Args:
            state_dict: The dict to load; it is not modified.
        """
        state_dict = dict(state_dict)
        sam = state_dict.pop("sam", None)
        live_rho = [g["rho"] for g in self.param_groups]
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        for g, rho in zip(self.param_groups, live_rho):
            if g.get("rho") is None:
                g["rho"] = rho
            for k in _SAM_OPTIONS[1:]:
                g.setdefault(k, self.defaults[k])
        self.state.clear()
        if sam is not None:
            self.sam_steps = int(sam["sam_steps"])
            params = [p for g in self.param_groups for p in g["params"]]
            for i, s in sam.get("state", {}).items():
                p = params[int(i)]
                self.state[p] = {k: v.to(device=p.device) if isinstance(v, Tensor) else v for k, v in s.items()}
            self._load_extra_state(sam)
        self._first_done = False
        self._perturbed = []
        self._backup_lists.clear()

    def _extra_state(self) -> dict[str, Any]:
        """State of subclasses or schedules beyond per-parameter tensors (overridden by variants)."""
        if self.schedule is not None and hasattr(self.schedule, "state_dict"):
            return {"schedule": self.schedule.state_dict()}
        return {}

    def _load_extra_state(self, sam: dict[str, Any]) -> None:
        if "schedule" in sam and self.schedule is not None and hasattr(self.schedule, "load_state_dict"):
            self.schedule.load_state_dict(sam["schedule"])

    @property
    def is_perturbed(self) -> bool:
        r"""Whether the weights are currently at :math:`w + \epsilon` (between the ascent and the descent)."""
        return bool(self._perturbed)

    def will_perturb(self) -> bool:
        """Whether the coming :meth:`first_step` perturbs (per ``schedule``; a zero radius everywhere also skips)."""
        if self.schedule is not None and not self.schedule(self.sam_steps):
            return False
        return any(self.current_rho(g) > 0 for g in self.param_groups)

    def current_rho(self, group: dict[str, Any]) -> float:
        """Radius used by ``group`` at the current step (a callable ``rho`` evaluated at :attr:`sam_steps`).

        Raises:
            ValueError: If a callable ``rho`` returns a negative or NaN value.
        """
        rho = group["rho"]
        if callable(rho):
            return check_real(f"rho({self.sam_steps})", rho(self.sam_steps), 0.0, math.inf, high_open=True)
        return rho

    def _perturbable(self) -> list[tuple[dict[str, Any], float, list[Tensor], list[Tensor]]]:
        """(group, rho, params, grads) for each group with a positive radius, over parameters with a gradient."""
        out = []
        for group in self.param_groups:
            rho = self.current_rho(group)
            if rho == 0.0:
                continue
            only = self._only
            params = [p for p in group["params"] if p.grad is not None and (only is None or p in only)]
            if params:
                out.append((group, rho, params, [p.grad for p in params]))
        return out

    # ------------------------------------------------------------------ the two half-steps

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> bool:
        r"""Ascend to :math:`w + \epsilon(w)` using the gradients currently in ``.grad``.

        Args:
            zero_grad: Zero the gradients afterwards, ready for the second backward pass.

        Returns:
            Whether a second forward/backward at the perturbed point is needed before :meth:`step` (``False``
            only on steps that a ``schedule`` or a variant leaves unperturbed).

        Raises:
            RuntimeError: If called twice without a :meth:`step` in between.
        """
        if self._first_done:
            raise RuntimeError("first_step() was called twice; call step() (or second_step()) after the second pass")
        perturb = self.schedule is None or bool(self.schedule(self.sam_steps))
        if perturb:
            perturb = self._ascend()
        else:
            self.last_perturbation_norm = torch.zeros(())
        self._ascended = perturb
        self._first_done = True
        if zero_grad:
            self.zero_grad()
        return perturb

    def _ascend(self) -> bool:
        groups = self._perturbable()
        if not groups:
            self.last_perturbation_norm = torch.zeros(())
            return False
        self._on_ascent(groups)

        # 1. ||T_w g|| jointly over all groups (T_w = I for SAM, |w| + eta for ASAM), Eq. (2) of Foret et al. and
        #    Eq. (12) of Kwon et al.
        group_norms = []
        for group, _, params, grads in groups:
            if group["adaptive"]:
                if any(g.is_sparse for g in grads):
                    raise RuntimeError("adaptive=True (ASAM) does not support sparse gradients; use adaptive=False")
                scaled: list[Tensor] = []
                for ps, gs in bucket(params, grads):
                    t_w = torch._foreach_abs(ps)
                    torch._foreach_add_(t_w, group["eta"])
                    torch._foreach_mul_(t_w, gs)
                    scaled.extend(t_w)
                group_norms.append(global_norm(scaled))
            else:
                group_norms.append(global_norm(grads))
        device = group_norms[0].device
        if len(group_norms) == 1:
            grad_norm = group_norms[0]
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([n.to(device) for n in group_norms]))
        # NOTE: on the CPU the scale is read as a Python number (no device sync to pay), which lets one fused
        # multiply-add apply the perturbation; elsewhere, and for 16-bit tensors (where a tiny alpha would be
        # rounded to a 16-bit subnormal), it stays a tensor.
        host_scalar = device.type == "cpu"

        # 2. save w, then w <- w + epsilon with epsilon = rho * T_w^2 g / ||T_w g||, Eq. (2) / Eq. (12); the
        #    restore copies the saved values back, bit for bit
        self._perturbed = []
        pert_sq = []
        for (group, rho, params, grads), g_norm in zip(groups, group_norms):
            scale = rho / (grad_norm + _EPS)
            dense_p, dense_g, sparse = split_sparse(params, grads)
            for ps, gs in bucket(dense_p, dense_g):
                backup = self._backups_for(ps)
                torch._foreach_copy_(backup, ps)
                if group["adaptive"]:
                    eps = torch._foreach_abs(ps)
                    torch._foreach_add_(eps, group["eta"])
                    torch._foreach_mul_(eps, eps)
                    torch._foreach_mul_(eps, gs)
                    torch._foreach_mul_(eps, scale.to(gs[0].device))
                    pert_sq.append(global_norm(eps, device) ** 2)
                    torch._foreach_add_(ps, eps)
                elif host_scalar and gs[0].dtype in (torch.float32, torch.float64):
                    torch._foreach_add_(ps, gs, alpha=float(scale))
                else:
                    torch._foreach_add_(ps, torch._foreach_mul(gs, scale.to(gs[0].device)))
                self._perturbed.append((ps, backup))
            for i in sparse:
                p = params[i]
                saved = self._backup_for(p)
                saved.copy_(p)
                p.add_(grads[i].coalesce() * scale.to(p.device))
                self._perturbed.append(([p], [saved]))
            if not group["adaptive"]:
                pert_sq.append((scale * g_norm.to(device)) ** 2)
        self.last_grad_norm = grad_norm
        self.last_perturbation_norm = pert_sq[0].sqrt() if len(pert_sq) == 1 else torch.stack(pert_sq).sum().sqrt()
        return True
    def _backups_for(self, params: list[Tensor]) -> list[Tensor]:
        # NOTE: cached per list of tensors, so that a step does not walk the parameters in Python; the cache is
        # rebuilt when the list changes (another set of gradients, add_param_group, load_state_dict).
        key = tuple(map(id, params))
        cached = self._backup_lists.get(key)
        if cached is None:
            if len(self._backup_lists) >= 8:
                self._backup_lists.clear()
            cached = self._backup_lists[key] = [self._backup_for(p) for p in params]
        return cached

    def _backup_for(self, p: Tensor) -> Tensor:
        buf = self._backup.get(p)
        if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
            buf = torch.empty_like(p, memory_format=torch.preserve_format)
            self._backup[p] = buf
        return buf

    @torch.no_grad()
    def _restore(self) -> None:
        """Copy back the weights saved by the last ascent, for exactly the tensors that were perturbed."""
        for ps, backup in self._perturbed:
            torch._foreach_copy_(ps, backup)
        self._perturbed = []

    @torch.no_grad()
    def restore(self) -> None:
        """Abandon the current SAM step: the weights return to :math:`w` exactly, and nothing else changes.

        For a second pass that fails (an exception, a loss to skip): the base optimizer and its state,
        :attr:`sam_steps` and the gradients are left alone, and the next step starts afresh with
        :meth:`first_step`. Does nothing when the weights are not perturbed. :meth:`step` with a
        closure calls it itself when the second closure raises.
        """
        self._restore()
        self._first_done = False

    def second_step(self, zero_grad: bool = False) -> None:
        """Return to :math:`w` and take the base optimizer's step; the same as :meth:`step` without a closure.

        Args:
            zero_grad: Zero the gradients afterwards.

        Raises:
            RuntimeError: If :meth:`first_step` was not called before.
        """
        self.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor | float] | None = None) -> Tensor | float | None:  # type: ignore[override]
        """Take one SAM step.

        Args:
            closure: Optional callable that zeroes the gradients, computes the loss, calls ``backward`` and
                returns the loss. With it, the whole step (both passes) runs here. Without it, this is the
                descent after :meth:`first_step` and a second forward/backward.

        Returns:
            The loss at :math:`w` (the closure's first result), or ``None`` without a closure.

        Raises:
            RuntimeError: Without a closure, if :meth:`first_step` was not called since the last step.
        """
        loss = None
        if closure is not None:
            if self._first_done:
                raise RuntimeError("step(closure) was called after first_step(); call step() without a closure")
            with torch.enable_grad():
                loss = closure()
            if self.first_step(zero_grad=False):
                self.zero_grad()
                try:
                    with torch.enable_grad():
                        loss_adv = closure()
                except BaseException:
                    self.restore()
                    raise
                if isinstance(loss, Tensor) and isinstance(loss_adv, Tensor):
                    self.last_sharpness = (loss_adv.detach() - loss.detach()).float()
                elif loss is not None and loss_adv is not None:
                    self.last_sharpness = torch.tensor(float(loss_adv) - float(loss))
            else:
                self.last_sharpness = None
        elif not self._first_done:
            raise RuntimeError(
                "step() without a closure is the descent of a SAM step: call first_step() after the first "
                "backward pass and step() after the second, or pass a closure to step()"
            )
        self._descend()
        return loss

    def _descend(self) -> None:
        # 4. back to w exactly, whatever the gradients of the second pass
        self._restore()
        self._first_done = False
        self.sam_steps += 1

        # 5. a step skipped by GradScaler (inf or NaN in the gradients) leaves w as it was
        found_inf = getattr(self, "found_inf", None)
        grad_scale = getattr(self, "grad_scale", None)
        if found_inf is not None and bool(found_inf.item()):
            return
        inv_scale = None
        if grad_scale is not None:
            inv_scale = grad_scale.double().reciprocal().float()
            grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
            scale_(grads, inv_scale)

        # 6. the base optimizer's step with the gradient taken at w + epsilon, Eq. (3) of Foret et al.
        self._adjust_gradient(self._ascended, inv_scale)
        self.base_optimizer.step()

    def _on_ascent(self, groups: list[tuple[dict[str, Any], float, list[Tensor], list[Tensor]]]) -> None:
        """Hook for variants that keep the clean gradient (GSAM, LookSAM); SAM keeps nothing."""

    def _adjust_gradient(self, ascended: bool, inv_scale: Tensor | None) -> None:
        """Hook for variants that change the descent gradient; SAM uses the perturbed gradient unchanged.

        Args:
            ascended: Whether this step perturbed the weights (``.grad`` is then the perturbed gradient).
            inv_scale: ``1 / grad_scale`` when GradScaler's scale was removed from ``.grad`` in this step, for
                gradients saved during the ascent (which still carry the scale).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_optimizer={self.base_optimizer!r})"

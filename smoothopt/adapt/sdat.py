"""Smooth domain adversarial training (SDAT, Rangwani et al., ICML 2022): SAM on the task loss only.

Map from the paper to the code:
    ``E(theta)`` task loss (source cross-entropy, plus MCC when used) -> ``task_loss``;
    ``D(theta, Phi)`` adversarial loss -> ``adversarial_loss``, weighted by ``trade_off``;
    ``theta`` classifier parameters (backbone, bottleneck, head) -> the parameters of the SAM ``optimizer``;
    ``Phi`` discriminator parameters -> the parameters of ``discriminator_optimizer``;
    ``rho`` radius of the perturbation -> ``optimizer``'s ``rho``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from smoothopt._validation import check_choice, check_real

__all__ = ["SDATLosses", "SDATStep", "sdat_step"]

logger = logging.getLogger(__name__)

# closure(need_adversarial) -> (task_loss, adversarial_loss or None)
SDATClosure = Callable[[bool], tuple[Tensor, Tensor | None]]


class SDATLosses(NamedTuple):
    """Detached losses of one SDAT step."""

    task_loss: Tensor
    """Task loss at the clean weights (first pass)."""
    adversarial_loss: Tensor
    """Adversarial loss where its gradient was taken (perturbed or clean weights)."""


def _params(optimizer: Any) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def sdat_step(
    closure: SDATClosure,
    optimizer: Any,
    discriminator_optimizer: torch.optim.Optimizer,
    *,
    trade_off: float = 1.0,
    adversarial_at: Literal["perturbed", "clean"] = "perturbed",
    scaler: torch.amp.GradScaler | None = None,
) -> SDATLosses:
    r"""One SDAT iteration: sharpness-aware step on the task loss, plain step on the adversarial loss.

    The update of the paper (Sec. 4, Eq. 6):

    .. math::
        \hat\epsilon = \rho \frac{\nabla_\theta E(\theta)}{\lVert \nabla_\theta E(\theta) \rVert},\qquad
        \theta \leftarrow \theta - \eta\Big(\nabla_\theta E\big|_{\theta + \hat\epsilon}
        + \mu\, \nabla_\theta D\big|_{\theta'}\Big),\qquad
        \Phi \leftarrow \Phi - \eta\, \mu\, \nabla_\Phi D\big|_{\theta'}

    with :math:`\theta' = \theta + \hat\epsilon` (``adversarial_at="perturbed"``, what the public
    code does) or :math:`\theta' = \theta` (``"clean"``). The gradient reversal layer inside the
    adversarial loss turns :math:`\mu \nabla_\theta D` into the feature extractor's confusion signal.

    ``closure(need_adversarial)`` runs the forward pass on the current source and target batch and
    returns ``(task_loss, adversarial_loss)``; it may return ``None`` for the adversarial loss when
    ``need_adversarial`` is False (saving the discriminator's forward and its BatchNorm update).
    It must not call ``backward``. It is called twice; the adversarial part once.

    Args:
        closure: The forward pass, see above.
        optimizer: :class:`smoothopt.SAM` over the classifier's parameters only (backbone,
            bottleneck, head) with any base optimizer.
        discriminator_optimizer: The discriminator's own optimizer.
        trade_off: Weight :math:`\mu` of the adversarial loss.
        adversarial_at: Weights at which the adversarial gradient is taken.
        scaler: A ``torch.amp.GradScaler`` for mixed precision: the losses are scaled before each
            backward, both optimizers are stepped through it (a step skipped for inf or NaN still
            restores the classifier's weights) and ``scaler.update()`` is called once at the end.

    Returns:
        The detached task and adversarial losses.

    Raises:
        ValueError: If the two optimizers share a parameter, or ``trade_off`` is negative.
        RuntimeError: If the closure returns no adversarial loss when asked for one.

    Note:
        The gradient reversal coefficient is not advanced here; attach the layer to the
        discriminator optimizer (``grl.attach(discriminator_optimizer)``), which steps once.
        Classifier BatchNorm layers see two forward passes per step, as in every SAM step.
        If the closure raises during the second pass, the classifier returns to its unperturbed
        weights (:meth:`SAM.restore`) before the exception propagates; no optimizer has stepped.

    Example:
        >>> def closure(need_adversarial):  # doctest: +SKIP
        ...     logits, features = model(torch.cat([x_s, x_t]))
        ...     task = F.cross_entropy(logits[: len(x_s)], y_s)
        ...     adv = dann(*features.split([len(x_s), len(x_t)])) if need_adversarial else None
        ...     return task, adv
        >>> losses = sdat_step(closure, sam, disc_optimizer, trade_off=1.0)  # doctest: +SKIP
    """
    trade_off = check_real("trade_off", trade_off, 0.0)
    check_choice("adversarial_at", adversarial_at, ("perturbed", "clean"))
    theta = _params(optimizer)
    phi = _params(discriminator_optimizer)
    shared = {id(p) for p in theta} & {id(p) for p in phi}
    if shared:
        raise ValueError(f"optimizer and discriminator_optimizer share {len(shared)} parameter(s); the SAM "
                         "optimizer must hold the classifier only and the discriminator its own optimizer")
    optimizer.zero_grad(set_to_none=True)
    discriminator_optimizer.zero_grad(set_to_none=True)

    def scaled(loss: Tensor) -> Tensor:
        return loss if scaler is None else scaler.scale(loss)

    # Step 1: task loss E(theta) at the clean weights, and its gradient (the ascent direction).
    with torch.enable_grad():
        task, adv = closure(adversarial_at == "clean")
        if adversarial_at == "clean":
            adv = _require(adv)
            scaled(task).backward(retain_graph=True)
            # The adversarial gradient at the clean weights, kept aside for step 3.
            trainable = [p for p in theta + phi if p.requires_grad]
            stash = torch.autograd.grad(scaled(trade_off * adv), trainable, allow_unused=True)
        else:
            scaled(task).backward()
    task_clean = task.detach()

    # Step 2: theta <- theta + rho g / ||g|| (only the classifier: the SAM optimizer holds nothing else).
    optimizer.first_step(zero_grad=True)
    discriminator_optimizer.zero_grad(set_to_none=True)

    # Step 3: gradient at the perturbed weights of E (and of mu * D in the public variant).
    try:
        with torch.enable_grad():
            task2, adv2 = closure(adversarial_at == "perturbed")
            if adversarial_at == "perturbed":
                adv = _require(adv2)
                scaled(task2 + trade_off * adv).backward()
            else:
                scaled(task2).backward()
                for p, g in zip(trainable, stash):
                    if g is not None:
                        p.grad = g if p.grad is None else p.grad.add_(g)
    except BaseException:
        optimizer.restore()
        raise

    # Step 4: step the discriminator, restore theta and step its base optimizer.
    if scaler is None:
        discriminator_optimizer.step()
        optimizer.second_step(zero_grad=True)
    else:
        scaler.step(discriminator_optimizer)
        scaler.step(optimizer)  # SAM restores w, unscales and steps its base optimizer (or skips)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    discriminator_optimizer.zero_grad(set_to_none=True)
    return SDATLosses(task_clean, _require(adv).detach())


def _require(adv: Tensor | None) -> Tensor:
    if adv is None:
        raise RuntimeError("closure(True) returned no adversarial loss; return (task_loss, adversarial_loss)")
    return adv


class SDATStep:
    """A reusable :func:`sdat_step` bound to its optimizers and options.

    Args:
        optimizer: SAM over the classifier's parameters.
        discriminator_optimizer: The discriminator's optimizer.
        trade_off: Weight of the adversarial loss.
        adversarial_at: ``"perturbed"`` (public code) or ``"clean"``.
        scaler: Optional ``torch.amp.GradScaler``.

    Example:
        >>> step = SDATStep(sam, disc_optimizer)  # doctest: +SKIP
        >>> for x_s, y_s, x_t in batches:  # doctest: +SKIP
        ...     losses = step(closure)
    """

    def __init__(
        self,
        optimizer: Any,
        discriminator_optimizer: torch.optim.Optimizer,
        *,
        trade_off: float = 1.0,
        adversarial_at: Literal["perturbed", "clean"] = "perturbed",
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.scaler = scaler
        self.discriminator_optimizer = discriminator_optimizer
        self.trade_off = check_real("trade_off", trade_off, 0.0)
        self.adversarial_at = check_choice("adversarial_at", adversarial_at, ("perturbed", "clean"))

    def __call__(self, closure: SDATClosure) -> SDATLosses:
        """Run one SDAT iteration with ``closure`` (see :func:`sdat_step`)."""
        return sdat_step(closure, self.optimizer, self.discriminator_optimizer,
                         trade_off=self.trade_off, adversarial_at=self.adversarial_at, scaler=self.scaler)

"""Integrations of the SAM family with timm's optimizer factory.

PyTorch Lightning needs no adapter: in automatic optimization it calls ``optimizer.step(closure)``, which runs
both passes (see ``docs/sam.md``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer

from smoothopt._validation import optional_import
from smoothopt.sam.gsam import GSAM
from smoothopt.sam.looksam import LookSAM
from smoothopt.sam.sam import SAM

__all__ = ["TIMM_NAMES", "register_timm"]


def _factory(name: str, variant: type[SAM], base: type[Optimizer], adaptive: bool) -> type[SAM]:
    """A subclass whose constructor takes ``(params, **kwargs)`` the way timm's factory calls optimizers."""

    def __init__(self: SAM, params: Any, rho: float = 0.05, **kwargs: Any) -> None:
        kwargs.setdefault("adaptive", adaptive)
        variant.__init__(self, params, base, rho, **kwargs)

    doc = f"{variant.__name__} over ``{base.__module__}.{base.__name__}`` as built by timm's ``{name!r}``."
    return type(f"Timm{variant.__name__}_{name}", (variant,), {"__init__": __init__, "__doc__": doc})


# name: (variant, base optimizer, adaptive, has_momentum, has_betas); single words, because timm splits
# names on "_" and keeps the last part ("lookahead_sam" is Lookahead around "sam").
TIMM_NAMES: dict[str, tuple[type[SAM], type[Optimizer], bool, bool, bool]] = {
    "sam": (SAM, torch.optim.SGD, False, True, False),
    "samsgd": (SAM, torch.optim.SGD, False, True, False),
    "samadam": (SAM, torch.optim.Adam, False, False, True),
    "samadamw": (SAM, torch.optim.AdamW, False, False, True),
    "asam": (SAM, torch.optim.SGD, True, True, False),
    "asamadamw": (SAM, torch.optim.AdamW, True, False, True),
    "gsam": (GSAM, torch.optim.SGD, False, True, False),
    "looksam": (LookSAM, torch.optim.SGD, False, True, False),
}


def register_timm(registry: Any = None) -> list[str]:
    """Register the SAM family in timm's optimizer registry.

    Afterwards ``timm.optim.create_optimizer_v2(model, "sam", lr=0.1, rho=0.05)`` builds a :class:`SAM` over SGD
    with timm's parameter groups (weight decay off for biases and norms), and likewise for the other names in
    :data:`TIMM_NAMES` (``samadamw``, ``asam``, ``gsam``, ``looksam``, ...). Extra keyword arguments of
    ``create_optimizer_v2`` (``rho``, ``adaptive``, ``eta``, ``alpha``, ``k``) reach the SAM variant. Calling this
    again re-registers the same entries.

    Args:
        registry: A ``timm.optim._optim_factory.OptimizerRegistry``; timm's default registry if ``None``.

    Returns:
        The registered names.

    Raises:
        ImportError: If timm is not installed (``pip install smoothopt[timm]``).
    """
    optim_factory = optional_import("timm.optim._optim_factory", "timm")
    registry = optim_factory.default_registry if registry is None else registry
    for name, (variant, base, adaptive, has_momentum, has_betas) in TIMM_NAMES.items():
        label = f"{'ASAM' if adaptive else variant.__name__} (smoothopt) over {base.__name__}"
        registry.register(optim_factory.OptimInfo(
            name=name,
            opt_class=_factory(name, variant, base, adaptive),
            description=label,
            has_eps=has_betas,
            has_momentum=has_momentum,
            has_betas=has_betas,
        ))
    return list(TIMM_NAMES)

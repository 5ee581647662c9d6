"""Binding a wrapper optimizer (SAM, perturbed descent) to the base optimizer that takes its steps.

A wrapper is a :class:`torch.optim.Optimizer` whose ``param_groups`` *are* the base optimizer's, so that
an LR scheduler changing ``lr`` on the wrapper reaches the base. The base is either a class, built here
on the wrapper's groups, or an instance already built elsewhere (timm's factory, say), which must hold
every parameter given to the wrapper.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor
from torch.optim import Optimizer


def bind_base_optimizer(
    wrapper: Optimizer,
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    base_optimizer: type[Optimizer] | Optimizer,
    defaults: dict[str, Any],
    base_kwargs: dict[str, Any],
) -> set[Tensor] | None:
    """Initialise ``wrapper`` over ``params`` and share its parameter groups with the base optimizer.

    Sets ``wrapper.base_optimizer`` and makes ``wrapper.param_groups`` the base's list.

    Args:
        wrapper: The wrapper being constructed (its ``Optimizer.__init__`` has not run yet).
        params: The parameters (or groups) the wrapper acts on.
        base_optimizer: An optimizer class, built on the wrapper's groups with ``base_kwargs``, or an instance.
        defaults: The wrapper's own per-group defaults.
        base_kwargs: Keyword arguments for a base optimizer class; must be empty with an instance.

    Returns:
        ``None`` when the wrapper acts on every parameter the base holds, otherwise the set of parameters it
        acts on (an instance may hold more than the wrapper was given).

    Raises:
        TypeError: If ``base_optimizer`` is neither an ``Optimizer`` subclass nor an instance, or if
            ``base_kwargs`` are given together with an instance.
        ValueError: If a parameter given to the wrapper is not held by the base instance.
    """
    only: set[Tensor] | None = None
    if isinstance(base_optimizer, Optimizer):
        if base_kwargs:
            raise TypeError(
                f"base_kwargs {sorted(base_kwargs)} cannot be applied to an optimizer instance; pass the class "
                "instead, or configure the instance before wrapping it"
            )
        Optimizer.__init__(wrapper, params, defaults)
        held = {p for g in base_optimizer.param_groups for p in g["params"]}
        mine = [p for g in wrapper.param_groups for p in g["params"]]
        for i, p in enumerate(mine):
            if p not in held:
                raise ValueError(
                    f"params[{i}] (shape {tuple(p.shape)}) is not held by base_optimizer "
                    f"{type(base_optimizer).__name__}; build the base optimizer over it or leave it out of params"
                )
        only = None if len(set(mine)) == len(held) else set(mine)
        wrapper.base_optimizer = base_optimizer  # type: ignore[attr-defined]
    elif isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer):
        Optimizer.__init__(wrapper, params, defaults)
        wrapper.base_optimizer = base_optimizer(wrapper.param_groups, **base_kwargs)  # type: ignore[attr-defined]
    else:
        raise TypeError(
            f"base_optimizer must be a torch.optim.Optimizer subclass or instance, got {type(base_optimizer).__name__}"
        )
    wrapper.param_groups = wrapper.base_optimizer.param_groups  # type: ignore[attr-defined]
    return only

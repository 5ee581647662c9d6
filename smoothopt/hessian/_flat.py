"""Flat-vector helpers: parameter selection, flatten/unflatten and random probes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["flatten", "rademacher", "select_params", "unflatten"]


def select_params(model: nn.Module, params: Iterable[nn.Parameter] | None = None) -> list[nn.Parameter]:
    """Return the parameters the Hessian is taken over, checked for a common dtype and device.

    Args:
        model: The network.
        params: A subset of ``model``'s parameters, or ``None`` for every parameter with
            ``requires_grad=True``.

    Returns:
        The selected parameters, in ``model.parameters()`` order when ``params`` is ``None``.

    Raises:
        ValueError: If no parameter is selected.
        TypeError: If the selected parameters do not share one floating dtype and device.
    """
    chosen = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    if not chosen:
        raise ValueError("params must select at least one parameter, got none (all frozen?)")
    dtypes = {p.dtype for p in chosen}
    devices = {p.device for p in chosen}
    if len(dtypes) != 1 or not chosen[0].is_floating_point():
        raise TypeError(f"the selected parameters must share one floating dtype, got {sorted(map(str, dtypes))}")
    if len(devices) != 1:
        raise TypeError(f"the selected parameters must lie on one device, got {sorted(map(str, devices))}")
    return chosen


def flatten(tensors: Sequence[Tensor | None], like: Sequence[Tensor]) -> Tensor:
    """Concatenate ``tensors`` into one vector, with zeros where an entry is ``None``.

    Args:
        tensors: One tensor (or ``None``) per entry of ``like``; a leading batch dimension is kept.
        like: Reference tensors giving the shapes.

    Returns:
        Tensor of shape ``(*batch, sum(t.numel() for t in like))``.
    """
    parts = []
    batch: tuple[int, ...] | None = None
    for t, ref in zip(tensors, like):
        if t is not None:
            batch = tuple(t.shape[: t.dim() - ref.dim()])
            break
    batch = batch or ()
    for t, ref in zip(tensors, like):
        if t is None:
            parts.append(ref.new_zeros(*batch, ref.numel()))
        else:
            parts.append(t.reshape(*batch, ref.numel()))
    return torch.cat(parts, dim=-1)


def unflatten(vec: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat vector (with optional leading batch dimensions) into views shaped like ``like``."""
    out, offset = [], 0
    batch = vec.shape[:-1]
    for ref in like:
        n = ref.numel()
        out.append(vec[..., offset : offset + n].reshape(*batch, *ref.shape))
        offset += n
    return out


def rademacher(
    shape: Sequence[int],
    *,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device | str,
) -> Tensor:
    """Draw independent Rademacher entries (+1 or -1 with probability 1/2 each).

    The draw happens on ``generator``'s device (CPU by default) and is then moved, so a seed gives
    the same probes on every device.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    bits = torch.randint(0, 2, tuple(shape), generator=generator, device=gen_device, dtype=torch.int8)
    return bits.to(device=device, dtype=dtype).mul_(2).sub_(1)


def gaussian(
    shape: Sequence[int],
    *,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device | str,
) -> Tensor:
    """Draw independent standard normal entries on ``generator``'s device and move them."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=torch.float64).to(
        device=device, dtype=dtype
    )


def make_generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
    """Return ``generator``, or a CPU generator seeded with ``seed``, or ``None`` for the global one."""
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if seed is not None:
        return torch.Generator().manual_seed(int(seed))
    return generator

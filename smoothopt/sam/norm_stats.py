"""Keep the running statistics of normalisation layers out of SAM's perturbed forward pass."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

__all__ = ["freeze_norm_stats"]


def _is_norm_with_stats(module: nn.Module) -> bool:
    if isinstance(module, _NormBase):
        return True
    return any(name.startswith("running_") or name == "num_batches_tracked"
               for name, _ in module.named_buffers(recurse=False))


@contextmanager
def freeze_norm_stats(model: nn.Module) -> Iterator[None]:
    r"""Leave the running statistics of every normalisation layer of ``model`` unchanged inside the block.

    SAM's second forward pass runs at the perturbed weights :math:`w + \epsilon`; in training mode it would
    update BatchNorm's ``running_mean``, ``running_var`` and ``num_batches_tracked`` a second time, with
    statistics of a model that is never deployed. Inside this block, modules in training mode still normalise
    with the batch statistics (the perturbed loss is the training loss), but their buffers are not updated.

    Every ``torch.nn`` normalisation with running statistics (``BatchNorm*``, ``SyncBatchNorm``,
    ``InstanceNorm*`` with ``track_running_stats=True``, and subclasses such as timm's ``BatchNormAct2d``)
    stops tracking for the duration of the block. Any other module holding buffers named ``running_*`` or
    ``num_batches_tracked`` gets those buffers copied back, bit for bit, on exit.

    Args:
        model: The module (or any parent module) whose normalisation layers should be frozen.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        >>> x = torch.randn(8, 3)
        >>> with freeze_norm_stats(model):
        ...     _ = model(x)
        >>> int(model[1].num_batches_tracked)
        0
    """
    toggled: list[_NormBase] = []
    saved: list[tuple[Tensor, Tensor]] = []
    for module in model.modules():
        if not _is_norm_with_stats(module):
            continue
        if isinstance(module, _NormBase):
            if module.training and module.track_running_stats:
                module.track_running_stats = False
                toggled.append(module)
        else:
            for name, buf in module.named_buffers(recurse=False):
                if name.startswith("running_") or name == "num_batches_tracked":
                    saved.append((buf, buf.detach().clone()))
    try:
        yield
    finally:
        for module in toggled:
            module.track_running_stats = True
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)

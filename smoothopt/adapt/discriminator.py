"""Domain discriminator: an MLP that outputs one logit per sample (source = 1, target = 0)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothopt._validation import check_int, check_real

__all__ = ["DomainDiscriminator", "domain_bce"]


class DomainDiscriminator(nn.Sequential):
    """Domain discriminator MLP ``in -> hidden -> ... -> 1`` returning logits (no sigmoid).

    Each hidden layer is ``Linear -> BatchNorm1d -> ReLU`` (or ``Linear -> ReLU -> Dropout`` with
    ``batch_norm=False``). The SDAT and CDAN recipes use two hidden layers of width 1024 with batch
    normalisation. Train it with :func:`domain_bce`, which is safe under autocast.

    Args:
        in_features: Width of the input (features, or the CDAN map's output).
        hidden: Widths of the hidden layers.
        batch_norm: Use ``BatchNorm1d`` after each hidden ``Linear``.
        dropout: Dropout probability after each hidden layer when ``batch_norm=False``.

    Shape:
        - Input: ``(N, in_features)``.
        - Output: ``(N,)`` logits.

    Example:
        >>> d = DomainDiscriminator(256)
        >>> d(torch.randn(8, 256)).shape
        torch.Size([8])
    """

    def __init__(
        self, in_features: int, hidden: Sequence[int] = (1024, 1024), *, batch_norm: bool = True, dropout: float = 0.5
    ) -> None:
        in_features = check_int("in_features", in_features, 1)
        dropout = check_real("dropout", dropout, 0.0, 1.0, high_open=True)
        layers: list[nn.Module] = []
        width = in_features
        for i, h in enumerate(hidden):
            h = check_int(f"hidden[{i}]", h, 1)
            if batch_norm:
                layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU()]
            else:
                layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        super().__init__(*layers)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return super().forward(x).squeeze(-1)


def domain_bce(logits: Tensor, is_source: bool | Tensor, weight: Tensor | None = None) -> Tensor:
    """Binary cross-entropy with logits for domain labels, computed in float32.

    Args:
        logits: Discriminator logits.
        is_source: ``True`` for a source batch (label 1), ``False`` for target (label 0), or a
            per-sample label tensor of the same shape as ``logits``.
        weight: Optional per-sample weights (e.g. CDAN entropy conditioning); the loss is their
            weighted mean ``sum(w * l) / N``.

    Returns:
        Scalar loss.

    Shape:
        - logits: ``(N,)``; is_source (tensor) and weight: ``(N,)``.
    """
    logits = logits.float()
    if isinstance(is_source, bool):
        target = torch.full_like(logits, 1.0 if is_source else 0.0)
    else:
        if is_source.shape != logits.shape:
            raise ValueError(f"is_source must have shape {tuple(logits.shape)}, got {tuple(is_source.shape)}")
        target = is_source.to(logits.dtype)
    if weight is not None and weight.shape != logits.shape:
        raise ValueError(f"weight must have shape {tuple(logits.shape)}, got {tuple(weight.shape)}")
    # NOTE: autocast lists binary_cross_entropy_with_logits as float32-safe; the explicit cast keeps
    # the result identical with and without autocast.
    with torch.autocast(logits.device.type, enabled=False):
        return F.binary_cross_entropy_with_logits(logits, target, weight=None if weight is None else weight.float())

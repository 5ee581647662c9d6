"""Minimum class confusion loss (MCC, Jin et al., ECCV 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothopt._validation import check_real
from smoothopt.adapt._utils import entropy

__all__ = ["MCCLoss", "mcc_loss"]


def mcc_loss(logits: Tensor, temperature: float = 2.5) -> Tensor:
    r"""Minimum class confusion of a batch of target logits.

    .. math::
        \hat Y = \mathrm{softmax}(z / T),\quad
        w_i = \frac{N (1 + e^{-H(\hat y_i)})}{\sum_j (1 + e^{-H(\hat y_j)})},\quad
        M = \hat Y^\top W \hat Y,\quad
        \tilde M_{jk} = \frac{M_{jk}}{\sum_{k'} M_{jk'}},\quad
        \mathcal{L} = \frac{1}{C}\sum_{j \ne k} \tilde M_{jk}

    Args:
        logits: Target logits ``z``.
        temperature: ``T``; the SDAT recipes use 2.0-3.0.

    Returns:
        Scalar loss in ``[0, 1)``, computed in float32.

    Shape:
        - logits: ``(N, C)``.
    """
    temperature = check_real("temperature", temperature, 0.0, low_open=True)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    n, c = logits.shape
    # Step 1: temperature-scaled probabilities (Eq. 1).
    y = F.softmax(logits.float() / temperature, dim=1)

    # Step 2: certainty weights from the entropy, normalised to sum N (Eq. 3-4).
    w = 1.0 + torch.exp(-entropy(y).detach())
    w = n * w / w.sum()

    # Step 3: weighted class-correlation matrix, rows normalised (Eq. 5-6).
    m = (y * w.unsqueeze(1)).t() @ y
    m = m / m.sum(dim=1, keepdim=True)

    # Step 4: the off-diagonal mass is the confusion (Eq. 7).
    return (m.sum() - m.trace()) / c


class MCCLoss(nn.Module):
    """Module form of :func:`mcc_loss`.

    Args:
        temperature: Softmax temperature ``T``.
    """

    def __init__(self, temperature: float = 2.5) -> None:
        super().__init__()
        self.temperature = check_real("temperature", temperature, 0.0, low_open=True)

    def forward(self, logits: Tensor) -> Tensor:
        """Return :func:`mcc_loss` of ``logits``."""
        return mcc_loss(logits, self.temperature)

"""Cosine classifier head: normalised features times normalised class weights."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothopt._validation import check_int, check_real

__all__ = ["CosineClassifier"]


class CosineClassifier(nn.Module):
    r"""Linear head without bias whose logits are cosine similarities, in ``[-1, 1]``.

    .. math::

        z_j = \frac{x^\top W_j}{\lVert x \rVert \, \lVert W_j \rVert}.

    This is the head :class:`~smoothopt.losses.LDAMLoss` expects: its margins and its scale ``s`` are
    sized for logits in ``[-1, 1]``. The scale is applied by the loss, not here.

    Args:
        in_features: Size of each input feature vector, in ``[1, inf)``.
        num_classes: Number of classes, in ``[1, inf)``.
        eps: Lower bound on the norms, to keep an all-zero feature vector finite.

    Shape:
        - Input: ``(N, in_features)``.
        - Output: ``(N, num_classes)``, values in ``[-1, 1]``.

    Example:
        >>> import torch
        >>> from smoothopt.losses import CosineClassifier
        >>> head = CosineClassifier(64, 10)
        >>> z = head(torch.randn(5, 64))
        >>> bool(z.abs().max() <= 1)
        True
    """

    def __init__(self, in_features: int, num_classes: int, *, eps: float = 1e-12) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, 1)
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.eps = check_real("eps", eps, 0.0, low_open=True)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the class weights from ``U(-1/sqrt(in_features), 1/sqrt(in_features))``, as ``nn.Linear`` does."""
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """Return the cosine of the angle between each feature vector and each class weight."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must have shape (N, {self.in_features}), got {tuple(x.shape)}")
        logits = F.normalize(x, dim=1, eps=self.eps) @ F.normalize(self.weight, dim=1, eps=self.eps).t()
        # NOTE: rounding can push a cosine a few ulps past 1; clamp so the documented range holds exactly.
        return logits.clamp(-1.0, 1.0)

    def extra_repr(self) -> str:
        """Summarise the settings for ``repr``."""
        return f"in_features={self.in_features}, num_classes={self.num_classes}"

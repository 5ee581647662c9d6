"""Conditional adversarial domain adaptation (CDAN, Long et al., NeurIPS 2018)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothopt._validation import check_int
from smoothopt.adapt._utils import cat_batches, entropy
from smoothopt.adapt.discriminator import domain_bce
from smoothopt.adapt.grl import GradientReversal

__all__ = ["CDANLoss", "MultilinearMap", "RandomizedMultilinearMap"]


class MultilinearMap(nn.Module):
    r"""Multilinear map :math:`T_\otimes(f, g) = f \otimes g`, flattened.

    Shape:
        - f: ``(N, F)``, g: ``(N, C)``.
        - Output: ``(N, F * C)``.
    """

    def forward(self, f: Tensor, g: Tensor) -> Tensor:
        """Return the flattened outer product of each row of ``f`` and ``g``."""
        return torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)


class RandomizedMultilinearMap(nn.Module):
    r"""Randomised multilinear map :math:`T_\odot(f, g) = \frac{1}{\sqrt{d}} (R_f f) \odot (R_g g)`.

    ``R_f`` and ``R_g`` are fixed standard-normal matrices drawn once from ``generator`` and kept as
    buffers, so they follow ``.to()`` and are saved in (and restored from) the ``state_dict``. The
    inner product of two maps approximates that of the full multilinear maps (CDAN, Sec. 3.2).

    Args:
        features_dim: ``F``.
        num_classes: ``C``.
        output_dim: ``d``, the width of the map.
        generator: Source of the random matrices (a CPU ``torch.Generator``); the global one if None.

    Shape:
        - f: ``(N, F)``, g: ``(N, C)``.
        - Output: ``(N, d)``.
    """

    Rf: Tensor
    Rg: Tensor

    def __init__(
        self, features_dim: int, num_classes: int, output_dim: int = 1024, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.output_dim = check_int("output_dim", output_dim, 1)
        f = check_int("features_dim", features_dim, 1)
        c = check_int("num_classes", num_classes, 1)
        self.register_buffer("Rf", torch.randn(f, self.output_dim, generator=generator))
        self.register_buffer("Rg", torch.randn(c, self.output_dim, generator=generator))

    def forward(self, f: Tensor, g: Tensor) -> Tensor:
        """Return the randomised map of features ``f`` and predictions ``g``."""
        return (f @ self.Rf.to(f.dtype)) * (g @ self.Rg.to(g.dtype)) / math.sqrt(self.output_dim)


class CDANLoss(nn.Module):
    r"""CDAN adversarial loss: the discriminator sees features conditioned on predictions.

    .. math::
        h = T(f, \mathrm{softmax}(z)),\qquad
        \mathcal{L}_{adv} = \mathrm{BCE}_w\big(D(R_\lambda(h)), d\big)

    with ``T`` the multilinear map, or its randomised version when ``F * C > max_multilinear_dim``
    (or when ``randomized=True``). The predictions are detached (the classifier is trained
    through the features only). With ``entropy_conditioning`` (CDAN+E) each sample is weighted by
    :math:`w = 1 + e^{-H(g)}`, the weights normalised to mean 1 over the joint batch.

    Args:
        discriminator: Module mapping ``(N, D)`` to ``(N,)`` logits, ``D`` = :attr:`map_dim`.
        features_dim: ``F``.
        num_classes: ``C``.
        grl: Gradient reversal; a default ``GradientReversal("dann")`` if None.
        entropy_conditioning: Weight samples by prediction certainty (CDAN+E).
        randomized: Force the randomised map (True) or the full map (False); None chooses by size.
        max_multilinear_dim: Size limit of the full map used when ``randomized`` is None.
        randomized_dim: Width ``d`` of the randomised map.
        generator: Source of the randomised map's matrices.

    Shape:
        - z_s, f_s: ``(N_s, C)``, ``(N_s, F)``; z_t, f_t likewise.
        - Output: scalar.

    Example:
        >>> from smoothopt.adapt import DomainDiscriminator
        >>> loss_fn = CDANLoss(DomainDiscriminator(8 * 3, hidden=(16,)), features_dim=8, num_classes=3)
        >>> loss = loss_fn(torch.randn(4, 3), torch.randn(4, 8), torch.randn(4, 3), torch.randn(4, 8))
    """

    def __init__(
        self,
        discriminator: nn.Module,
        features_dim: int,
        num_classes: int,
        grl: GradientReversal | None = None,
        *,
        entropy_conditioning: bool = False,
        randomized: bool | None = None,
        max_multilinear_dim: int = 4096,
        randomized_dim: int = 1024,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.features_dim = check_int("features_dim", features_dim, 1)
        self.num_classes = check_int("num_classes", num_classes, 1)
        check_int("max_multilinear_dim", max_multilinear_dim, 1)
        if randomized is None:
            randomized = self.features_dim * self.num_classes > max_multilinear_dim
        self.map: nn.Module
        if randomized:
            self.map = RandomizedMultilinearMap(features_dim, num_classes, randomized_dim, generator)
            self.map_dim = randomized_dim
        else:
            self.map = MultilinearMap()
            self.map_dim = self.features_dim * self.num_classes
        self.discriminator = discriminator
        self.grl = grl if grl is not None else GradientReversal("dann")
        self.entropy_conditioning = bool(entropy_conditioning)

    def forward(self, z_s: Tensor, f_s: Tensor, z_t: Tensor, f_t: Tensor) -> Tensor:
        """Return the CDAN loss of a source batch (logits ``z_s``, features ``f_s``) and a target batch."""
        for name, z, f in (("source", z_s, f_s), ("target", z_t, f_t)):
            if z.ndim != 2 or f.ndim != 2 or z.shape[0] != f.shape[0]:
                raise ValueError(f"{name} logits and features must be (N, C) and (N, F), "
                                 f"got {tuple(z.shape)} and {tuple(f.shape)}")
            if z.shape[1] != self.num_classes or f.shape[1] != self.features_dim:
                raise ValueError(f"{name} batch must have C={self.num_classes} and F={self.features_dim}, "
                                 f"got C={z.shape[1]} and F={f.shape[1]}")
        # Step 1: detached predictions g = softmax(z) (float32 for a stable softmax under autocast).
        f = cat_batches(f_s, f_t)
        g = F.softmax(cat_batches(z_s, z_t).float(), dim=1).detach()

        # Step 2: condition the features on the predictions and reverse the gradient.
        h = self.grl(self.map(f, g.to(f.dtype)))
        logits = self.discriminator(h)
        labels = torch.cat([torch.ones(f_s.shape[0]), torch.zeros(f_t.shape[0])]).to(logits.device)

        # Step 3: optional entropy conditioning, w = 1 + exp(-H(g)), normalised to mean 1.
        weight = None
        if self.entropy_conditioning:
            w = 1.0 + torch.exp(-entropy(g))
            weight = w / w.sum() * w.numel()
        return domain_bce(logits, labels, weight)

"""Domain-adversarial loss of DANN (Ganin et al., JMLR 2016)."""

from __future__ import annotations

from torch import Tensor, nn

from smoothopt.adapt._utils import cat_batches
from smoothopt.adapt.discriminator import domain_bce
from smoothopt.adapt.grl import GradientReversal

__all__ = ["DANNLoss"]


class DANNLoss(nn.Module):
    r"""Domain-adversarial loss: discriminator BCE on gradient-reversed features.

    .. math::
        \mathcal{L}_{adv} = \tfrac12\Big(\mathrm{BCE}\big(D(R_\lambda(f_s)), 1\big)
        + \mathrm{BCE}\big(D(R_\lambda(f_t)), 0\big)\Big)

    where :math:`R_\lambda` is the gradient reversal layer. Minimising it trains the discriminator
    ``D`` to tell the domains apart and, through the reversed gradient, the feature extractor to
    confuse it. The loss stores no metrics; compute domain accuracy from ``discriminator`` outputs
    if wanted.

    Args:
        discriminator: Module mapping ``(N, F)`` features to ``(N,)`` logits.
        grl: The gradient reversal layer; a default ``GradientReversal("dann")`` if ``None``.
            Its schedule is advanced by the caller (see :meth:`GradientReversal.attach`).

    Shape:
        - f_s: ``(N_s, F)``, f_t: ``(N_t, F)``.
        - Output: scalar.

    Example:
        >>> import torch
        >>> from smoothopt.adapt import DomainDiscriminator
        >>> loss_fn = DANNLoss(DomainDiscriminator(64, hidden=(32,)))
        >>> loss = loss_fn(torch.randn(4, 64), torch.randn(4, 64))
    """

    def __init__(self, discriminator: nn.Module, grl: GradientReversal | None = None) -> None:
        super().__init__()
        self.discriminator = discriminator
        self.grl = grl if grl is not None else GradientReversal("dann")

    def forward(self, f_s: Tensor, f_t: Tensor, w_s: Tensor | None = None, w_t: Tensor | None = None) -> Tensor:
        """Return the adversarial loss of a source and a target batch (optional per-sample weights)."""
        if f_s.ndim != 2 or f_t.ndim != 2 or f_s.shape[1] != f_t.shape[1]:
            raise ValueError(f"f_s and f_t must be (N, F) with equal F, got {tuple(f_s.shape)} and {tuple(f_t.shape)}")
        # Step 1: one discriminator pass over both domains (one BatchNorm batch, as in DANN).
        logits = self.discriminator(self.grl(cat_batches(f_s, f_t)))
        d_s, d_t = logits[: f_s.shape[0]], logits[f_s.shape[0]:]
        # Step 2: BCE with source = 1, target = 0, averaged over the two domains.
        return 0.5 * (domain_bce(d_s, True, w_s) + domain_bce(d_t, False, w_t))


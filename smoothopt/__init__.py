"""smoothopt: sharpness-aware and saddle-escaping optimization for existing PyTorch training loops.

Subpackages:
    :mod:`smoothopt.sam`: SAM and its variants as a wrapper around any ``torch.optim`` optimizer.
    :mod:`smoothopt.losses`: long-tail losses (LDAM, VS, logit adjustment, focal) and re-weighting.
    :mod:`smoothopt.saddle`: saddle-escape optimizers and rho schedules.
    :mod:`smoothopt.hessian`: Hessian spectra (eigenvalues, trace, density, per-class spectra).
    :mod:`smoothopt.adapt`: domain-adversarial training with SDAT, VAT and S3 subset selection.
    :mod:`smoothopt.evaluation`: per-class and many / medium / few (head / tail) accuracy.
"""

import logging

from smoothopt.adapt import (
    BottleneckClassifier,
    CDANLoss,
    DANNLoss,
    DomainDiscriminator,
    GradientReversal,
    MCCLoss,
    SDATStep,
    s3_select,
    sdat_step,
    vat_loss,
)
from smoothopt.hessian import NegativeCurvatureEscape
from smoothopt.losses import (
    CDTLoss,
    CosineClassifier,
    DeferredReweighting,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    VSLoss,
    class_balanced_weights,
)
from smoothopt.saddle import PerturbedGD, PhasedRho
from smoothopt.sam import (
    GSAM,
    SAM,
    EveryKSteps,
    LookSAM,
    RandomSteps,
    freeze_norm_stats,
    per_replica_first_pass,
    register_timm,
)

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "__version__",
    # the SAM family
    "SAM",
    "GSAM",
    "LookSAM",
    "EveryKSteps",
    "RandomSteps",
    "freeze_norm_stats",
    "per_replica_first_pass",
    "register_timm",
    # long-tail losses and re-weighting
    "LDAMLoss",
    "VSLoss",
    "LogitAdjustedLoss",
    "CDTLoss",
    "FocalLoss",
    "CosineClassifier",
    "DeferredReweighting",
    "class_balanced_weights",
    # saddle escape
    "PerturbedGD",
    "PhasedRho",
    "NegativeCurvatureEscape",
    # domain adaptation
    "BottleneckClassifier",
    "CDANLoss",
    "DANNLoss",
    "DomainDiscriminator",
    "GradientReversal",
    "MCCLoss",
    "SDATStep",
    "s3_select",
    "sdat_step",
    "vat_loss",
]

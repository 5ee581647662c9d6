"""smoothopt: sharpness-aware and saddle-escaping optimization for existing PyTorch training loops.

Subpackages:
    :mod:`smoothopt.sam`: SAM and its variants as a wrapper around any ``torch.optim`` optimizer.
    :mod:`smoothopt.losses`: long-tail losses (LDAM, VS, logit adjustment, focal) and re-weighting.
    :mod:`smoothopt.saddle`: saddle-escape optimizers and rho schedules.
    :mod:`smoothopt.hessian`: Hessian spectra (eigenvalues, trace, density, per-class spectra).
    :mod:`smoothopt.adapt`: domain-adversarial training with SDAT, VAT and S3 subset selection.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]

# Each capability adds its public names below, in its own block of explicit imports
# followed by an extension of __all__.

from smoothopt.sam import (  # noqa: E402
    GSAM,
    SAM,
    EveryKSteps,
    LookSAM,
    RandomSteps,
    freeze_norm_stats,
    per_replica_first_pass,
    register_timm,
)

__all__ += [
    "GSAM",
    "SAM",
    "EveryKSteps",
    "LookSAM",
    "RandomSteps",
    "freeze_norm_stats",
    "per_replica_first_pass",
    "register_timm",
]

from smoothopt.losses import (  # noqa: E402
    CDTLoss,
    CosineClassifier,
    DeferredReweighting,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    VSLoss,
    class_balanced_weights,
)

__all__ += [
    "CDTLoss",
    "CosineClassifier",
    "DeferredReweighting",
    "FocalLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "VSLoss",
    "class_balanced_weights",
]

from smoothopt.hessian import NegativeCurvatureEscape  # noqa: E402

__all__ += ["NegativeCurvatureEscape"]

from smoothopt.saddle import PerturbedGD, PhasedRho  # noqa: E402

__all__ += ["PerturbedGD", "PhasedRho"]

from smoothopt.adapt import (  # noqa: E402
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

__all__ += [
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

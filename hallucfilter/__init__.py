"""hallucfilter: flag hallucinated diffusion samples by the variance of the predicted clean sample.

Aithal et al., "Understanding Hallucinations in Diffusion Models through Mode Interpolation",
NeurIPS 2024.
"""

import logging

from hallucfilter.filtering import (
    auroc,
    calibrate_threshold,
    keep_mask,
    rank_filter,
    removal_at_retention,
    retention_at_removal,
)
from hallucfilter.variance import TrajectoryVariance
from hallucfilter.window import Window

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "TrajectoryVariance",
    "Window",
    "__version__",
    "auroc",
    "calibrate_threshold",
    "keep_mask",
    "rank_filter",
    "removal_at_retention",
    "retention_at_removal",
]

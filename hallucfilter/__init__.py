"""hallucfilter: flag hallucinated diffusion samples by the variance of the predicted clean sample.

Aithal et al., "Understanding Hallucinations in Diffusion Models through Mode Interpolation",
NeurIPS 2024.
"""

import logging

from hallucfilter.callbacks import KDiffusionCallback, trajectory_variance_callback
from hallucfilter.diffusers_hook import TrajectoryRecorder, attach
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
from hallucfilter.x0 import x0_from_edm, x0_from_flow, x0_from_sigma, x0_from_vp

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "KDiffusionCallback",
    "TrajectoryRecorder",
    "TrajectoryVariance",
    "Window",
    "__version__",
    "attach",
    "auroc",
    "calibrate_threshold",
    "keep_mask",
    "rank_filter",
    "removal_at_retention",
    "retention_at_removal",
    "trajectory_variance_callback",
    "x0_from_edm",
    "x0_from_flow",
    "x0_from_sigma",
    "x0_from_vp",
]

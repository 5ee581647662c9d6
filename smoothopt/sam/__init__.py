"""The SAM family: sharpness-aware minimization as a wrapper around any ``torch.optim`` optimizer.

See ``docs/sam.md`` for recipes (AMP, DDP, BatchNorm, Lightning, timm) and measured costs.
"""

from smoothopt.sam.distributed import per_replica_first_pass
from smoothopt.sam.gsam import GSAM
from smoothopt.sam.integrations import register_timm
from smoothopt.sam.looksam import LookSAM
from smoothopt.sam.norm_stats import freeze_norm_stats
from smoothopt.sam.sam import SAM
from smoothopt.sam.schedules import EveryKSteps, RandomSteps

__all__ = [
    "GSAM",
    "SAM",
    "EveryKSteps",
    "LookSAM",
    "RandomSteps",
    "freeze_norm_stats",
    "per_replica_first_pass",
    "register_timm",
]

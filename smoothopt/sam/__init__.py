"""The SAM family: sharpness-aware minimization as a wrapper around any ``torch.optim`` optimizer.

See ``docs/sam.md`` for recipes (AMP, DDP, BatchNorm, Lightning, timm) and measured costs.
"""

from smoothopt.sam.sam import SAM

__all__ = ["SAM"]

"""Long-tail losses, re-weighting schedules and the cosine head LDAM needs.

Every loss takes integer class indices, reduces like :func:`torch.nn.functional.cross_entropy`
(``"mean"`` divides by the sum of the selected class weights), keeps its constants as buffers, and
computes in float32 at least, so fp16/bf16 logits under autocast do not overflow.
"""

from smoothopt.losses.cosine import CosineClassifier
from smoothopt.losses.focal import FocalLoss
from smoothopt.losses.ldam import LDAMLoss
from smoothopt.losses.reweighting import DeferredReweighting, class_balanced_weights
from smoothopt.losses.vs import CDTLoss, LogitAdjustedLoss, VSLoss

__all__ = [
    "CDTLoss",
    "CosineClassifier",
    "DeferredReweighting",
    "FocalLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "VSLoss",
    "class_balanced_weights",
]

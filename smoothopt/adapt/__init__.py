"""Domain adaptation: domain-adversarial losses, SDAT, virtual adversarial training and S3 active selection.

Pieces:
    * gradient reversal driven by the optimisation step: :class:`GradientReversal`;
    * domain-adversarial losses: :class:`DomainDiscriminator`, :class:`DANNLoss`, :class:`CDANLoss`,
      :class:`MCCLoss`;
    * the classifier: :class:`BottleneckClassifier` (timm backbones, learning-rate groups);
    * SDAT (Rangwani et al., ICML 2022): :func:`sdat_step` / :class:`SDATStep` on :class:`smoothopt.SAM`;
    * VAT and the VAADA objective: :func:`vat_loss`, :func:`conditional_entropy`, :func:`vaada_loss`;
    * S3 selection (Rangwani et al., ICCV 2021): :func:`s3_select`, :func:`select` and its baselines.
"""

from smoothopt.adapt.cdan import CDANLoss, MultilinearMap, RandomizedMultilinearMap
from smoothopt.adapt.classifier import BottleneckClassifier, ClassifierOutput
from smoothopt.adapt.dann import DANNLoss
from smoothopt.adapt.discriminator import DomainDiscriminator, domain_bce
from smoothopt.adapt.grl import GradientReversal, dann_coefficient, grad_reverse, warm_start_coefficient
from smoothopt.adapt.mcc import MCCLoss, mcc_loss
from smoothopt.adapt.sdat import SDATLosses, SDATStep, sdat_step
from smoothopt.adapt.selection import (
    S3Objective,
    Selection,
    entropy_scores,
    greedy,
    lazy_greedy,
    margin_scores,
    s3_select,
    select,
    vat_sensitivity,
)
from smoothopt.adapt.vat import (
    VAADALosses,
    VAADAWeights,
    conditional_entropy,
    vaada_loss,
    vat_loss,
    virtual_adversarial_perturbation,
)

__all__ = [
    "BottleneckClassifier",
    "CDANLoss",
    "ClassifierOutput",
    "DANNLoss",
    "DomainDiscriminator",
    "GradientReversal",
    "MCCLoss",
    "MultilinearMap",
    "RandomizedMultilinearMap",
    "S3Objective",
    "SDATLosses",
    "SDATStep",
    "Selection",
    "VAADALosses",
    "VAADAWeights",
    "conditional_entropy",
    "dann_coefficient",
    "domain_bce",
    "entropy_scores",
    "grad_reverse",
    "greedy",
    "lazy_greedy",
    "margin_scores",
    "mcc_loss",
    "s3_select",
    "sdat_step",
    "select",
    "vaada_loss",
    "vat_loss",
    "vat_sensitivity",
    "virtual_adversarial_perturbation",
    "warm_start_coefficient",
]

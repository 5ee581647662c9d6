"""Saddle escape: perturbed gradient descent and rho schedules for SAM tied to re-weighting."""

from smoothopt.saddle.perturbed import PerturbedGD
from smoothopt.saddle.rho import PhasedRho

__all__ = ["PerturbedGD", "PhasedRho"]

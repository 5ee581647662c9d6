"""Hessian spectra of a model's loss: eigenvalues, trace, density and per-class spectra.

Everything works on a :class:`HessianOperator` (Hessian-vector products over a batch, batches or a
loader), so no Hessian is ever formed:

- :func:`lanczos`: top-k and bottom-k eigenvalues (largest/smallest algebraic), residuals, vectors.
- :func:`hutchinson`, :func:`hutchpp`, :func:`trace`: trace with a standard error.
- :func:`slq`: spectral density by stochastic Lanczos quadrature.
- :func:`per_class_spectra`, :func:`hessian_spectrum`: everything above per class, in lock step.
- :class:`NegativeCurvatureEscape`: an optimizer wrapper that steps along negative curvature.
- :class:`hessian`: a drop-in for ``pyhessian.hessian``.
- :mod:`smoothopt.hessian.plots`: matplotlib figures (optional).
"""

from smoothopt.hessian.compat import hessian
from smoothopt.hessian.density import SpectralDensity, slq
from smoothopt.hessian.escape import NegativeCurvatureEscape
from smoothopt.hessian.lanczos import EigenResult, LanczosChains, lanczos
from smoothopt.hessian.operator import HessianOperator, MatrixOperator
from smoothopt.hessian.per_class import (
    PerClassSpectra,
    Spectrum,
    class_identity_error,
    hessian_spectrum,
    per_class_spectra,
    spectra,
)
from smoothopt.hessian.trace import TraceEstimate, hutchinson, hutchpp, trace

__all__ = [
    "EigenResult",
    "HessianOperator",
    "LanczosChains",
    "MatrixOperator",
    "NegativeCurvatureEscape",
    "PerClassSpectra",
    "SpectralDensity",
    "Spectrum",
    "TraceEstimate",
    "class_identity_error",
    "hessian",
    "hessian_spectrum",
    "hutchinson",
    "hutchpp",
    "lanczos",
    "per_class_spectra",
    "slq",
    "spectra",
    "trace",
]

"""Escaping saddle points for class-imbalanced data (Rangwani et al., NeurIPS 2022), reproduced.

``python -m benchmarks longtail --preset cpu`` trains the grid (CE, CE+DRW, LDAM+DRW, VS, each
with and without SAM, a rho schedule tied to re-weighting, and the saddle-escape alternatives) on
long-tailed digits over several seeds, compares methods seed by seed, and plots the class-wise
Hessian spectra of the final models. ``--preset paper`` is the CIFAR-10-LT recipe
(``--set data.root=/path/to/cifar``).
"""

from benchmarks._harness import Experiment
from benchmarks.longtail.grid import DEFAULT_SEEDS, PRESETS, run_unit, units
from benchmarks.longtail.report import report

EXPERIMENT = Experiment(
    name="longtail",
    title="Escaping saddle points for class-imbalanced data (SAM on long-tailed data)",
    presets=PRESETS,
    default_seeds=DEFAULT_SEEDS,
    units=units,
    run_unit=run_unit,
    report=report,
)

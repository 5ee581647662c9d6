"""Reproduction harnesses for the four papers behind smoothopt and hallucfilter.

Run ``python -m benchmarks --help``. Each paper is one :class:`~benchmarks._harness.Experiment`
registered in :data:`EXPERIMENTS`; micro-benchmarks of the packages live in :data:`PERF`.
"""

# Experiment name -> module that defines ``EXPERIMENT``; imported lazily so that one
# paper's optional dependencies never block another.
EXPERIMENTS: dict[str, str] = {
    "hallucination": "benchmarks.hallucination",
    "longtail": "benchmarks.longtail",
    "sdat": "benchmarks.sdat",
    "s3vaada": "benchmarks.s3vaada",
}

# Micro-benchmark name -> module with ``main(argv: list[str]) -> int``.
PERF: dict[str, str] = {
    "sam": "benchmarks.perf.sam",
    "hessian": "benchmarks.perf.hessian",
    "hallucfilter": "benchmarks.perf.hallucfilter",
    "selection": "benchmarks.perf.selection",
}

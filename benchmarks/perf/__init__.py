"""Micro-benchmarks of the packages against their peers (``python -m benchmarks perf NAME``).

Each module has ``main(argv) -> int``; timings are interleaved in one process and quoted as ratios.
"""

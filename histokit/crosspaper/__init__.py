"""Across the four papers' runs: the common benchmark (one protocol for every method and data) and the
train/test leakage audit. ``histokit benchmark`` and ``histokit audit`` call them; ``histokit report`` shows
``results/benchmark/<profile>/`` and ``results/leakage/<profile>/``."""
from .benchmark import run_benchmark
from .leakage_audit import run_leakage_audit

__all__ = ["run_benchmark", "run_leakage_audit"]

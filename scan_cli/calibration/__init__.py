"""Calibration: per-exit thresholds searched on a run's validation outputs so that the cascade keeps
an accuracy promise at the least cost, and evaluating that promise on held-out data.

The modules are listed in docs/ARCHITECTURE.md. Everything but `run.py` is pure numpy (no torch,
no printing); importing this package imports no torch (`run.py` imports it inside its functions and
is not imported here).
"""

from __future__ import annotations

from .cascade import CascadeData, TargetUnreachable, simulate, summarize
from .choose import CalibrationResult, calibrate
from .guarantee import binom_cdf
from .plot import plot_front
from .search import DEFAULT_MAX_EVALUATIONS, Front, pareto_front

__all__ = [
    "DEFAULT_MAX_EVALUATIONS",
    "CalibrationResult",
    "CascadeData",
    "Front",
    "TargetUnreachable",
    "binom_cdf",
    "calibrate",
    "pareto_front",
    "plot_front",
    "simulate",
    "summarize",
]

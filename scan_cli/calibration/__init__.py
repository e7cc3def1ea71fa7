"""Calibration: per-exit thresholds from cached exit outputs, and running it for a run folder.

| module | job |
|---|---|
| `cascade.py` | `CascadeData` (scores, correctness, costs) and routing images through thresholds |
| `search.py` | the exact accuracy-vs-cost Pareto front, its gridded variant, local polish |
| `guarantee.py` | `--confidence`: Pareto Testing with Learn-then-Test binomial tests |
| `choose.py` | `calibrate`: one operating point for --target-acc / --max-drop / --budget |
| `plot.py` | the accuracy-cost plot (`--plot`) |
| `drift.py` | the drift alarm: the reference calibration stores, the tests `scan predict` runs |
| `run.py` | `calibrate_run` / `evaluate_run`: a run folder -> exit outputs -> thresholds -> artifact |

Everything but `run.py` is pure numpy (no torch, no printing); importing this package imports
no torch (`run.py` imports it inside its functions and is not imported here).
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

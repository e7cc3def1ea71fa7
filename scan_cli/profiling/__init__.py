"""Profiling: what an exit costs, counted (`macs.py`) and measured (`latency.py`).

The names below are re-exported so callers write `profiling.cascade_costs(...)`. Neither module
imports torch or fvcore at module level.
"""

from __future__ import annotations

from .latency import (
    CascadeTiming,
    LatencyReport,
    Timing,
    measure_cascade,
    measure_latency,
    plain_backbone,
    compare_with_plain,
    run_to_exit,
    speed_sentence,
)
from .costs import (
    CascadeCosts,
    ExpectedCost,
    calibration_error,
    cascade_costs,
    expected_cost,
    profile_macs,
    run_macs,
    structure_key,
)
from .macs import (
    CACHE_SCHEMA,
    DATA_MOVEMENT_OPS,
    ELEMENTWISE_OPS,
    NOTES,
    UNITS,
    ExitCost,
    MacReport,
    PieceCount,
    baddbmm_macs,
    classify_op,
    count_macs,
    count_piece,
    default_handles,
    sdpa_macs,
)

__all__ = [
    "CACHE_SCHEMA", "DATA_MOVEMENT_OPS", "ELEMENTWISE_OPS", "NOTES", "UNITS",
    "CascadeCosts", "CascadeTiming", "ExitCost", "ExpectedCost", "LatencyReport", "MacReport", "PieceCount", "Timing",
    "baddbmm_macs", "calibration_error", "cascade_costs", "classify_op", "count_macs", "count_piece",
    "default_handles", "expected_cost", "measure_cascade", "measure_latency", "plain_backbone",
    "profile_macs", "run_macs", "run_to_exit", "sdpa_macs", "structure_key",
    "compare_with_plain", "speed_sentence",
]

"""What answering at each exit costs a model or a run: the MAC report counted once per structure and
cached per artifact (``profile_macs``, ``run_macs``), the ``CascadeCosts`` every command weighs exits
by, and the expected cost under a calibration's exit shares."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional

from .. import files
from ..errors import ScanError
from ..policy import Calibration, effective_costs
from .macs import CACHE_SCHEMA, MacReport, count_macs


# -- caching ------------------------------------------------------------------------------------
_MEMORY_CACHE: dict[tuple, MacReport] = {}


def structure_key(model) -> str:
    """A fingerprint of what MACs depend on: the module tree and every tensor's shape (not weights)."""
    import torch

    digest = hashlib.sha256(repr(model).encode())
    digest.update(json.dumps(list(getattr(model, "split_modules", []))).encode())
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:16]


def _read_cache(path: Path) -> Optional[MacReport]:
    try:
        doc = json.loads(Path(path).read_text())
        if doc.get("cache_schema") != CACHE_SCHEMA:
            return None
        return MacReport.from_dict(doc["report"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a missing or damaged cache is recomputed


def _write_cache(path: Path, report: MacReport) -> None:

    text = json.dumps({"cache_schema": CACHE_SCHEMA, "report": report.to_dict()}, indent=1)
    try:
        files.atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))
    except OSError:
        pass  # a read-only run folder still gets its numbers, just not cached


def profile_macs(model, input_size: int, cache_path: Optional[Path] = None) -> MacReport:
    """``count_macs`` once per model structure and input size (in memory, and in ``cache_path``)."""
    if cache_path is not None:
        cached = _read_cache(cache_path)
        if cached is not None:
            return cached
    key = (structure_key(model), int(input_size))
    report = _MEMORY_CACHE.get(key)
    if report is None:
        report = count_macs(model, input_size)
        _MEMORY_CACHE[key] = report
    if cache_path is not None:
        _write_cache(cache_path, report)
    return report


def run_macs(run, input_size: Optional[int] = None, model=None, write: bool = True) -> MacReport:
    """The MAC report of a run's artifact (a ``runs.Run`` or its folder), cached in its ``cache/``
    folder (not with write=False: ``calibrate --dry-run``); loads the model only on a miss (once per
    command: the ``Run`` keeps it)."""
    from ..runs import Run

    run = Run.of(run)
    size = int(input_size or run.info.input_size)
    path = run.macs_cache(size)
    cached = _read_cache(path)
    if cached is not None:
        return cached
    if model is None:
        model, _ = run.load(write=write)
    return profile_macs(model, size, cache_path=path if write else None)


def cascade_costs(model, input_size: Optional[int] = None, cache_dir: Optional[Path] = None) -> "CascadeCosts":
    """The costs ``scan calibrate`` weighs exits by: ``(cumulative, backbone_macs, heads)``.

    ``cumulative[k]`` is the MACs (batch 1) of answering an image at exit ``k`` in the cascade with
    every exit switched on: backbone up to split ``k`` plus every shallow exit on the way, its own
    included; the last entry is the full backbone plus all shallow exits. ``heads[k]`` is shallow exit
    k's own attention + head, which a switched-off exit (threshold never firing) does not run
    (``CascadeCosts.for_policy``). ``backbone_macs`` is the plain network's cost, so
    ``backbone_macs / sum(share_k * cost_k)`` is the counted speed-up.

    ``model``: a ``ScanModel``, or a run folder (str/Path; then the result is cached in
    ``run/cache/macs-<artifact fingerprint>-<size>.json`` and the model is loaded only on a cache miss).
    ``input_size``: the square input side; for a run folder, default the artifact's.
    ``cache_dir``: for a ``ScanModel``, a folder to cache in (keyed by the model's structure: MACs do
    not depend on weights). Counting takes about a second for a ResNet-50."""
    from ..runs import Run

    if isinstance(model, (str, Path, Run)):
        report = run_macs(model, input_size)
    else:
        if input_size is None:
            raise ScanError("cascade_costs needs input_size for a model (it is only implied by a run folder)")
        path = None
        if cache_dir is not None:
            path = Path(cache_dir) / f"macs-arch-{structure_key(model)}-{int(input_size)}.json"
        report = profile_macs(model, int(input_size), cache_path=path)
    return CascadeCosts([float(c) for c in report.cumulative], float(report.backbone_macs),
                        [float(h) for h in report.shallow_heads])


class CascadeCosts(NamedTuple):
    cumulative: list  # every exit switched on
    backbone_macs: float
    heads: list  # each shallow exit's own MACs

    def for_policy(self, thresholds, fallback: str = "last") -> list[float]:
        """Cumulative MACs per exit when the exits whose threshold is None/inf are switched off; with
        the ensemble fallback every head runs (its logits are needed for the mean)."""
        return effective_costs(self.cumulative, self.heads, thresholds, fallback)





# -- expected cost from calibration -------------------------------------------------------------
@dataclass
class ExpectedCost:
    macs: float  # expected MACs per image = sum_k share_k * cumulative_k
    speedup: float  # backbone_macs / macs
    exit_shares: list[float]
    thresholds: list[Optional[float]]

    def to_dict(self) -> dict:
        return asdict(self)


def calibration_error(calibration: Any, num_exits: int) -> Optional[str]:
    """Why ``calibration`` cannot give an expected cost, or None when it can."""
    if not isinstance(calibration, dict):
        return "the artifact has no calibration: run 'scan calibrate' for the expected cost"
    shares, thresholds = calibration.get("exit_shares"), calibration.get("thresholds")
    if not isinstance(shares, list) or len(shares) != num_exits:
        return f"the calibration has no exit_shares for {num_exits} exits: re-run 'scan calibrate'"
    if not isinstance(thresholds, list) or len(thresholds) not in (num_exits, num_exits - 1):
        return f"the calibration has no thresholds for {num_exits} exits: re-run 'scan calibrate'"
    try:
        values = [float(s) for s in shares]
    except (TypeError, ValueError):
        return "the calibration's exit_shares are not numbers: re-run 'scan calibrate'"
    if any(s < 0 or not math.isfinite(s) for s in values) or abs(sum(values) - 1.0) > 1e-3:
        return f"the calibration's exit_shares do not sum to 1 ({sum(values):.4f}): re-run 'scan calibrate'"
    return None


def expected_cost(report: MacReport, calibration: dict) -> ExpectedCost:
    """Expected MACs per image under the calibrated exit shares, and the counted speed-up."""
    problem = calibration_error(calibration, report.num_exits)
    if problem:
        raise ScanError(problem)
    shares = [float(s) for s in calibration["exit_shares"]]
    policy = Calibration.from_metadata(calibration, report.num_exits).policy()
    costs = policy.costs(CascadeCosts(report.cumulative, report.backbone_macs, report.shallow_heads))
    macs = float(sum(s * c for s, c in zip(shares, costs)))
    return ExpectedCost(macs=macs, speedup=report.backbone_macs / macs if macs else float("nan"),
                        exit_shares=shares, thresholds=list(calibration["thresholds"]))

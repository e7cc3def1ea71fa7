"""The exit policy: which exits may answer an image, at which thresholds, and what that costs.

The one encoding, used everywhere outside numeric code: a K-exit model has K-1 shallow thresholds,
each a float or ``None`` when that exit never fires. An exit that never fires runs nothing (no
attention, no head) unless the ensemble fallback needs its logits. The last exit has no threshold: it
answers every image that reaches it. Numeric code (the threshold search, numpy arrays, JSON written
by older versions) writes "never" as +inf; ``shallow`` and ``numeric`` convert at that boundary.
-inf is a real threshold (the exit always fires); JSON spells it "-inf" (``to_json``).

The calibration stored in an artifact's metadata is read only through ``Calibration``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from .errors import UsageError

NEVER_WORDS = ("none", "inf", "+inf", "never", "-")  # what --thresholds accepts for "never fires"
SCORES = ("max_softmax", "margin", "neg_entropy")
FALLBACKS = ("last", "ensemble")
DEFAULT_SCORE = "max_softmax"
DEFAULT_FALLBACK = "last"


def fires(threshold) -> bool:
    """Whether an exit with this threshold can answer at all (None and +inf never do; -inf always does)."""
    return threshold is not None and float(threshold) != math.inf


def to_json(threshold):
    """A threshold as JSON holds it: null = never fires, "-inf" = always fires (strict JSON has no
    -Infinity, and null would read as "never"); ``shallow`` reads both back."""
    return "-inf" if threshold is not None and float(threshold) == -math.inf else threshold


def describe(threshold) -> str:
    """A threshold for people: never, always or the number."""
    if not fires(threshold):
        return "never"
    return "always" if float(threshold) == -math.inf else f"{float(threshold):.4g}"


def shallow(thresholds, num_exits: int) -> list:
    """K-1 shallow thresholds (float, or None = never) from K-1 or K entries in any encoding
    (a calibration's K entries end with the last exit's None); missing entries never fire."""
    values = list(thresholds if thresholds is not None else [])[: num_exits - 1]
    values += [None] * (num_exits - 1 - len(values))
    return [float(t) if fires(t) else None for t in values]


def numeric(thresholds, num_exits: int) -> list:
    """The same K-1 thresholds for numeric code: never = +inf."""
    return [math.inf if t is None else t for t in shallow(thresholds, num_exits)]


def heads_needed(thresholds, fallback: str, num_exits: int) -> list:
    """Which shallow exits must compute their head: those that can fire, or all for the ensemble."""
    values = shallow(thresholds, num_exits)
    return [fallback == "ensemble" or fires(t) for t in values]


def effective_costs(cumulative, heads, thresholds, fallback: str = DEFAULT_FALLBACK) -> list:
    """Cumulative MACs of answering at each exit under a policy: ``cumulative`` has every exit switched
    on; the heads (``heads[k]``: shallow exit k's own MACs) of exits that never fire are taken off every
    later exit's cost. The one cost rule for calibrate, evaluate, profile, predict and export."""
    if heads is None:
        return [float(c) for c in cumulative]
    return costs_with_heads(cumulative, heads, heads_needed(thresholds, fallback, len(cumulative)))


def costs_with_heads(cumulative, heads, heads_on) -> list:
    """Cumulative MACs per exit when only the shallow heads in ``heads_on`` (one bool per shallow
    exit) run: what an export that left the other heads out costs."""
    costs = [float(c) for c in cumulative]
    K = len(costs)
    saved = 0.0
    for k in range(K - 1):
        if not heads_on[k]:
            saved += float(heads[k])
        costs[k] -= saved
    if K > 1:
        costs[K - 1] -= saved
    return costs


def check_score(score: Optional[str]) -> None:
    if score is not None and score not in SCORES:
        raise UsageError(f"unknown score '{score}': use one of {', '.join(SCORES)}")


def check_fallback(fallback: Optional[str]) -> None:
    if fallback is not None and fallback not in FALLBACKS:
        raise UsageError(f"unknown fallback '{fallback}': use one of {', '.join(FALLBACKS)}")


def parse_thresholds(text: str, num_exits: int) -> list:
    """'0.9,0.8,none' -> [0.9, 0.8, None]: one value per shallow exit (K-1 of them).

    ``none``/``inf``/``never`` mean the exit never fires. A K-th value is accepted only when it
    is one of those (the last exit always answers)."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) == num_exits and parts[-1].lower() in NEVER_WORDS:
        parts = parts[:-1]
    if len(parts) != num_exits - 1:
        raise UsageError(
            f"--thresholds needs {num_exits - 1} comma-separated values (one per shallow exit of this "
            f"{num_exits}-exit model), got {len(parts)}: e.g. --thresholds {','.join(['0.9'] * (num_exits - 1))}"
        )
    values = []
    for p in parts:
        if p.lower() in NEVER_WORDS:
            values.append(None)
            continue
        try:
            v = float(p)
        except ValueError:
            raise UsageError(f"--thresholds: '{p}' is not a number: use numbers, or 'none' for an exit that never fires") from None
        if math.isnan(v):
            raise UsageError("--thresholds: nan is not a threshold: use a number or 'none'")
        values.append(v if fires(v) else None)
    return values


@dataclass
class ExitPolicy:
    """The exit rule one call uses: K-1 shallow thresholds (None = never fires), score, fallback."""

    thresholds: list
    score: str = DEFAULT_SCORE
    fallback: str = DEFAULT_FALLBACK
    source: str = "calibration"  # where the thresholds came from, for the summary
    drift_reference: Optional[dict] = None  # what calibration saw under these thresholds (calibration/drift.py)

    @property
    def num_exits(self) -> int:
        return len(self.thresholds) + 1

    def heads(self) -> list:
        return heads_needed(self.thresholds, self.fallback, self.num_exits)

    def costs(self, cascade_costs) -> list:
        """Cumulative MACs per exit under this policy, from a ``profiling.CascadeCosts``."""
        return effective_costs(cascade_costs.cumulative, cascade_costs.heads, self.thresholds, self.fallback)

    def to_dict(self) -> dict:
        return {"thresholds": [to_json(t) for t in self.thresholds], "score": self.score, "fallback": self.fallback,
                "source": self.source}


@dataclass
class Calibration:
    """The calibration record an artifact stores (``scan calibrate``): typed access with one default rule.

    ``record`` keeps the whole stored dict (operating points, intervals, ...) for reports."""

    thresholds: list  # K-1 shallow thresholds, None = never fires
    score: str = DEFAULT_SCORE
    fallback: str = DEFAULT_FALLBACK
    settings: dict = field(default_factory=dict)  # the target it was searched for (target_acc, max_drop, ...)
    record: dict = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, record, num_exits: int) -> Optional["Calibration"]:
        """None for a run that was never calibrated (no record, or no thresholds in it)."""
        if not isinstance(record, dict) or not record.get("thresholds"):
            return None
        return cls(thresholds=shallow(record["thresholds"], num_exits),
                   score=record.get("score") or DEFAULT_SCORE,
                   fallback=record.get("fallback") or DEFAULT_FALLBACK,
                   settings={k: v for k, v in (record.get("settings") or {}).items() if v is not None},
                   record=dict(record))

    @property
    def searched(self) -> bool:
        """Whether it was searched for a target (and so can be searched again for another fallback)."""
        return any(k in self.settings for k in ("target_acc", "max_drop", "budget"))

    def policy(self, source: str = "calibration") -> ExitPolicy:
        return ExitPolicy(list(self.thresholds), self.score, self.fallback, source=source,
                          drift_reference=self.record.get("drift_reference"))

    def get(self, key: str, default=None):
        value = self.record.get(key)
        return default if value is None else value

"""The cascade on cached exit outputs: `CascadeData` and routing images through thresholds.

Model of a cascade with ``K`` exits on ``n`` validation images (see docs/ARCHITECTURE.md):
an image leaves at the first exit ``k < K-1`` whose score is ``>=`` ``thresholds[k]``, otherwise
at exit ``K-1``, which always answers. ``+inf`` means "this exit never fires", and such an exit is switched off: when the
data carries the shallow heads' own costs (``heads``), it runs nothing and costs nothing
(``effective_costs``), so switching an exit off is one more choice the search can make. Every cost
the package reports is computed by ``_expected_cost``, so the search and a re-simulation agree to
the bit.

Pure numpy: no torch, no printing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ScanError, UsageError
from ..policy import effective_costs as policy_costs

# Elements of one [thresholds x samples] block of the vectorised inner search (memory bound).
BLOCK_ELEMENTS = 1 << 18
INF = math.inf


class TargetUnreachable(ScanError):
    """No thresholds reach the requested accuracy (or fit the budget) on the validation data."""


@dataclass
class CascadeData:
    """Cached exit outputs of ``n`` validation images at ``K`` exits.

    scores:  [n, K] float, higher = more confident (column K-1 is not used for routing).
    correct: [n, K] bool, whether exit k's answer is right; column K-1 is the answer given when an
             image reaches the end (last exit or ensemble, the caller decides).
    costs:   [K] float, cumulative MACs of answering at exit k with every exit switched on
             (weakly increasing).
    heads:   [K-1] float or None, MACs of each shallow exit's own attention + head. Given, an exit
             whose threshold is inf is switched off and priced at zero (``effective_costs``);
             None (e.g. the ensemble fallback, which needs every head's logits): never switched off.
    """

    scores: np.ndarray
    correct: np.ndarray
    costs: np.ndarray
    heads: np.ndarray | None = None

    def __post_init__(self):
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.correct = np.asarray(self.correct).astype(bool)
        self.costs = np.asarray(self.costs, dtype=np.float64).reshape(-1)
        if self.scores.ndim != 2 or self.scores.shape[0] < 1 or self.scores.shape[1] < 1:
            raise ScanError(f"exit scores must be an [n, K] array with n, K >= 1, got shape {self.scores.shape}")
        if self.correct.shape != self.scores.shape:
            raise ScanError(
                f"exit correctness has shape {self.correct.shape} but scores have {self.scores.shape}: "
                "cache both from the same run"
            )
        if self.costs.shape != (self.scores.shape[1],):
            raise ScanError(f"need one cost per exit ({self.scores.shape[1]}), got {self.costs.shape[0]}")
        if not np.all(np.isfinite(self.costs)) or np.any(self.costs < 0):
            raise ScanError("exit costs must be finite and non-negative")
        if np.any(np.diff(self.costs) < 0):
            raise ScanError(f"exit costs must be cumulative (weakly increasing), got {self.costs.tolist()}")
        if self.heads is not None:
            self.heads = np.asarray(self.heads, dtype=np.float64).reshape(-1)
            if self.heads.shape != (self.K - 1,) or not np.all(np.isfinite(self.heads)) or np.any(self.heads < 0):
                raise ScanError(f"need one finite, non-negative head cost per shallow exit ({self.K - 1})")
            backbone = self.costs.copy()
            backbone[: self.K - 1] -= np.cumsum(self.heads)
            backbone[self.K - 1] -= self.heads.sum()
            if np.any(backbone < -1e-6 * max(1.0, self.costs[-1])) or np.any(np.diff(backbone) < -1e-6 * max(1.0, self.costs[-1])):
                raise ScanError("head costs exceed the cumulative costs they are part of: recount them")
        if not np.isfinite(self.scores[:, :-1]).all():
            raise ScanError("exit scores contain NaN or inf: recompute the cached outputs (a diverged exit head?)")

    @property
    def n(self) -> int:
        return self.scores.shape[0]

    @property
    def K(self) -> int:
        return self.scores.shape[1]

    def subset(self, index) -> "CascadeData":
        return CascadeData(self.scores[index], self.correct[index], self.costs, self.heads)

    def costs_for(self, thresholds) -> np.ndarray:
        """[K] cumulative costs under ``thresholds`` (K-1 shallow values): switched-off exits cost 0."""
        return effective_costs(self.costs, self.heads, thresholds)


def effective_costs(costs, heads, thresholds) -> np.ndarray:
    """``policy.effective_costs`` (the one cost rule) as an array, for the search's numeric thresholds."""
    return np.asarray(policy_costs(costs, heads, thresholds), dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Simulation


def _shallow_thresholds(thresholds, K: int) -> np.ndarray:
    """K-1 shallow thresholds as floats; accepts K-1 values or K values whose last is None."""
    values = list(thresholds)
    if len(values) == K and values[-1] is None:
        values = values[:-1]
    if len(values) != K - 1:
        raise UsageError(f"need {K - 1} thresholds for {K} exits (the last exit always answers), got {len(values)}")
    out = []
    for v in values:
        if v is None:
            raise UsageError("only the last exit's threshold may be empty: use inf for an exit that never fires")
        v = float(v)  # also parses strings such as "inf"
        if math.isnan(v):
            raise UsageError("a threshold is NaN: use inf for an exit that never fires")
        out.append(v)
    return np.asarray(out, dtype=np.float64)


def _route(scores_shallow: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Exit index per (configuration, sample): T is [P, K-1], scores_shallow [n, K-1] -> [P, n]."""
    K1 = scores_shallow.shape[1]
    exit_index = np.full((T.shape[0], scores_shallow.shape[0]), K1, dtype=np.int8 if K1 < 127 else np.int64)
    for k in range(K1 - 1, -1, -1):  # backwards, so the first exit that fires wins
        np.copyto(exit_index, k, where=scores_shallow[None, :, k] >= T[:, k, None])
    return exit_index


def _simulate_many(data: CascadeData, T: np.ndarray):
    """Correct counts [P] and exit counts [P, K] of P threshold vectors T [P, K-1] (chunked)."""
    T = np.asarray(T, dtype=np.float64)
    P, n, K = T.shape[0], data.n, data.K
    n_correct = np.zeros(P, dtype=np.int64)
    exit_counts = np.zeros((P, K), dtype=np.int64)
    shallow = data.scores[:, : K - 1]
    step = max(1, BLOCK_ELEMENTS // n)
    for lo in range(0, P, step):
        ex = _route(shallow, T[lo : lo + step])
        for k in range(K):
            here = ex == k
            exit_counts[lo : lo + step, k] = np.count_nonzero(here, axis=1)
            here &= data.correct[None, :, k]
            n_correct[lo : lo + step] += np.count_nonzero(here, axis=1)
    return n_correct, exit_counts


def _expected_cost(exit_counts: np.ndarray, costs: np.ndarray, n: int):
    """Mean cost per image from per-exit counts. Every reported cost is computed this one way.

    ``costs``: [K], or [P, K] with one cost vector per row of ``exit_counts`` [P, K]."""
    counts = np.asarray(exit_counts)
    costs = np.asarray(costs)
    total = np.zeros(counts.shape[:-1])
    for k in range(counts.shape[-1]):  # a fixed order, so equal counts always give equal floats
        total = total + counts[..., k] * (costs[..., k] if costs.ndim == 2 else costs[k])
    return total / n


def _costs_for_many(data: CascadeData, T: np.ndarray) -> np.ndarray:
    """[P, K] effective costs of P threshold vectors (switched-off exits priced at zero)."""
    T = np.asarray(T, dtype=np.float64)
    if data.heads is None:
        return np.broadcast_to(data.costs, (T.shape[0], data.K))
    return np.stack([effective_costs(data.costs, data.heads, t) for t in T]) if T.shape[0] else np.zeros((0, data.K))


def simulate(data: CascadeData, thresholds):
    """Route every validation image: (exit_index [n] int, correct [n] bool, cost [n] float)."""
    t = _shallow_thresholds(thresholds, data.K)
    exit_index = _route(data.scores[:, : data.K - 1], t[None, :])[0].astype(np.int64)
    correct = data.correct[np.arange(data.n), exit_index]
    return exit_index, correct, data.costs_for(t)[exit_index]


def summarize(data: CascadeData, thresholds) -> dict:
    """accuracy, expected_cost (mean MACs per image) and exit_shares [K] of one threshold vector."""
    exit_index, correct, _ = simulate(data, thresholds)
    counts = np.bincount(exit_index, minlength=data.K)
    return {
        "accuracy": float(correct.sum()) / data.n,
        "expected_cost": float(_expected_cost(counts, data.costs_for(_shallow_thresholds(thresholds, data.K)), data.n)),
        "exit_shares": (counts / data.n).tolist(),
    }

"""Per-exit threshold search on cached exit outputs (pure numpy) and the optional guarantee.

Model of a cascade with ``K`` exits on ``n`` validation images (see docs/ARCHITECTURE.md):
an image leaves at the first exit ``k < K-1`` whose score is ``>=`` ``thresholds[k]``, otherwise
at exit ``K-1``, which always answers. ``+inf`` means "this exit never fires".

``pareto_front`` computes, for every number of correct answers ``c``, the minimum expected cost
of any threshold vector reaching at least ``c`` correct answers; ``calibrate`` picks one point of
it for an accuracy target, an accuracy drop or a cost budget, optionally with a statistical
guarantee (Pareto Testing on top of Learn-then-Test).

Pure numpy: no torch, no printing. matplotlib is imported inside ``plot_front`` only.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ScanError, UsageError

# Sample-evaluations (one sample under one threshold combination) an exact search may spend
# before exits 0..K-3 are restricted to quantile grids. About 1 s on one CPU core.
DEFAULT_MAX_EVALUATIONS = 30_000_000
# Elements of one [thresholds x samples] block of the vectorised inner search (memory bound).
_BLOCK_ELEMENTS = 1 << 18
_INF = math.inf


class TargetUnreachable(ScanError):
    """No thresholds reach the requested accuracy (or fit the budget) on the validation data."""


@dataclass
class CascadeData:
    """Cached exit outputs of ``n`` validation images at ``K`` exits.

    scores:  [n, K] float, higher = more confident (column K-1 is not used for routing).
    correct: [n, K] bool, whether exit k's answer is right; column K-1 is the answer given when an
             image reaches the end (last exit or ensemble, the caller decides).
    costs:   [K] float, cumulative MACs of answering at exit k (weakly increasing).
    """

    scores: np.ndarray
    correct: np.ndarray
    costs: np.ndarray

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
        if not np.isfinite(self.scores[:, :-1]).all():
            raise ScanError("exit scores contain NaN or inf: recompute the cached outputs (a diverged exit head?)")

    @property
    def n(self) -> int:
        return self.scores.shape[0]

    @property
    def K(self) -> int:
        return self.scores.shape[1]

    def subset(self, index) -> "CascadeData":
        return CascadeData(self.scores[index], self.correct[index], self.costs)


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
    step = max(1, _BLOCK_ELEMENTS // n)
    for lo in range(0, P, step):
        ex = _route(shallow, T[lo : lo + step])
        for k in range(K):
            here = ex == k
            exit_counts[lo : lo + step, k] = np.count_nonzero(here, axis=1)
            here &= data.correct[None, :, k]
            n_correct[lo : lo + step] += np.count_nonzero(here, axis=1)
    return n_correct, exit_counts


def _expected_cost(exit_counts: np.ndarray, costs: np.ndarray, n: int):
    """Mean cost per image from per-exit counts. Every reported cost is computed this one way."""
    counts = np.asarray(exit_counts)
    total = np.zeros(counts.shape[:-1])
    for k in range(counts.shape[-1]):  # a fixed order, so equal counts always give equal floats
        total = total + counts[..., k] * costs[k]
    return total / n


def simulate(data: CascadeData, thresholds):
    """Route every validation image: (exit_index [n] int, correct [n] bool, cost [n] float)."""
    t = _shallow_thresholds(thresholds, data.K)
    exit_index = _route(data.scores[:, : data.K - 1], t[None, :])[0].astype(np.int64)
    correct = data.correct[np.arange(data.n), exit_index]
    return exit_index, correct, data.costs[exit_index]


def summarize(data: CascadeData, thresholds) -> dict:
    """accuracy, expected_cost (mean MACs per image) and exit_shares [K] of one threshold vector."""
    exit_index, correct, _ = simulate(data, thresholds)
    counts = np.bincount(exit_index, minlength=data.K)
    return {
        "accuracy": float(correct.sum()) / data.n,
        "expected_cost": float(_expected_cost(counts, data.costs, data.n)),
        "exit_shares": (counts / data.n).tolist(),
    }


# --------------------------------------------------------------------------------------------
# Exact Pareto front (and its gridded, certified variant)


@dataclass
class Front:
    """Accuracy-vs-cost Pareto front over threshold vectors.

    For every target count c in 0..n: ``cost[c]`` is the minimum expected cost (mean MACs per
    image) of a threshold vector with at least c correct answers (``inf`` if none reaches c),
    ``thresholds[c]`` (K-1 floats) achieves it and has ``achieved[c]`` >= c correct answers.
    In grid mode (``exact`` False) ``gap_bound[c]`` bounds ``cost[c] - OPT(c)`` from above.
    """

    n: int
    costs: np.ndarray
    cost: np.ndarray
    achieved: np.ndarray
    thresholds: np.ndarray
    exact: bool
    gap_bound: np.ndarray
    slack: int = 0  # sum over exits 0..K-3 of m_k: correct answers rounding to the grid can lose
    grid_sizes: list = field(default_factory=list)  # candidates per exit 0..K-2 (+inf included)
    evaluations: int = 0

    @property
    def K(self) -> int:
        return self.costs.shape[0]

    @property
    def max_correct(self) -> int:
        return int(np.flatnonzero(np.isfinite(self.cost))[-1])

    def index_for(self, accuracy: float) -> int:
        """Smallest c with c / n >= accuracy (clamped at 0)."""
        return max(0, int(math.ceil(accuracy * self.n - 1e-9)))

    def points(self) -> list[dict]:
        """Pareto-efficient operating points, increasing in accuracy and cost."""
        out, seen = [], set()
        for c in range(self.n + 1):
            if not np.isfinite(self.cost[c]):
                break
            a = int(self.achieved[c])
            if a in seen:
                continue
            seen.add(a)
            out.append(
                {
                    "correct": a,
                    "accuracy": a / self.n,
                    "cost": float(self.cost[c]),
                    "thresholds": self.thresholds[c].tolist(),
                    "gap_bound": float(self.gap_bound[c]),
                }
            )
        return out


def _quantile_grid(column: np.ndarray, wrong: np.ndarray, size: int) -> np.ndarray:
    """At most ``size - 1`` actual score values plus +inf: the lowest score, then quantiles of the
    scores of the samples this exit gets wrong (only those can cost an answer when a threshold is
    rounded down, see ``_grid_slack``, so that is where the grid needs its points)."""
    want = size - 1
    s = np.sort(column[wrong])
    grid = np.array([column.min()])
    q = want - 1
    while s.size and q > 0:
        vals = np.unique(np.append(column.min(), s[np.round(np.linspace(0, s.size - 1, q)).astype(np.int64)]))
        if vals.size > want:
            break
        grid = vals
        if vals.size == want or q >= s.size:
            break
        q += want - vals.size
    return np.append(grid, _INF)


def _grid_slack(column: np.ndarray, wrong: np.ndarray, grid: np.ndarray) -> int:
    """m_k: the most correct answers one rounding-down of an exit-k threshold to the grid can lose.

    A threshold t (a score value) between grid points g < t < g' rounds down to g: the samples
    reaching exit k with g <= s < t now leave at exit k instead of going on, nobody else moves, and
    the cost can only fall (costs are cumulative). Only those of them that exit k gets wrong can
    lose a correct answer. t is at most d*, the largest distinct score below g', so the loss is at
    most #{wrong at k: g <= s < d*} (ties counted), maximised over the grid's intervals.
    """
    values, inverse = np.unique(column, return_inverse=True)
    wrong_per_value = np.bincount(inverse.ravel(), weights=wrong, minlength=values.size).astype(np.int64)
    before = np.concatenate([[0], np.cumsum(wrong_per_value)])  # wrong samples with score < values[i]
    pos = np.searchsorted(values, grid[:-1])  # finite grid points are score values
    nxt = np.append(pos[1:], values.size)  # index of the next grid point (+inf: one past the end)
    last_below = np.maximum(nxt - 1, pos)  # the largest distinct score below the next grid point
    return int(np.max(before[last_below] - before[pos], initial=0))


def _work(scores: np.ndarray, grids: list) -> int:
    """Upper bound on the sample-evaluations of a search over these candidates (K >= 3).

    Each prefix (exits 0..K-4) costs |candidates of exit K-3| x |samples reaching exit K-3|; the
    samples reaching it are at most those with an exit-0 score below exit 0's threshold.
    """
    n = scores.shape[0]
    if len(grids) == 1:
        return grids[0].size * n
    reach0 = int(np.searchsorted(np.sort(scores[:, 0]), grids[0], side="left").sum())
    return reach0 * math.prod(g.size for g in grids[1:])


class _Best:
    """Best total cost per exact correct count, the thresholds achieving it, and work buffers."""

    def __init__(self, n: int, K: int):
        self.total = np.full(n + 1, _INF)
        self.thresholds = np.full((n + 1, max(K - 1, 0)), _INF)
        self._tmp = np.empty(n + 1)
        # Flat buffers reused for every [samples x thresholds] block (no page faults per block).
        self.mask = np.empty(_BLOCK_ELEMENTS, dtype=bool)
        self.count = np.empty(_BLOCK_ELEMENTS, dtype=np.int32)
        self.gain = np.empty(_BLOCK_ELEMENTS, dtype=np.int32)

    def update(self, correct: np.ndarray, total: np.ndarray, thresholds_of):
        """Fold candidate (correct count, total cost) pairs in; thresholds_of(positions) -> [p, K-1]."""
        tmp = self._tmp
        tmp.fill(_INF)
        np.minimum.at(tmp, correct, total)
        improved = tmp < self.total
        if not improved.any():
            return
        hit = np.flatnonzero(improved[correct] & (total == tmp[correct]))
        self.total[improved] = tmp[improved]
        self.thresholds[correct[hit]] = thresholds_of(hit)


def _search_last_two(best, S, C, costs, R, u_cands, c0, tot0, prefix):
    """All (exit K-3, exit K-2) thresholds for the samples R reaching exit K-3, vectorised.

    R is ordered by the exit K-2 score b, descending. ``u_cands`` are exit K-3 thresholds (None when
    K = 2: there is no exit K-3). For a block of u values, ``below[j, g] = a_j < u_g`` marks the
    samples that go on to exit K-2; cumulative sums down R give, for every exit K-2 threshold at
    once (the last sample of each tie group of b), how many of them leave there and how many more
    of them are right than at the last exit. ``c0``/``tot0``: correct answers and total cost of the
    samples that left before exit K-3. Totals are summed exit by exit in index order, exactly as
    ``_expected_cost`` does, so the search and a re-simulation give the same float.
    Returns the number of sample-evaluations.
    """
    K = costs.shape[0]
    m = R.size
    b = S[R, K - 2]
    ends = np.flatnonzero(np.r_[b[1:] != b[:-1], True]) if m else np.zeros(0, dtype=np.int64)
    v_vals = np.append(b[ends], _INF)  # row -1: exit K-2 never fires
    cL = C[R, K - 1].astype(np.int64)
    delta = (C[R, K - 2].astype(np.int32) - cL.astype(np.int32))[:, None]
    prefix = np.asarray(prefix, dtype=np.float64)
    if u_cands is None:  # K == 2: everybody reaches exit K-2 (= exit 0)
        u_cands = np.array([_INF])
        a = np.full(m, -_INF)
        c3 = np.zeros(m, dtype=np.int64)
    else:
        a = S[R, K - 3]
        c3 = C[R, K - 3].astype(np.int64)
    a_order = np.argsort(a, kind="stable")
    a_sorted = a[a_order]
    cum_c3 = np.concatenate([[0], np.cumsum(c3[a_order])])
    cum_cL = np.concatenate([[0], np.cumsum(cL[a_order])])
    a_col = a[:, None]

    def thresholds_of(u, row_of, col_of):
        def build(hit):
            out = np.empty((hit.size, K - 1))
            out[:, : K - 3] = prefix
            if K >= 3:
                out[:, K - 3] = u[col_of(hit)]
            out[:, K - 2] = v_vals[row_of(hit)]
            return out

        return build

    step = max(1, _BLOCK_ELEMENTS // max(m, 1))
    for lo in range(0, u_cands.size, step):
        u = u_cands[lo : lo + step]
        width = u.size
        n_below = np.searchsorted(a_sorted, u, side="left")  # samples with a < u go on to exit K-2
        base = c0 + (cum_c3[-1] - cum_c3[n_below]) + cum_cL[n_below]  # exit K-2 never fires
        before_k2 = tot0 + (m - n_below) * costs[K - 3]  # + 0.0 for K = 2 (no exit K-3): exact
        base_total = before_k2 + n_below * costs[K - 1]
        best.update(base, base_total, thresholds_of(u, lambda h: np.full(h.size, -1), lambda h: h))
        if m == 0:
            continue
        size = m * width
        below = best.mask[:size].reshape(m, width)
        np.less(a_col, u[None, :], out=below)
        fired = best.count[:size].reshape(m, width)
        np.cumsum(below, axis=0, dtype=np.int32, out=fired)
        gain = best.gain[:size].reshape(m, width)
        np.multiply(below, delta, out=gain)
        np.cumsum(gain, axis=0, out=gain)
        gain_at = gain[ends]  # [groups, width]; row r: exit K-2 threshold v_vals[r]
        # Within one column the cost falls as r grows, so only records of the correct count seen
        # from the cheap end can be on the front; the rest are dominated and skipped (the final
        # suffix-minimum over c does not change).
        flipped = gain_at[::-1]
        record = np.empty(flipped.shape, dtype=bool)
        record[0] = True
        np.greater(flipped[1:], np.maximum.accumulate(flipped, axis=0)[:-1], out=record[1:])
        keep = np.flatnonzero(record[::-1])
        rows, cols = np.divmod(keep, width)
        at_k2 = fired[ends[rows], cols]
        correct = base[cols] + gain_at[rows, cols]
        total = (before_k2[cols] + at_k2 * costs[K - 2]) + (n_below[cols] - at_k2) * costs[K - 1]
        best.update(correct, total, thresholds_of(u, lambda h: rows[h], lambda h: cols[h]))
    return u_cands.size * max(m, 1)


def _plan(data: CascadeData, max_evaluations: float):
    """Candidate thresholds of exits 0..K-3: all distinct scores if the search fits the budget,
    else quantile grids of the largest size G that fits (exits with fewer values stay exact)."""
    K = data.K
    S, wrong = data.scores, ~data.correct
    exact = [np.append(np.unique(S[:, k]), _INF) for k in range(K - 2)]
    if _work(S, exact) <= max_evaluations:
        return exact, True

    def grids_of(G):
        return [e if e.size <= G else _quantile_grid(S[:, k], wrong[:, k], G) for k, e in enumerate(exact)]

    lo, hi = 2, max(e.size for e in exact)
    while lo < hi:  # the largest G that fits
        mid = (lo + hi + 1) // 2
        if _work(S, grids_of(mid)) <= max_evaluations:
            lo = mid
        else:
            hi = mid - 1
    return grids_of(lo), False


def _suffix_argmin(values: np.ndarray) -> np.ndarray:
    """src[c] = argmin over c' >= c of values[c'] (ties go to the larger c')."""
    src = np.arange(values.size)
    for c in range(values.size - 2, -1, -1):
        if values[src[c + 1]] <= values[c]:
            src[c] = src[c + 1]
    return src


def pareto_front(data: CascadeData, max_evaluations: float = DEFAULT_MAX_EVALUATIONS) -> Front:
    """The exact accuracy-vs-cost Pareto front over all threshold vectors (see ``Front``).

    Candidates for exit k are its distinct scores plus +inf (any other threshold routes exactly
    like one of them). Exits 0..K-4 are enumerated in a Python loop, exits K-3 and K-2 are
    vectorised (``_search_last_two``): O(prod_{k<=K-3} G_k * n) sample-evaluations (G_k the
    candidates of exit k; ``_work`` counts them, using that only images below exit 0's threshold
    reach the vectorised part), plus O(n log n) per Python iteration; K = 2 is one sort, K = 3
    one vectorised pass. If the count exceeds ``max_evaluations``, exits 0..K-3 use quantile grids
    of the largest size G that fits (exit K-2 stays exact) and the result carries a certified gap:
    rounding an optimal threshold down to the grid loses at most ``slack`` correct answers and
    never adds cost, so OPT(c) >= grid cost at c - slack.
    """
    n, K = data.n, data.K
    S, C, costs = data.scores, data.correct, data.costs
    if K == 1:
        right = int(C[:, 0].sum())
        cost = np.where(np.arange(n + 1) <= right, _expected_cost(np.array([n]), costs, n), _INF)
        return Front(n, costs, cost, np.where(np.isfinite(cost), right, -1), np.zeros((n + 1, 0)),
                     True, np.zeros(n + 1), 0, [], n)
    best = _Best(n, K)
    order_b = np.argsort(-S[:, K - 2], kind="stable")
    evaluations = 0
    if K == 2:
        grids, exact = [], True
        evaluations += _search_last_two(best, S, C, costs, order_b, None, 0, 0.0, ())
    else:
        grids, exact = _plan(data, max_evaluations)
        for prefix in itertools.product(*grids[: K - 3]):
            reach = np.ones(n, dtype=bool)
            c0, tot0 = 0, 0.0
            for k, t in enumerate(prefix):
                fire = reach & (S[:, k] >= t)
                c0 += int(C[fire, k].sum())
                tot0 = tot0 + int(fire.sum()) * costs[k]
                reach &= ~fire
            R = order_b[reach[order_b]]
            u = grids[K - 3]
            if exact:  # only the scores of the samples that get there separate routes
                u = np.append(np.unique(S[R, K - 3]), _INF)
            evaluations += _search_last_two(best, S, C, costs, R, u, c0, tot0, prefix)

    src = _suffix_argmin(best.total)
    found = np.isfinite(best.total[src])
    cost = np.where(found, best.total[src] / n, _INF)
    achieved = np.where(found, src, -1)
    thresholds = best.thresholds[src]
    # Re-simulate a spread of the front's points: the routes must give the same numbers exactly.
    on_front = np.unique(src[found])
    check = on_front[np.unique(np.linspace(0, on_front.size - 1, min(on_front.size, 64)).astype(np.int64))]
    sim_correct, exit_counts = _simulate_many(data, best.thresholds[check])
    if not (np.array_equal(sim_correct, check)
            and np.array_equal(_expected_cost(exit_counts, costs, n), best.total[check] / n)):
        raise AssertionError("threshold search and simulation disagree (a bug in scan_cli.calibration)")

    slack = 0
    if not exact:
        for k, g in enumerate(grids):
            slack += _grid_slack(S[:, k], ~C[:, k], g)
    gap = np.full(n + 1, _INF)
    finite = np.isfinite(cost)
    gap[finite] = cost[finite] - cost[np.maximum(np.flatnonzero(finite) - slack, 0)]
    return Front(n, costs, cost, achieved, thresholds, exact or slack == 0, gap, slack,
                 [g.size for g in grids] + ([] if K < 2 else [int(np.unique(S[:, K - 2]).size + 1)]),
                 int(evaluations))


# --------------------------------------------------------------------------------------------
# Local polish of one grid point (heuristic; it can only lower the cost at a fixed target)


def _pair_search(data: CascadeData, shallow: np.ndarray, k: int, j: int, window: np.ndarray, need: int):
    """Move exits k < j together, every other threshold fixed: exit k over ``window`` (sorted
    finite score values; +inf is always tried too), exit j over all its score values. Returns
    (total cost, thresholds) of the cheapest vector with >= need correct answers, or None.

    Vectorised like ``_search_last_two`` with per-image outcomes for "passes exit k" (a fixed exit
    between k and j, or exit j and what follows it). Only the images whose exit-k score lies inside
    the window pass for some candidates and not for others, so the [images x candidates] matrix
    holds just those (about |window| rows); the others enter as one cumulative sum.
    """
    S, C, costs = data.scores, data.correct, data.costs
    n, K = data.n, data.K
    t = np.asarray(shallow, dtype=np.float64)
    reach = np.ones(n, dtype=bool)
    c0, tot0 = 0, 0.0
    for l in range(k):
        fire = reach & (S[:, l] >= t[l])
        c0 += int(C[fire, l].sum())
        tot0 += int(fire.sum()) * costs[l]
        reach &= ~fire
    R = np.flatnonzero(reach)
    R = R[np.argsort(-S[R, j], kind="stable")]  # positions along R = order of exit-j scores
    m = R.size
    if m == 0:
        return None

    def first_fire(lo, hi):  # first exit in [lo, hi) that fires under t, else hi
        out = np.full(m, hi)
        for l in range(hi - 1, lo - 1, -1):
            out[S[R, l] >= t[l]] = l
        return out

    mid = first_fire(k + 1, j)
    at_j = mid == j
    pass_exit = np.where(at_j, first_fire(j + 1, K - 1), mid)
    pass_c = C[R, pass_exit].astype(np.int64)
    pass_cost = costs[pass_exit]
    dc = np.where(at_j, C[R, j].astype(np.int64) - pass_c, 0)  # firing at j instead of passing it
    dcost = np.where(at_j, costs[j] - pass_cost, 0.0)
    b = S[R, j]
    ends = np.flatnonzero(np.r_[b[1:] != b[:-1], True])
    v_vals = np.append(b[ends], _INF)  # row 0 below means "exit j never fires" (index -1)
    a = S[R, k]
    u = np.append(window, _INF)
    a_order = np.argsort(a, kind="stable")
    a_sorted = a[a_order]
    nb = np.searchsorted(a_sorted, u, side="left")  # images that pass exit k, per candidate
    cum = lambda x: np.concatenate([[0], np.cumsum(x[a_order])])  # noqa: E731
    base_c = c0 + (cum(C[R, k].astype(np.int64))[-1] - cum(C[R, k].astype(np.int64))[nb]) + cum(pass_c)[nb]
    base_cost = tot0 + (m - nb) * costs[k] + cum(pass_cost)[nb]
    # Images passing exit k for every finite candidate, and those that pass for some only.
    always = a < window[0]
    varying = np.flatnonzero(~always & (a < window[-1]))
    gain_c = np.cumsum(np.where(always, dc, 0))[ends]
    gain_cost = np.cumsum(np.where(always, dcost, 0.0))[ends]
    # +inf column: every image passes exit k.
    all_c = np.concatenate([[0], np.cumsum(dc)[ends]])
    all_cost = np.concatenate([[0.0], np.cumsum(dcost)[ends]])
    rows = np.searchsorted(varying, ends, side="right")  # varying images at or before each row
    best = None
    step = max(1, _BLOCK_ELEMENTS // max(ends.size, varying.size, 1))
    for lo in range(0, u.size, step):
        cols = np.arange(lo, min(lo + step, u.size))
        finite = cols < window.size
        passes = a[varying][:, None] < u[cols][None, :]
        vc = np.concatenate([np.zeros((1, cols.size), np.int64), np.cumsum(passes * dc[varying][:, None], axis=0)])
        vcost = np.concatenate([np.zeros((1, cols.size)), np.cumsum(passes * dcost[varying][:, None], axis=0)])
        corr = np.where(finite, gain_c[:, None] + vc[rows], all_c[1:, None])
        cost = np.where(finite, gain_cost[:, None] + vcost[rows], all_cost[1:, None])
        corr = base_c[cols] + np.concatenate([np.zeros((1, cols.size), np.int64), corr])
        cost = base_cost[cols] + np.concatenate([np.zeros((1, cols.size)), cost])
        cost = np.where(corr >= need, cost, _INF)
        r, w = np.unravel_index(np.argmin(cost), cost.shape)
        if np.isfinite(cost[r, w]) and (best is None or cost[r, w] < best[0]):
            out = t.copy()
            out[k] = u[cols[w]]
            out[j] = v_vals[r - 1]
            best = (float(cost[r, w]), out)
    return best


def _polish(data: CascadeData, shallow, need: int, width: int = 256, max_rounds: int = 8):
    """Coordinate-pair descent from a grid solution: every pair of shallow exits (k, j) in turn,
    exit k within ``width`` score values around its threshold (plus +inf), exit j exact; keep a
    move only if it is cheaper and still has >= need correct answers. Stops at a fixed point."""
    K = data.K
    t = np.asarray(shallow, dtype=np.float64).copy()
    values = [np.unique(data.scores[:, k]) for k in range(K - 1)]
    counts = _simulate_many(data, t[None, :])[1][0]
    total = float(_expected_cost(counts, data.costs, 1))
    for _ in range(max_rounds):
        improved = False
        for k in range(K - 2):
            for j in range(k + 1, K - 1):
                pos = np.searchsorted(values[k], t[k])
                window = values[k][max(0, pos - width // 2) : pos + width // 2]
                found = _pair_search(data, t, k, j, window, need)
                if found is not None and found[0] < total * (1 - 1e-12):
                    correct, counts = _simulate_many(data, found[1][None, :])
                    if correct[0] < need or not math.isclose(_expected_cost(counts, data.costs, 1)[0], found[0]):
                        raise AssertionError("pair search and simulation disagree (a bug in scan_cli.calibration)")
                    total, t = found
                    improved = True
        if not improved:
            break
    return t


# --------------------------------------------------------------------------------------------
# Guarantee: exact binomial tail, Pareto Testing with fixed-sequence testing


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed in log space (no scipy needed)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    i = np.arange(k + 1)
    log_choose = math.lgamma(n + 1) - np.array([math.lgamma(j + 1) + math.lgamma(n - j + 1) for j in i])
    logs = log_choose + i * math.log(p) + (n - i) * math.log1p(-p)
    top = logs.max()
    return float(min(1.0, math.exp(top) * np.exp(logs - top).sum()))


def _certify(data: CascadeData, confidence: float, seed: int, max_evaluations: float, target_acc=None, max_drop=None):
    """Pareto Testing: optimise on one half, fixed-sequence binomial tests on the other half.

    The target is ``target_acc``, or (``max_drop``) the last exit's accuracy on the optimisation
    half minus the drop, so that it does not depend on the testing half.

    Returns (thresholds [K-1], guarantee dict). Every configuration rejected by the sequence has
    true accuracy >= target simultaneously with probability >= confidence (family-wise error
    control of fixed-sequence testing), so the cheapest of them may be chosen.
    """
    n = data.n
    if n < 4:
        raise UsageError(f"--confidence needs more validation images (got {n}); pass at least a few hundred")
    perm = np.random.default_rng(seed).permutation(n)
    opt_idx, test_idx = perm[: n // 2], perm[n // 2 :]
    opt, test = data.subset(opt_idx), data.subset(test_idx)
    target = target_acc if max_drop is None else float(opt.correct[:, -1].mean()) - max_drop
    front = pareto_front(opt, max_evaluations)
    configs, seen = [], set()
    for point in reversed(front.points()):  # most to least accurate
        key = tuple(point["thresholds"])
        if key not in seen:
            seen.add(key)
            configs.append(point["thresholds"])
    T = np.asarray(configs, dtype=np.float64).reshape(len(configs), data.K - 1)
    test_correct, _ = _simulate_many(test, T)
    delta = 1.0 - confidence
    n_test = test.n
    rejected, p_values = [], []
    for i in range(len(configs)):
        errors = n_test - int(test_correct[i])
        p = 0.0 if target <= 0 else binom_cdf(errors, n_test, 1.0 - target)
        if p > delta:
            break
        rejected.append(i)
        p_values.append(p)
    if not rejected:
        best_test = int(test_correct[0]) / n_test if len(configs) else 0.0
        raise TargetUnreachable(
            f"no thresholds can be certified at accuracy >= {target:.4f} with confidence {confidence:g}: "
            f"the most accurate configuration scored {best_test:.4f} on the {n_test} held-out validation images; "
            "use more validation images, a lower --target-acc or a lower --confidence"
        )
    _, counts = _simulate_many(data, T[rejected])
    full_cost = _expected_cost(counts, data.costs, n)
    pick = int(np.argmin(full_cost))  # ties -> the first, i.e. the more accurate configuration
    i = rejected[pick]
    guarantee = {
        "confidence": confidence,
        "accuracy_bound": target,
        "statement": (
            f"with probability >= {confidence:g} over the draw of the validation data, the chosen "
            f"thresholds have accuracy >= {target:.4f} on future data from the same distribution"
        ),
        "assumptions": [
            "validation images and future images are i.i.d. (exchangeable) draws from the same distribution",
            "the validation images were not used to train the model or to pick the target",
            "the bound is on the expected accuracy; a finite test set's accuracy fluctuates around it",
        ],
        "method": "Pareto Testing (Laufer-Goldshtein et al., 2023) with Learn-then-Test fixed-sequence "
        "binomial tests (Angelopoulos et al., 2021)",
        "seed": seed,
        "n_optimise": opt.n,
        "n_test": n_test,
        "configurations": len(configs),
        "certified": len(rejected),
        "test_accuracy": int(test_correct[i]) / n_test,
        "p_value": p_values[pick],
    }
    if max_drop is not None:
        guarantee["reference_accuracy"] = target + max_drop
    return T[i], guarantee


# --------------------------------------------------------------------------------------------
# Calibration


@dataclass
class CalibrationResult:
    thresholds: list  # K entries: shallow thresholds (float, inf = never fires), last None
    # (json.dumps writes inf as Infinity, which json.loads reads back; there is no inf in strict JSON)
    val_accuracy: float
    expected_cost: float  # mean MACs per image on the validation data
    speedup: float  # backbone_cost / expected_cost
    exit_shares: list
    backbone_cost: float
    n_val: int
    target: dict
    method: dict
    pareto: list
    guarantee: dict | None = None
    front: Front | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "thresholds": list(self.thresholds),
            "val_accuracy": self.val_accuracy,
            "expected_cost": self.expected_cost,
            "cost_fraction": self.expected_cost / self.backbone_cost,
            "speedup": self.speedup,
            "exit_shares": list(self.exit_shares),
            "backbone_cost": self.backbone_cost,
            "n_val": self.n_val,
            "target": dict(self.target),
            "method": dict(self.method),
            "pareto": [dict(p, thresholds=list(p["thresholds"])) for p in self.pareto],
            "guarantee": None if self.guarantee is None else dict(self.guarantee),
        }


def _operating_point(data, shallow, backbone_cost, label=None) -> dict:
    s = summarize(data, shallow)
    return {
        "label": label,
        "accuracy": s["accuracy"],
        "cost": s["expected_cost"],  # mean MACs per image
        "cost_fraction": s["expected_cost"] / backbone_cost,
        "speedup": backbone_cost / s["expected_cost"] if s["expected_cost"] > 0 else _INF,
        "thresholds": [float(t) for t in shallow] + [None],
    }


def _summary_points(data, front, chosen, backbone_cost, count) -> list:
    """~count operating points spread over the front's accuracy range, plus chosen and backbone."""
    points = front.points()
    accs = np.array([p["accuracy"] for p in points])
    picks = []
    for level in np.linspace(accs[0], accs[-1], max(count - 2, 2)):
        picks.append(points[int(np.searchsorted(accs, level - 1e-12))]["thresholds"])
    last = tuple([_INF] * (data.K - 1))
    keys = {tuple(float(t) for t in chosen), last}
    out = [_operating_point(data, chosen, backbone_cost, "chosen")]
    if len(keys) == 2:
        out.append(_operating_point(data, last, backbone_cost, "last exit only"))
    for t in picks:
        if tuple(t) not in keys:
            keys.add(tuple(t))
            out.append(_operating_point(data, t, backbone_cost))
    return sorted(out, key=lambda p: (p["cost"], p["accuracy"]))


def calibrate(
    data: CascadeData,
    *,
    target_acc: float | None = None,
    max_drop: float | None = None,
    budget: float | None = None,
    confidence: float | None = None,
    seed: int = 0,
    backbone_cost: float | None = None,
    max_evaluations: float = DEFAULT_MAX_EVALUATIONS,
    n_points: int = 7,
) -> CalibrationResult:
    """Pick per-exit thresholds on validation outputs.

    Exactly one of: ``target_acc`` (cheapest thresholds with validation accuracy >= target),
    ``max_drop`` (target = accuracy of always answering at exit K-1, minus max_drop), ``budget``
    (most accurate thresholds with expected cost <= budget * backbone_cost). ``backbone_cost`` is
    the plain backbone's MACs (default: costs[K-1]). ``confidence`` (accuracy targets only)
    certifies the target on future data instead of only on validation (see ``_certify``).
    """
    if sum(v is not None for v in (target_acc, max_drop, budget)) != 1:
        raise UsageError("give exactly one of --target-acc, --max-drop or --budget")
    if target_acc is not None and not (0.0 < target_acc <= 1.0):
        raise UsageError(f"--target-acc must be an accuracy in (0, 1], got {target_acc}")
    if max_drop is not None and not (0.0 <= max_drop < 1.0):
        raise UsageError(f"--max-drop must be an accuracy drop in [0, 1), got {max_drop}")
    if budget is not None and not budget > 0:
        raise UsageError(f"--budget must be a positive fraction of the backbone's MACs, got {budget}")
    if confidence is not None:
        if budget is not None:
            raise UsageError("--confidence certifies an accuracy target: use it with --target-acc or --max-drop")
        if not (0.0 < confidence < 1.0):
            raise UsageError(f"--confidence must be in (0, 1), e.g. 0.95, got {confidence}")
    backbone_cost = float(data.costs[-1] if backbone_cost is None else backbone_cost)
    if not backbone_cost > 0:
        raise UsageError(f"the backbone cost must be positive, got {backbone_cost}")
    n = data.n
    reference = float(data.correct[:, -1].mean())
    if budget is not None:
        target = {"mode": "budget", "budget": budget, "cost_limit": budget * backbone_cost}
    elif max_drop is not None:
        target = {"mode": "max_drop", "max_drop": max_drop, "reference_accuracy": reference,
                  "accuracy_target": reference - max_drop}
    else:
        target = {"mode": "target_acc", "accuracy_target": target_acc}

    guarantee = None
    front = pareto_front(data, max_evaluations)
    best_c = front.max_correct
    if confidence is not None:
        shallow, guarantee = _certify(data, confidence, seed, max_evaluations, target_acc, max_drop)
        target["accuracy_target"] = guarantee["accuracy_bound"]
        if max_drop is not None:
            target["reference_accuracy"] = guarantee["reference_accuracy"]
        c_index = None
    elif budget is not None:
        limit = budget * backbone_cost * (1 + 1e-12)
        fits = np.flatnonzero(front.cost <= limit)
        if fits.size == 0:
            raise TargetUnreachable(
                f"no thresholds fit a budget of {budget:g} x the backbone's MACs: the cheapest (every image "
                f"leaves at exit 1) costs {front.cost[0] / backbone_cost:.4f} x; raise --budget"
            )
        c_index = int(fits[-1])
    else:
        goal = target["accuracy_target"]
        c_index = front.index_for(goal)
        if c_index > best_c:
            grid_note = "" if front.exact else (
                f" (grid search: the exact best may be up to {front.slack / n:.4f} higher; raise max_evaluations)"
            )
            raise TargetUnreachable(
                f"accuracy {goal:.4f} is not reachable on the {n} validation images: the best attainable is "
                f"{best_c / n:.4f} at {front.cost[best_c] / backbone_cost:.4f} x the backbone's MACs{grid_note}; "
                "lower --target-acc"
            )
    method = {"search": "exact" if front.exact else "grid", "evaluations": front.evaluations,
              "candidates_per_exit": front.grid_sizes}
    if c_index is not None:
        shallow = front.thresholds[c_index]
        gap = float(front.gap_bound[c_index])  # how far above the optimum the cost can be (0 when exact)
        if not front.exact and budget is None:
            # Grid point -> local pair descent with exact thresholds; the certificate still holds:
            # OPT(c) >= grid cost at c - slack, and polishing only lowers the cost.
            shallow = _polish(data, shallow, c_index, width=int(np.clip(max_evaluations // (4 * n), 128, 4096)))
            method["grid_cost"] = float(front.cost[c_index])
            polished = summarize(data, shallow)["expected_cost"]
            gap = max(0.0, polished - float(front.cost[max(c_index - front.slack, 0)]))
        method["gap_bound"] = gap
        method["gap_bound_fraction"] = gap / backbone_cost
    point = summarize(data, shallow)
    if not front.exact:
        method["rounding_loss_bound"] = front.slack
        if budget is not None:  # the optimum within the budget is at most this much more accurate
            method["accuracy_gap_bound"] = front.slack / n
    return CalibrationResult(
        thresholds=[float(t) for t in shallow] + [None],
        val_accuracy=point["accuracy"],
        expected_cost=point["expected_cost"],
        speedup=backbone_cost / point["expected_cost"] if point["expected_cost"] > 0 else _INF,
        exit_shares=point["exit_shares"],
        backbone_cost=backbone_cost,
        n_val=n,
        target=target,
        method=method,
        pareto=_summary_points(data, front, shallow, backbone_cost, n_points),
        guarantee=guarantee,
        front=front,
    )


# --------------------------------------------------------------------------------------------
# Plot


def plot_front(result_or_front, path, chosen=None, backbone_cost: float | None = None) -> Path:
    """Accuracy vs expected MACs (fraction of the backbone's) with the chosen point marked.

    ``chosen`` is (cost_fraction, accuracy); for a CalibrationResult it defaults to its own point.
    Uses matplotlib's Agg canvas directly (no global backend switch). The image is written
    atomically (temporary file, then os.replace). Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    result = result_or_front if isinstance(result_or_front, CalibrationResult) else None
    front = result.front if result is not None else result_or_front
    if result is not None:
        backbone_cost = result.backbone_cost
        if chosen is None:
            chosen = (result.expected_cost / backbone_cost, result.val_accuracy)
    if backbone_cost is None:
        backbone_cost = float(front.costs[-1])
    points = front.points()
    fig = Figure(figsize=(6, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.step([p["cost"] / backbone_cost for p in points], [p["accuracy"] for p in points],
            where="post", color="tab:blue", lw=1.2, label="Pareto front (validation)")
    if result is not None:
        others = [p for p in result.pareto if p["label"] is None]
        ax.scatter([p["cost_fraction"] for p in others], [p["accuracy"] for p in others], s=18,
                   color="tab:gray", zorder=3, label="operating points")
        last = [p for p in result.pareto if p["label"] == "last exit only"]
        ax.scatter([p["cost_fraction"] for p in last], [p["accuracy"] for p in last], marker="s", s=30,
                   color="black", zorder=3, label="last exit only")
    if chosen is not None:
        ax.scatter([chosen[0]], [chosen[1]], marker="*", s=180, color="tab:red", zorder=4, label="chosen")
    ax.set_xlabel("expected MACs / backbone MACs")
    ax.set_ylabel("validation accuracy")
    if front.exact:
        kind = "exact"
    elif result is not None and "gap_bound_fraction" in result.method:
        kind = f"grid, chosen point within {result.method['gap_bound_fraction']:.3g} x backbone of optimal"
    else:
        kind = f"grid, up to {front.slack} answers lost to rounding"
    ax.set_title(f"accuracy vs cost, {front.n} images ({kind})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format=(path.suffix.lstrip(".") or "png"), dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

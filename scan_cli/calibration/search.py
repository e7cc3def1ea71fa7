"""Threshold search: the exact accuracy-vs-cost Pareto front, its gridded variant with a
certified gap, and a local polish of a grid point.

``pareto_front`` computes, for every number of correct answers ``c``, the minimum expected cost
of any threshold vector reaching at least ``c`` correct answers (see ``cascade.py`` for the
cascade model). Above ``DEFAULT_MAX_EVALUATIONS`` the shallow exits use quantile grids and the
front carries a certified bound on how far above the optimum it can be.

Pure numpy: no torch, no printing.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from .cascade import BLOCK_ELEMENTS, INF, CascadeData, _expected_cost, _simulate_many, summarize

# Sample-evaluations (one sample under one threshold combination) an exact search may spend
# before exits 0..K-3 are restricted to quantile grids. About 1 s on one CPU core.
DEFAULT_MAX_EVALUATIONS = 30_000_000


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
    return np.append(grid, INF)


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
        self.total = np.full(n + 1, INF)
        self.thresholds = np.full((n + 1, max(K - 1, 0)), INF)
        self._tmp = np.empty(n + 1)
        # Flat buffers reused for every [samples x thresholds] block (no page faults per block).
        self.mask = np.empty(BLOCK_ELEMENTS, dtype=bool)
        self.count = np.empty(BLOCK_ELEMENTS, dtype=np.int32)
        self.gain = np.empty(BLOCK_ELEMENTS, dtype=np.int32)

    def update(self, correct: np.ndarray, total: np.ndarray, thresholds_of):
        """Fold candidate (correct count, total cost) pairs in; thresholds_of(positions) -> [p, K-1]."""
        tmp = self._tmp
        tmp.fill(INF)
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
    v_vals = np.append(b[ends], INF)  # row -1: exit K-2 never fires
    cL = C[R, K - 1].astype(np.int64)
    delta = (C[R, K - 2].astype(np.int32) - cL.astype(np.int32))[:, None]
    prefix = np.asarray(prefix, dtype=np.float64)
    if u_cands is None:  # K == 2: everybody reaches exit K-2 (= exit 0)
        u_cands = np.array([INF])
        a = np.full(m, -INF)
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

    step = max(1, BLOCK_ELEMENTS // max(m, 1))
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
    exact = [np.append(np.unique(S[:, k]), INF) for k in range(K - 2)]
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
    """The accuracy-vs-cost Pareto front over all threshold vectors (see ``Front``), switching exits
    off included when ``data.heads`` prices them.

    A switched-off exit (threshold inf) runs nothing, which is the same as a cascade without it: so
    the front is the pointwise minimum of the fronts of the 2^(K-1) cascades made of each subset of
    the shallow exits (each with its own cumulative costs), the winner's thresholds mapped back with
    inf for the exits it leaves out. Without ``heads`` every exit's head is paid for (the ensemble
    fallback needs them all) and only the full cascade is searched.
    """
    if data.heads is None or data.K == 1:
        return _fixed_cost_front(data, max_evaluations)
    n, K = data.n, data.K
    fronts = []
    # fewest exits first: on equal cost the cascade that runs less wins
    for mask in sorted(itertools.product((False, True), repeat=K - 1), key=lambda m: (sum(m), m)):
        cols = [k for k in range(K - 1) if mask[k]] + [K - 1]
        shallow = [0.0 if on else INF for on in mask]
        sub = CascadeData(data.scores[:, cols], data.correct[:, cols], data.costs_for(shallow)[cols])
        fronts.append((cols, _fixed_cost_front(sub, max_evaluations)))  # the smaller cascades are cheap
    costs = np.stack([f.cost for _, f in fronts])  # [subsets, n + 1]
    pick = np.argmin(costs, axis=0)  # ties -> the first, i.e. the fewest exits
    cost = costs[pick, np.arange(n + 1)]
    achieved = np.full(n + 1, -1, dtype=np.int64)
    thresholds = np.full((n + 1, K - 1), INF)
    lower = np.full(n + 1, INF)  # a lower bound on the optimum: min over subsets of (cost - gap)
    for i, (cols, f) in enumerate(fronts):
        here = pick == i
        achieved[here] = f.achieved[here]
        for j, k in enumerate(cols[:-1]):
            thresholds[here, k] = f.thresholds[here, j]
        finite = np.isfinite(f.cost)
        bound = np.full(n + 1, INF)
        bound[finite] = f.cost[finite] - f.gap_bound[finite]
        lower = np.minimum(lower, bound)
    gap = np.full(n + 1, INF)
    finite = np.isfinite(cost)
    gap[finite] = np.maximum(0.0, cost[finite] - lower[finite])
    exact = all(f.exact for _, f in fronts)
    gap[np.isfinite(cost) & exact] = 0.0
    front = Front(n, data.costs, cost, achieved, thresholds, exact, gap, max(f.slack for _, f in fronts),
                  fronts[-1][1].grid_sizes, int(sum(f.evaluations for _, f in fronts)))
    # the routes and the cost rule must give the same numbers exactly
    on = np.flatnonzero(np.isfinite(cost))
    for c in on[np.unique(np.linspace(0, on.size - 1, min(on.size, 32)).astype(np.int64))]:
        sim = summarize(data, thresholds[c])
        if round(sim["accuracy"] * n) != achieved[c] or sim["expected_cost"] != cost[c]:
            raise AssertionError("threshold search and simulation disagree (a bug in scan_cli.calibration)")
    return front


def _fixed_cost_front(data: CascadeData, max_evaluations: float) -> Front:
    """The exact accuracy-vs-cost Pareto front with every exit's head paid for (``data.costs``).

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
        cost = np.where(np.arange(n + 1) <= right, _expected_cost(np.array([n]), costs, n), INF)
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
                u = np.append(np.unique(S[R, K - 3]), INF)
            evaluations += _search_last_two(best, S, C, costs, R, u, c0, tot0, prefix)

    src = _suffix_argmin(best.total)
    found = np.isfinite(best.total[src])
    cost = np.where(found, best.total[src] / n, INF)
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
    gap = np.full(n + 1, INF)
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
    v_vals = np.append(b[ends], INF)  # row 0 below means "exit j never fires" (index -1)
    a = S[R, k]
    u = np.append(window, INF)
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
    step = max(1, BLOCK_ELEMENTS // max(ends.size, varying.size, 1))
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
        cost = np.where(corr >= need, cost, INF)
        r, w = np.unravel_index(np.argmin(cost), cost.shape)
        if np.isfinite(cost[r, w]) and (best is None or cost[r, w] < best[0]):
            out = t.copy()
            out[k] = u[cols[w]]
            out[j] = v_vals[r - 1]
            best = (float(cost[r, w]), out)
    return best


def _polish(data: CascadeData, shallow, need: int, width: int = 256, max_rounds: int = 8):
    """``_polish_fixed`` within the cascade of the exits ``shallow`` keeps switched on (with
    ``data.heads``, an inf threshold switches its exit off; polishing never switches one back on)."""
    shallow = np.asarray(shallow, dtype=np.float64)
    if data.heads is None:
        return _polish_fixed(data, shallow, need, width, max_rounds)
    K = data.K
    on = [k for k in range(K - 1) if np.isfinite(shallow[k])]
    cols = on + [K - 1]
    sub = CascadeData(data.scores[:, cols], data.correct[:, cols], data.costs_for(shallow)[cols])
    out = np.full(K - 1, INF)
    out[on] = _polish_fixed(sub, shallow[on], need, width, max_rounds) if on else []
    return out


def _polish_fixed(data: CascadeData, shallow, need: int, width: int = 256, max_rounds: int = 8):
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

"""The drift alarm: does what `scan predict` saw look like what calibration saw?

Calibration stores a *reference* next to its thresholds (``reference``): for the validation images
under the chosen thresholds, how many left at each exit, and for each exit a histogram of the score
they were answered with (bins at the validation quantiles of that exit). `scan predict` puts its
own images into the same categories (exit, score bin) — both engines already report each image's
exit and answering score, so nothing else is needed — and ``check`` compares the two samples.

The test (``check``), both two-sample (the reference has only hundreds of images: its own sampling
noise is in the statistic): Pearson's chi-square of homogeneity on the exit counts, and the
Mann-Whitney rank-sum test on the (exit, score bin) categories ordered from easy (first exit,
highest score) to hard (last exit, lowest score), which catches "the images got harder (or easier)"
with one degree of freedom. Bonferroni: the alarm fires when min(p) < alpha / 2, so on images
exchangeable with the validation images it fires with probability <= alpha (0.01 by default;
asymptotic, measured 0.5-1.1 % in tests/test_drift.py). For the chi-square, adjacent exits are
merged, using the reference counts and the number of predicted images only, until each expects
>= 5 images in both samples. Below ``MIN_IMAGES`` predicted images nothing is tested ("too few
images").

Pure numpy (no torch, no printing).
"""

from __future__ import annotations

import math

import numpy as np

from ..scoring import confidence

ALPHA = 0.01
MIN_IMAGES = 50  # below this a call is too small to test (and `--drift off` is the switch for it)
MAX_BINS = 8  # score bins per exit
MIN_PER_BIN = 10  # reference images per score bin at least
MIN_EXPECTED = 5.0  # images a merged category expects in each sample
MIN_REF_GROUP = 10  # reference images per merged category at least: a small reference is the noisier sample
EDGE_GRID = 1e-4  # bin edges on this grid, kept clear of reference scores: float rounding that
# differs between engines (e.g. a score of exactly 1.0 vs 0.99999994) never moves an image across one
VERSION = 1


# -- the reference, at calibration -----------------------------------------------------------------
def route(scores, thresholds) -> np.ndarray:
    """Exit index per image: the first shallow exit whose score >= its threshold, else the last.
    ``scores`` [n, K]; ``thresholds`` K-1 (or K) values, None/inf = never fires."""
    scores = np.asarray(scores)
    n, K = scores.shape
    out = np.full(n, K - 1, dtype=np.int64)
    undecided = np.ones(n, dtype=bool)
    for k in range(K - 1):
        t = thresholds[k] if k < len(thresholds) else None
        if t is None or t == math.inf:
            continue
        fire = undecided & (scores[:, k] >= t)
        out[fire] = k
        undecided &= ~fire
    return out


def _shallow(thresholds, num_exits: int) -> list:
    values = list(thresholds or [])[: num_exits - 1]
    values += [None] * (num_exits - 1 - len(values))
    return [None if t is None or float(t) == math.inf else float(t) for t in values]


def _edges(values: np.ndarray) -> list:
    """Interior bin edges at the quantiles of ``values``, on EDGE_GRID and clear of every value."""
    bins = min(MAX_BINS, len(values) // MIN_PER_BIN)
    if bins < 2:
        return []
    candidates = np.round(np.quantile(values, np.arange(1, bins) / bins) / EDGE_GRID) * EDGE_GRID
    edges = []
    for e in np.unique(candidates):
        if np.min(np.abs(values - e)) > EDGE_GRID / 10:
            edges.append(float(e))
    return edges


def reference(exit_index, answer_score, num_exits: int, thresholds, score: str, fallback: str) -> dict:
    """What calibration saw: per exit the image count and a histogram of the answering score."""
    exit_index = np.asarray(exit_index, dtype=np.int64)
    answer_score = np.asarray(answer_score, dtype=np.float64)
    edges, counts = [], []
    for k in range(num_exits):
        s = answer_score[exit_index == k]
        e = _edges(s) if len(s) else []
        edges.append(e)
        counts.append(np.bincount(np.searchsorted(e, s, side="right"), minlength=len(e) + 1).astype(int).tolist()
                      if len(s) else [0])
    return {
        "version": VERSION, "n": int(len(exit_index)),
        "thresholds": _shallow(thresholds, num_exits), "score": score, "fallback": fallback,
        "exit_counts": np.bincount(exit_index, minlength=num_exits).astype(int).tolist(),
        "score_edges": edges, "score_counts": counts,
        "median_score": float(np.median(answer_score)) if len(answer_score) else None,
    }


def reference_problem(ref, num_exits: int):
    """Why ``ref`` is not a usable reference for a ``num_exits`` model (None when it is): a reference
    read from an export folder is untrusted input, checked before the test uses it."""
    def counts(xs):
        return isinstance(xs, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in xs)

    def scores(xs):
        return isinstance(xs, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                            and math.isfinite(x) for x in xs) and xs == sorted(xs)

    if not isinstance(ref, dict):
        return "is not an object"
    if ref.get("version") != VERSION:
        return f"has version {str(ref.get('version'))[:20]}, not {VERSION}"
    exit_counts, edges, hist = ref.get("exit_counts"), ref.get("score_edges"), ref.get("score_counts")
    if not (counts(exit_counts) and len(exit_counts) == num_exits and sum(exit_counts) > 0):
        return f"exit_counts is not {num_exits} counts"
    if not (isinstance(edges, list) and isinstance(hist, list) and len(edges) == len(hist) == num_exits):
        return f"score_edges / score_counts do not have {num_exits} entries"
    for k in range(num_exits):
        if not (scores(edges[k]) and counts(hist[k]) and len(hist[k]) == len(edges[k]) + 1
                and sum(hist[k]) == exit_counts[k]):
            return f"the score histogram of exit {k + 1} is damaged"
    if not (isinstance(ref.get("score"), str) and isinstance(ref.get("fallback"), str)
            and isinstance(ref.get("thresholds"), list) and isinstance(ref.get("n"), int)):
        return "misses score, fallback, thresholds or n"
    return None


def reference_from_logits(logits, thresholds, score: str = "max_softmax", fallback: str = "last") -> dict:
    """The reference from validation logits [n, K, C], scored as the engines score at predict time."""

    logits = np.asarray(logits)
    n, K, _ = logits.shape
    scores = np.stack([confidence(logits[:, k], score) for k in range(K)], axis=1)
    exits = route(scores, _shallow(thresholds, K))
    final = confidence(logits.mean(axis=1, dtype=np.float32), score) if fallback == "ensemble" else scores[:, K - 1]
    answer = np.where(exits == K - 1, final, scores[np.arange(n), exits])
    return reference(exits, answer, K, thresholds, score, fallback)


# -- the test ---------------------------------------------------------------------------------------
def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi-square with integer ``df`` (closed forms; no scipy)."""
    if df < 1:
        return 1.0
    if x <= 0:
        return 1.0
    h = x / 2.0
    if df % 2 == 0:
        logs = [-h + i * math.log(h) - math.lgamma(i + 1) for i in range(df // 2)]
        head = 0.0
    else:
        logs = [-h + (i - 0.5) * math.log(h) - math.lgamma(i + 0.5) for i in range(1, (df + 1) // 2)]
        head = math.erfc(math.sqrt(h))
    top = max(logs) if logs else 0.0
    return min(1.0, head + (math.exp(top) * sum(math.exp(v - top) for v in logs) if logs else 0.0))


def merge_groups(ref_counts, need: float) -> list:
    """Adjacent categories merged left to right until each group holds >= ``need`` reference images
    (a short tail joins the last group). Depends on the reference only, so the test stays exact."""
    groups, current, total = [], [], 0
    for i, r in enumerate(ref_counts):
        current.append(i)
        total += r
        if total >= need:
            groups.append(current)
            current, total = [], 0
    if current:
        if groups:
            groups[-1].extend(current)
        else:
            groups.append(current)
    return groups


def two_sample_chi2(ref_counts, obs_counts) -> tuple:
    """(statistic, df, p) of Pearson's chi-square test that two count vectors share one distribution.
    Categories are merged first so each expects >= MIN_EXPECTED images in both samples."""
    ref = np.asarray(ref_counts, dtype=float)
    obs = np.asarray(obs_counts, dtype=float)
    n, m = ref.sum(), obs.sum()
    if n == 0 or m == 0:
        return 0.0, 0, 1.0
    groups = merge_groups(ref, max(MIN_REF_GROUP, MIN_EXPECTED * n / m))
    R = np.array([ref[g].sum() for g in groups])
    O = np.array([obs[g].sum() for g in groups])
    keep = (R + O) > 0
    R, O = R[keep], O[keep]
    if len(R) < 2:
        return 0.0, 0, 1.0
    col = R + O
    e_r, e_o = n * col / (n + m), m * col / (n + m)
    stat = float(((R - e_r) ** 2 / e_r).sum() + ((O - e_o) ** 2 / e_o).sum())
    df = len(R) - 1
    return stat, df, chi2_sf(stat, df)


def rank_sum(ref_counts, obs_counts) -> tuple:
    """(z, p) of the Mann-Whitney rank-sum test on ordered categories (midranks, tie-corrected
    variance): z > 0 when the predicted images sit later in the order than the reference."""
    ref = np.asarray(ref_counts, dtype=float)
    obs = np.asarray(obs_counts, dtype=float)
    n, m = ref.sum(), obs.sum()
    N = n + m
    t = ref + obs
    if n == 0 or m == 0 or N < 2:
        return 0.0, 1.0
    midrank = np.cumsum(t) - t + (t + 1) / 2
    var = n * m / 12 * (N + 1 - ((t ** 3 - t).sum()) / (N * (N - 1)))
    if var <= 0:
        return 0.0, 1.0
    z = float(((obs * midrank).sum() - m * (N + 1) / 2) / math.sqrt(var))
    return z, math.erfc(abs(z) / math.sqrt(2))


def categorize(exit_index, answer_score, ref: dict) -> tuple:
    """(exit counts, flattened (exit, score bin) counts) of predicted images, in the reference's bins."""
    exit_index = np.asarray(exit_index, dtype=np.int64)
    answer_score = np.asarray(answer_score, dtype=np.float64)
    K = len(ref["exit_counts"])
    joint = []
    for k in range(K):
        e = ref["score_edges"][k]
        s = answer_score[exit_index == k]
        joint.extend(np.bincount(np.searchsorted(e, s, side="right"), minlength=len(e) + 1).tolist())
    return np.bincount(exit_index, minlength=K).tolist(), joint


def _ease_order(joint: list, ref: dict) -> list:
    """(exit, score bin) counts from easiest (first exit, highest score) to hardest (last exit, lowest)."""
    out, i = [], 0
    for counts in ref["score_counts"]:
        out.extend(reversed(joint[i:i + len(counts)]))
        i += len(counts)
    return out


def _same_policy(ref: dict, thresholds, score: str, fallback: str) -> bool:
    K = len(ref["exit_counts"])
    mine, theirs = _shallow(thresholds, K), ref["thresholds"]
    same_t = all((a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12))
                 for a, b in zip(mine, theirs))
    return same_t and score == ref.get("score") and fallback == ref.get("fallback")


def check(exit_index, answer_score, ref, *, thresholds, score: str, fallback: str, alpha: float = ALPHA,
          min_images: int = MIN_IMAGES) -> dict:
    """The drift object `scan predict --json` reports (``fired`` is always there)."""
    if not ref or ref.get("version") != VERSION:
        return {"status": "no reference", "fired": False,
                "reason": "the calibration stores no reference for the drift check: run 'scan calibrate' again"}
    problem = reference_problem(ref, len(ref.get("exit_counts") or []) or 1)
    if problem:
        return {"status": "no reference", "fired": False,
                "reason": f"the stored drift reference {problem}: run 'scan calibrate' again"}
    if not _same_policy(ref, thresholds, score, fallback):
        return {"status": "no reference", "fired": False,
                "reason": "these thresholds (score, fallback) are not the ones calibration saw"}
    m = int(len(exit_index))
    if m < min_images:
        return {"status": "too few images", "fired": False, "n": m, "min_images": min_images}
    exits, joint = categorize(exit_index, answer_score, ref)
    ref_joint = [c for counts in ref["score_counts"] for c in counts]
    stat, df, p = two_sample_chi2(ref["exit_counts"], exits)
    tests = {"exit_shares": {"statistic": stat, "df": df, "p_value": p}}
    z, p = rank_sum(_ease_order(ref_joint, ref), _ease_order(joint, ref))
    tests["ease"] = {"statistic": z, "df": None, "p_value": p}
    worst = min(tests, key=lambda t: tests[t]["p_value"])
    p = min(1.0, len(tests) * tests[worst]["p_value"])  # Bonferroni
    n = int(ref["n"])
    return {
        "status": "tested", "fired": bool(p < alpha), "alpha": alpha, "p_value": p,
        "test": ("two-sample: Pearson chi-square on the exit shares and rank-sum on (exit, score) "
                 "from easy to hard; Bonferroni over the two"),
        "statistic": tests[worst]["statistic"], "df": tests[worst]["df"], "tests": tests,
        "n": m, "reference_n": n,
        "exit_shares": {"calibration": [c / n for c in ref["exit_counts"]], "here": [c / m for c in exits]},
        "median_score": {"calibration": ref.get("median_score"), "here": float(np.median(answer_score))},
    }


def check_predictions(predictions: list, policy, enabled: bool = True) -> dict:
    """``check`` on `scan predict`'s rows (``exit_index``, ``score``) under an ``ExitPolicy``."""
    if not enabled:
        return {"status": "off", "fired": False}
    return check([p.exit_index for p in predictions], [p.score for p in predictions],
                 getattr(policy, "drift_reference", None), thresholds=policy.thresholds, score=policy.score,
                 fallback=policy.fallback)


def warning_line(result: dict):
    """One line for stderr when the alarm fired (else None): what moved, by how much, what to do."""
    if not result or not result.get("fired"):
        return None
    shares = result["exit_shares"]
    fmt = lambda xs: "/".join(f"{100 * x:.0f}" for x in xs)  # noqa: E731
    med = result["median_score"]
    p = result["p_value"]
    p_text = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
    score = "" if med["calibration"] is None else f", median answering score {med['calibration']:.3f} -> {med['here']:.3f}"
    return (f"drift: exit shares moved from {fmt(shares['calibration'])} % at calibration ({result['reference_n']} "
            f"images) to {fmt(shares['here'])} % here ({result['n']} images){score} ({p_text}, false-alarm rate "
            f"{result['alpha']:g}); the accuracy promise may not hold: recalibrate on labelled data like this "
            "(scan calibrate --data NEW)")

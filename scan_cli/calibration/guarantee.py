"""The optional guarantee (``--confidence``): Learn-then-Test with fixed-sequence binomial tests.

Two procedures, each at its share of the error rate delta = 1 - confidence (Bonferroni, so the
union of what they certify is still wrong with probability <= delta):

* fixed sequence on a family fixed before the data is seen (``threshold_family``: one threshold
  for every shallow exit, from "nobody leaves early" down to "everybody leaves at exit 1"), tested
  in that order on every validation image: no image is spent on choosing the order;
* Pareto Testing (Laufer-Goldshtein et al., 2023): the front of a sixth of the images (``OPT_SHARE``),
  tested in order of accuracy on the other five sixths; it certifies more where the fixed family is poor (e.g. the
  last exit is weaker than the others, and the family starts there).

Each test is an exact binomial tail; every configuration a sequence rejects has true accuracy >=
the target simultaneously with probability >= 1 - its share, so the cheapest of them may be chosen.

Pure numpy: no torch, no scipy, no printing.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UsageError
from .cascade import CascadeData, TargetUnreachable, _costs_for_many, _expected_cost, _simulate_many
from .search import pareto_front


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


def binomial_interval(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for an accuracy of ``correct`` / ``n``: where the accuracy on
    fresh data from the same distribution lies with probability >= ``level``."""
    alpha = (1 - level) / 2

    def solve(f, lo=0.0, hi=1.0):  # f increasing in p; the p with f(p) = 0
        for _ in range(60):
            mid = (lo + hi) / 2
            if f(mid) > 0:
                hi = mid
            else:
                lo = mid
        return (lo + hi) / 2

    lower = 0.0 if correct == 0 else solve(lambda p: (1 - binom_cdf(correct - 1, n, p)) - alpha)
    upper = 1.0 if correct >= n else solve(lambda p: alpha - binom_cdf(correct, n, p))
    return lower, upper


# Bonferroni shares of delta (they sum to 1). Pareto Testing gets most: its order comes from the data, so
# it starts where the cascade is best, while the fixed family starts at the last exit, which may be
# weaker than the others (Fashion-MNIST); the fixed sequence keeps a share for cascades whose deep
# exits are best, where its test on every image is the stronger one (bench_promise's simulated cascade).
SHARES = {"fixed sequence": 0.2, "Pareto testing": 0.8}
# Share of the images Pareto Testing spends on ordering (the front); the rest are tested. Power lies in
# the test (its binomial bound tightens with its size); the order only has to put a good configuration
# first, which about a hundred images do: on Fashion-MNIST, 600 images, 1/6 certifies
# 78 % in 33/50 re-splits where 1/2 does in 18/50 (bench/results/promise.md).
OPT_SHARE = 1 / 6
# One threshold for every shallow exit, 1 - 10^-x for x from 4 (or +inf: nobody leaves early) down to
# 0 (everybody leaves at exit 1); for neg_entropy -10^-x, x down to -1.5 (an entropy of 31 nats).
FAMILY_STEPS = 161


def threshold_family(K: int, score: str = "max_softmax") -> np.ndarray:
    """[L, K-1] threshold vectors, most conservative first; depends on nothing but K and the score."""
    if score == "neg_entropy":
        lam = -(10.0 ** -np.linspace(4.0, -1.5, FAMILY_STEPS))
    else:  # max_softmax and margin lie in [0, 1]
        lam = 1.0 - 10.0 ** -np.linspace(4.0, 0.0, FAMILY_STEPS)
    lam = np.concatenate([[np.inf], lam])
    return np.repeat(lam[:, None], K - 1, axis=1)


def _fixed_sequence(correct: np.ndarray, n: int, target: float, delta: float) -> int:
    """How many configurations, in order, the fixed sequence rejects (H0: accuracy < target)."""
    for i, c in enumerate(correct):
        if target > 0 and binom_cdf(n - int(c), n, 1.0 - target) > delta:
            return i
    return len(correct)


def _pareto_testing(data: CascadeData, target: float, delta: float, seed: int, max_evaluations: float):
    """(configurations [P, K-1] in test order, how many rejected, test correct counts, n_test)."""
    n = data.n
    perm = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * OPT_SHARE))
    opt, test = data.subset(perm[:cut]), data.subset(perm[cut:])
    configs, seen = [], set()
    for point in reversed(pareto_front(opt, max_evaluations).points()):  # most to least accurate
        key = tuple(point["thresholds"])
        if key not in seen:
            seen.add(key)
            configs.append(point["thresholds"])
    T = np.asarray(configs, dtype=np.float64).reshape(len(configs), data.K - 1)
    test_correct, _ = _simulate_many(test, T)
    return T, _fixed_sequence(test_correct, test.n, target, delta), test_correct, test.n


def _certify(data: CascadeData, confidence: float, target: float, seed: int, max_evaluations: float,
             score: str = "max_softmax"):
    """The cheapest configuration either procedure certifies at accuracy >= ``target``.

    Returns (thresholds [K-1], guarantee dict). With probability >= confidence over the draw of the
    validation data, every certified configuration has accuracy >= target on future data.
    """
    n = data.n
    if n < 4:
        raise UsageError(f"--confidence needs more validation images (got {n}); pass at least a few hundred")
    delta = 1.0 - confidence
    family = threshold_family(data.K, score)
    family_correct, _ = _simulate_many(data, family)
    share = {name: SHARES.get(name, 0.0) for name in ("fixed sequence", "Pareto testing")}
    # a procedure without a share certifies nothing (the benchmark runs Pareto Testing alone, as before)
    fixed = _fixed_sequence(family_correct, n, target, share["fixed sequence"] * delta) if share["fixed sequence"] else 0
    T_pt, tested, pt_correct, n_test = _pareto_testing(data, target, share["Pareto testing"] * delta, seed, max_evaluations)
    if not share["Pareto testing"]:
        tested = 0
    certified = np.concatenate([family[:fixed], T_pt[:tested]])
    source = ["fixed sequence"] * fixed + ["Pareto testing"] * tested
    if certified.shape[0] == 0:
        raise TargetUnreachable(
            f"no thresholds can be certified at accuracy >= {target:.4f} with confidence {confidence:g}: "
            f"the family's first configuration scored {family_correct[0] / n:.4f} on the {n} validation images and "
            f"the most accurate on the front {pt_correct[0] / n_test if len(pt_correct) else 0.0:.4f} on {n_test} of them; "
            "use more validation images, a lower --target-acc or a lower --confidence"
        )
    _, counts = _simulate_many(data, certified)
    full_cost = _expected_cost(counts, _costs_for_many(data, certified), n)
    pick = int(np.argmin(full_cost))  # ties -> the first: the fixed sequence's, the more conservative
    guarantee = {
        "confidence": confidence,
        "accuracy_bound": target,
        "statement": (
            f"with probability >= {confidence:g} over the draw of the validation data, the chosen "
            f"thresholds have expected accuracy >= {target:.4f} on new data from the same distribution"
        ),
        "assumptions": [
            "validation images and future images are i.i.d. (exchangeable) draws from the same distribution",
            "the validation images were not used to train the model or to pick the target",
            "the bound is on the expected accuracy; a finite test set's accuracy fluctuates around it",
        ],
        "method": "Learn-then-Test (Angelopoulos et al., 2021): fixed-sequence binomial tests along a "
        "data-independent threshold family on every validation image, and Pareto Testing "
        f"(Laufer-Goldshtein et al., 2023) ordered on {n - n_test} images and tested on {n_test}; delta split between them (Bonferroni)",
        "procedure": source[pick],
        "delta_shares": dict(SHARES),
        "pareto_order_share": OPT_SHARE,
        "seed": seed,
        "certified": {"fixed sequence": fixed, "Pareto testing": tested},
        "n_test": n if source[pick] == "fixed sequence" else n_test,
    }
    return certified[pick], guarantee

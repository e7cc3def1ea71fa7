"""The optional guarantee (``--confidence``): Pareto Testing with Learn-then-Test.

Optimise on one half of the validation data, then test the front's configurations in order with
exact binomial tails on the other half (fixed-sequence testing): every configuration the sequence
rejects has true accuracy >= the target simultaneously with probability >= confidence.

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
    full_cost = _expected_cost(counts, _costs_for_many(data, T[rejected]), n)
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

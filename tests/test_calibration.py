"""Threshold search: the front against brute force, calibrate's modes and errors, the grid's
certified gap, and the guarantee's coverage in simulation. Pure numpy, CPU, a few seconds."""

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest

from scan_cli.calibration import (
    CascadeData,
    TargetUnreachable,
    binom_cdf,
    calibrate,
    pareto_front,
    plot_front,
    simulate,
    summarize,
)
from scan_cli.errors import ScanError, UsageError


def random_cascade(seed, n, K, levels=None):
    """Random exits; scores rounded to ``levels`` values (ties) when given."""
    rng = np.random.default_rng(seed)
    scores = rng.random((n, K))
    if levels:
        scores = np.round(scores * (levels - 1)) / (levels - 1)
    correct = rng.random((n, K)) < np.linspace(0.45, 0.85, K)
    costs = np.cumsum(rng.uniform(0.1, 1.0, K))
    return CascadeData(scores, correct, costs)


def brute_force(data):
    """min expected cost with >= c correct, for every c, over every threshold combination."""
    n, K = data.n, data.K
    candidates = [np.append(np.unique(data.scores[:, k]), np.inf) for k in range(K - 1)]
    best = np.full(n + 1, np.inf)
    for t in itertools.product(*candidates):
        s = summarize(data, list(t))
        c = round(s["accuracy"] * n)
        best[c] = min(best[c], s["expected_cost"])
    return np.minimum.accumulate(best[::-1])[::-1]


CASES = [(K, n, levels, seed) for K, n in ((2, 30), (3, 24), (4, 14)) for levels in (None, 4) for seed in (0, 1)]
CASES += [(5, 10, 3, 0), (5, 9, 4, 1)]  # two exits in the Python loop


@pytest.mark.parametrize("K,n,levels,seed", CASES)
def test_front_equals_brute_force_for_every_count(K, n, levels, seed):
    data = random_cascade(seed, n, K, levels)
    front = pareto_front(data)
    assert front.exact
    np.testing.assert_allclose(front.cost, brute_force(data), rtol=1e-12, atol=0)
    for c in range(n + 1):  # every stored vector re-simulates to exactly the front's numbers
        if np.isfinite(front.cost[c]):
            s = summarize(data, front.thresholds[c])
            assert round(s["accuracy"] * n) == front.achieved[c] >= c
            assert s["expected_cost"] == front.cost[c]


def test_ties_are_never_split():
    # Two images with the same exit-0 score: one is right there, the other only at the end.
    # Answering 2/2 right for less than the full cost would need a threshold between equal scores.
    data = CascadeData([[0.5, 0.0], [0.5, 0.0]], [[True, True], [False, True]], [1.0, 2.0])
    front = pareto_front(data)
    np.testing.assert_array_equal(front.cost, [1.0, 1.0, 2.0])
    assert front.thresholds[1].tolist() == [0.5]


def test_simulate_uses_greater_or_equal_and_first_exit():
    data = CascadeData(
        [[0.9, 0.9, 0.0], [0.5, 0.7, 0.0], [0.1, 0.2, 0.0]],
        [[True, False, False], [False, True, False], [False, False, True]],
        [1.0, 2.0, 3.0],
    )
    exit_index, correct, cost = simulate(data, [0.9, 0.7])
    assert exit_index.tolist() == [0, 1, 2]
    assert correct.tolist() == [True, True, True]
    assert cost.tolist() == [1.0, 2.0, 3.0]
    s = summarize(data, [math.inf, 0.7, None])
    assert s["exit_shares"] == pytest.approx([0.0, 2 / 3, 1 / 3])
    assert s["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("K", [2, 3, 4])
def test_calibrate_resimulates_and_is_optimal(K):
    data = random_cascade(7, {2: 30, 3: 24, 4: 14}[K], K, levels=6)
    brute = brute_force(data)
    best_acc = np.flatnonzero(np.isfinite(brute))[-1] / data.n
    for target in (0.3, 0.5, 0.6, best_acc):
        r = calibrate(data, target_acc=target, backbone_cost=2.0, correct_selection=False)
        s = summarize(data, r.thresholds)
        assert s["accuracy"] == r.val_accuracy >= target
        assert s["expected_cost"] == r.expected_cost
        assert r.expected_cost == pytest.approx(brute[math.ceil(target * data.n - 1e-9)], abs=1e-12)
        assert r.speedup == pytest.approx(2.0 / r.expected_cost)
        assert len(r.thresholds) == K and r.thresholds[-1] is None
        assert r.method["search"] == "exact" and r.method["gap_bound"] == 0
        assert any(p["label"] == "chosen" and p["accuracy"] == r.val_accuracy for p in r.pareto)


def test_higher_target_never_costs_less():
    data = random_cascade(3, 400, 4, levels=40)
    costs = [calibrate(data, target_acc=t, correct_selection=False).expected_cost for t in np.linspace(0.4, 0.7, 13)]
    assert all(b >= a for a, b in zip(costs, costs[1:]))
    assert costs[-1] > costs[0]


def test_unreachable_target_names_the_best_accuracy():
    data = random_cascade(5, 20, 3, levels=5)
    best = np.flatnonzero(np.isfinite(brute_force(data)))[-1] / data.n
    with pytest.raises(TargetUnreachable) as info:
        calibrate(data, target_acc=min(1.0, best + 0.06))
    assert f"{best:.4f}" in str(info.value) and "--target-acc" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_acc": 0.0},
        {"target_acc": 1.2},
        {"target_acc": -0.5},
        {"target_acc": float("nan")},
        {"max_drop": 1.0},
        {"max_drop": -0.01},
        {"budget": 0.0},
        {"budget": -1.0},
        {},
        {"target_acc": 0.5, "budget": 0.5},
        {"budget": 0.5, "confidence": 0.9},
        {"target_acc": 0.5, "confidence": 1.0},
    ],
)
def test_invalid_requests_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        calibrate(random_cascade(0, 10, 3), **kwargs)


def test_max_drop_mode():
    data = random_cascade(11, 22, 3, levels=5)
    brute = brute_force(data)
    reference = data.correct.mean(axis=0).max()  # the best single exit (no ensemble given)
    r = calibrate(data, max_drop=0.1, correct_selection=False)
    assert r.target["reference_accuracy"] == reference
    goal = r.target["accuracy_target"]  # the reference less its selection bias (bootstrap), less max_drop
    assert goal == pytest.approx(reference - r.target["reference_selection_bias"] - 0.1)
    assert r.val_accuracy >= goal
    assert r.expected_cost == pytest.approx(brute[math.ceil(goal * data.n - 1e-9)], abs=1e-12)
    # No drop allowed: never worse than the (selection-corrected) best exit, never dearer than the backbone.
    r0 = calibrate(data, max_drop=0.0, correct_selection=False)
    assert r0.val_accuracy >= r0.target["accuracy_target"] and r0.expected_cost <= data.costs[-1]


def test_budget_mode_maximises_accuracy_within_the_budget():
    data = random_cascade(12, 22, 3, levels=5)
    brute = brute_force(data)
    backbone = float(data.costs[-1])
    for budget in (0.6, 0.8, 1.0):
        r = calibrate(data, budget=budget)
        assert r.expected_cost <= budget * backbone
        best = np.flatnonzero(brute <= budget * backbone)[-1]
        assert r.val_accuracy == best / data.n
    with pytest.raises(TargetUnreachable, match="--budget"):
        calibrate(data, budget=0.5 * data.costs[0] / backbone)


def test_grid_mode_is_within_its_certified_gap():
    data = random_cascade(21, 60, 4)
    exact = pareto_front(data)
    assert exact.exact
    grid = pareto_front(data, max_evaluations=3000)
    assert not grid.exact and grid.slack > 0
    assert max(grid.grid_sizes[:2]) < 61  # exits 0 and 1 really were gridded
    finite = np.isfinite(exact.cost)
    reached = np.isfinite(grid.cost)
    assert reached[finite].sum() >= finite.sum() - grid.slack  # at most `slack` answers lost
    assert np.all(grid.gap_bound[reached] >= 0)
    ok = reached & finite
    diff = grid.cost[ok] - exact.cost[ok]
    assert np.all(diff >= -1e-12)  # a grid never beats the optimum
    assert np.all(diff <= grid.gap_bound[ok] + 1e-12)  # and stays within its bound
    assert diff.max() > 0  # the grid really was coarser (the check above was not vacuous)
    r = calibrate(data, target_acc=0.6, max_evaluations=3000, correct_selection=False)
    assert r.method["search"] == "grid" and r.val_accuracy >= 0.6
    assert exact.cost[36] - 1e-12 <= r.expected_cost <= r.method["grid_cost"]  # polishing only helps
    assert r.expected_cost - exact.cost[36] <= r.method["gap_bound"] + 1e-12


@pytest.mark.parametrize("seed", range(4))
def test_pair_search_equals_brute_force(seed):
    """Polishing moves two exits at once (others fixed): the best move matches enumeration."""
    from scan_cli.calibration.search import _pair_search

    data = random_cascade(seed, 25, 4, levels=7)
    rng = np.random.default_rng(seed)
    values = [np.unique(data.scores[:, k]) for k in range(3)]
    fixed = np.array([rng.choice(np.append(v, np.inf)) for v in values])
    for k, j in ((0, 1), (0, 2), (1, 2)):
        window = values[k][1:-1]
        for need in (10, 15, 18):
            found = _pair_search(data, fixed, k, j, window, need)
            best = np.inf
            for tk in np.append(window, np.inf):
                for tj in np.append(values[j], np.inf):
                    t = fixed.copy()
                    t[k], t[j] = tk, tj
                    s = summarize(data, t)
                    if round(s["accuracy"] * data.n) >= need:
                        best = min(best, s["expected_cost"] * data.n)
            if np.isinf(best):
                assert found is None
            else:
                assert found[0] == pytest.approx(best, abs=1e-9)
                s = summarize(data, found[1])
                assert round(s["accuracy"] * data.n) >= need and s["expected_cost"] * data.n == pytest.approx(best)


@pytest.mark.parametrize("seed", range(5))
def test_grid_rounding_loss_bound_is_tight(seed):
    """m_k equals the worst loss of rounding any threshold down to the grid, found by brute force:
    the wrong-at-k images with g <= score < t, over every score value t and its grid point g."""
    from scan_cli.calibration.search import _grid_slack, _quantile_grid

    rng = np.random.default_rng(seed)
    column = np.round(rng.random(80) * 20) / 20  # ties
    wrong = rng.random(80) < 0.4
    grid = _quantile_grid(column, wrong, 6)
    assert grid[-1] == np.inf and grid[0] == column.min() and grid.size <= 6
    assert set(grid[:-1]) <= set(column)  # thresholds at actual scores: >= is exact
    worst = 0
    for t in np.unique(column):
        g = grid[grid <= t].max()
        worst = max(worst, int(np.sum(wrong & (column >= g) & (column < t))))
    assert _grid_slack(column, wrong, grid) == worst > 0


def test_single_exit():
    data = CascadeData([[0.3], [0.9], [0.4]], [[True], [False], [True]], [5.0])
    r = calibrate(data, target_acc=0.5, backbone_cost=4.0, correct_selection=False)
    assert r.thresholds == [None]
    assert r.val_accuracy == pytest.approx(2 / 3) and r.expected_cost == 5.0
    assert r.speedup == pytest.approx(0.8)
    with pytest.raises(TargetUnreachable, match="0.6667"):
        calibrate(data, target_acc=0.9, correct_selection=False)


def test_two_exits_by_hand():
    # exit 0 right for the confident pair, wrong otherwise; the end is always right.
    data = CascadeData(
        [[0.9, 0], [0.8, 0], [0.6, 0], [0.2, 0]],
        [[True, True], [True, True], [False, True], [False, True]],
        [1.0, 3.0],
    )
    r = calibrate(data, target_acc=1.0, correct_selection=False)
    assert r.thresholds == [0.8, None]
    assert r.expected_cost == pytest.approx((1 + 1 + 3 + 3) / 4)
    assert r.exit_shares == pytest.approx([0.5, 0.5])


def test_json_form_round_trips():
    data = random_cascade(4, 40, 4, levels=8)
    r = calibrate(data, budget=0.9)
    d = json.loads(json.dumps(r.to_dict()))
    assert len(d["thresholds"]) == 4 and d["thresholds"][-1] is None
    assert d["thresholds"] == r.thresholds and summarize(data, d["thresholds"])["accuracy"] == r.val_accuracy
    inf_point = [p for p in d["pareto"] if p["label"] == "last exit only"]
    assert inf_point and inf_point[0]["thresholds"] == [math.inf, math.inf, math.inf, None]
    assert inf_point[0]["cost"] == data.costs[-1] and d["cost_fraction"] <= 0.9


def test_plot_is_written_atomically(tmp_path):
    data = random_cascade(4, 50, 3, levels=10)
    r = calibrate(data, target_acc=0.5, correct_selection=False)
    out = plot_front(r, tmp_path / "plots" / "front.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["front.png"]
    plot_front(r.front, tmp_path / "front.svg", chosen=(0.5, 0.5))
    assert (tmp_path / "front.svg").read_text().lstrip().startswith("<?xml")


def test_bad_cached_outputs_are_refused():
    with pytest.raises(ScanError, match="cumulative"):
        CascadeData(np.zeros((3, 2)), np.zeros((3, 2), bool), [2.0, 1.0])
    with pytest.raises(ScanError, match="shape"):
        CascadeData(np.zeros((3, 2)), np.zeros((3, 3), bool), [1.0, 2.0])
    with pytest.raises(ScanError, match="NaN"):
        CascadeData([[np.nan, 0.0]], [[True, True]], [1.0, 2.0])


def test_binomial_tail_matches_exact_fractions():
    for n, p, k in [(10, 0.3, 2), (50, 0.1, 0), (200, 0.15, 20), (40, 0.5, 39), (30, 0.05, 5)]:
        exact = sum(Fraction(math.comb(n, i)) * Fraction(p) ** i * (1 - Fraction(p)) ** (n - i) for i in range(k + 1))
        assert binom_cdf(k, n, p) == pytest.approx(float(exact), rel=1e-9)
    assert binom_cdf(-1, 10, 0.3) == 0.0 and binom_cdf(10, 10, 0.3) == 1.0


def calibrated_cascade(seed, n):
    """Three exits whose max-softmax-like score is the exit's probability of being right."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(size=n)
    logits = np.array([1.0, 2.0, 3.2])[None, :] - 1.5 * difficulty[:, None] + 0.5 * rng.normal(size=(n, 3))
    p = 1 / (1 + np.exp(-logits))
    correct = rng.random((n, 3)) < p
    return CascadeData(np.round(p, 2), correct, [0.35, 0.7, 1.0])


def test_guarantee_holds_in_simulation():
    """200 random splits of 4000 images into 1000 calibration / 3000 test images.

    With confidence 0.9 the share of splits whose test accuracy falls below the target must be
    at most 0.1, plus 3 binomial standard errors of a 200-split estimate (sqrt(0.09 / 200) ~
    0.021, so 0.164) for Monte Carlo error. Without the guarantee (the plain validation optimum)
    the same check must fail often, which shows the check can fail.
    """
    data = calibrated_cascade(0, 4000)
    target = 0.85  # the last exit alone is right ~91% of the time
    rng = np.random.default_rng(1)
    misses = plain_misses = certified = 0
    splits = 200
    for i in range(splits):
        perm = rng.permutation(data.n)
        cal, test = data.subset(perm[:1000]), data.subset(perm[1000:])
        try:
            r = calibrate(cal, target_acc=target, confidence=0.9, seed=i)
        except TargetUnreachable:
            continue  # refusing is always allowed
        certified += 1
        misses += summarize(test, r.thresholds)["accuracy"] < target
        plain = calibrate(cal, target_acc=target, correct_selection=False)
        plain_misses += summarize(test, plain.thresholds)["accuracy"] < target
    assert certified >= 180  # the guarantee is usable here, not vacuous
    assert misses / splits <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / splits)
    assert plain_misses / splits >= 0.3


# -- switching exits off: a never-firing exit runs nothing and costs nothing ---------------------------
def cascade_with_heads(seed, n, K, levels=None):
    """Random exits whose heads are expensive enough that switching some off pays."""
    rng = np.random.default_rng(seed)
    data = random_cascade(seed, n, K, levels)
    heads = rng.uniform(0.2, 0.8, K - 1)
    backbone = np.cumsum(rng.uniform(0.1, 1.0, K))
    costs = backbone.copy()
    costs[: K - 1] += np.cumsum(heads)
    costs[K - 1] += heads.sum()
    return CascadeData(data.scores, data.correct, costs, heads)


def test_a_switched_off_exit_costs_nothing():
    data = CascadeData([[0.9, 0.2, 0.0], [0.1, 0.8, 0.0]], [[True, True, True]] * 2, [3.0, 6.0, 8.0], [1.0, 2.0])
    # backbone: 2, 4, 5; heads 1 and 2
    assert summarize(data, [np.inf, np.inf])["expected_cost"] == 5.0  # exactly the plain backbone
    assert summarize(data, [np.inf, 0.5])["expected_cost"] == pytest.approx((4 + 2 + 4 + 2) / 2)
    assert summarize(data, [0.5, np.inf])["expected_cost"] == pytest.approx((2 + 1 + 5 + 1) / 2)
    no_heads = CascadeData(data.scores, data.correct, data.costs)  # e.g. the ensemble fallback: heads always run
    assert summarize(no_heads, [np.inf, np.inf])["expected_cost"] == 8.0


@pytest.mark.parametrize("K,n,levels,seed", [(2, 20, None, 0), (3, 16, None, 1), (3, 18, 4, 2), (4, 10, 3, 3), (4, 9, None, 4)])
def test_front_with_switch_off_equals_brute_force(K, n, levels, seed):
    data = cascade_with_heads(seed, n, K, levels)
    front = pareto_front(data)
    assert front.exact
    np.testing.assert_allclose(front.cost, brute_force(data), rtol=1e-12, atol=0)  # brute force prices inf at 0
    for c in range(n + 1):
        if np.isfinite(front.cost[c]):
            s = summarize(data, front.thresholds[c])
            assert round(s["accuracy"] * n) == front.achieved[c] >= c and s["expected_cost"] == front.cost[c]
    fixed = pareto_front(CascadeData(data.scores, data.correct, data.costs))
    assert np.all(front.cost <= fixed.cost)  # switching off can only help


def test_the_search_switches_an_expensive_useless_exit_off():
    rng = np.random.default_rng(0)
    n = 40
    scores = np.column_stack([rng.random(n), rng.random(n), np.zeros(n)])
    correct = np.column_stack([rng.random(n) < 0.5, np.zeros(n, bool), np.ones(n, bool)])  # exit 2 always wrong
    data = CascadeData(scores, correct, [2.0, 13.0, 14.0], heads=[1.0, 10.0])
    result = calibrate(data, target_acc=1.0, correct_selection=False)
    assert result.thresholds[1] == np.inf and result.exit_shares[1] == 0
    assert result.expected_cost <= summarize(data, [np.inf, np.inf])["expected_cost"] == 3.0


def test_binomial_interval_matches_clopper_pearson():
    from scan_cli.calibration.guarantee import binomial_interval

    lo, hi = binomial_interval(95, 100)
    assert lo == pytest.approx(0.8872, abs=2e-4) and hi == pytest.approx(0.9836, abs=2e-4)
    assert binomial_interval(0, 10)[0] == 0.0 and binomial_interval(10, 10)[1] == 1.0
    assert binomial_interval(10, 10)[0] == pytest.approx(0.025 ** (1 / 10), abs=1e-6)


def test_operating_points_hold_no_dominated_row():
    data = random_cascade(3, 300, 4)
    result = calibrate(data, max_drop=0.01, correct_selection=False)
    points = result.pareto
    assert result.val_accuracy_interval[0] <= result.val_accuracy <= result.val_accuracy_interval[1]
    for p in points:
        if p["label"] == "chosen":
            continue
        assert not any(q is not p and q["cost"] <= p["cost"] and q["accuracy"] >= p["accuracy"]
                       and (q["cost"] < p["cost"] or q["accuracy"] > p["accuracy"]) for q in points)

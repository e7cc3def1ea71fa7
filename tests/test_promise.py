"""Promises on unseen data (issue 19): the --max-drop reference, the default mode's mean shortfall and
the certification's coverage, on simulated exit outputs whose true accuracy is known. Pure numpy."""

import math

import numpy as np
import pytest

from scan_cli.calibration import CascadeData, TargetUnreachable, calibrate, summarize
from scan_cli.calibration.cascade import _simulate_many
from scan_cli.calibration.choose import best_reference
from scan_cli.calibration.guarantee import _fixed_sequence, threshold_family
from scan_cli.calibration.run import answer_references


def population(n, seed=0):
    """Three exits; exit 2 is the most accurate alone (~83 %), the last one weaker (~80 %), like the
    Fashion-MNIST runs of issue 19. Max-softmax-like scores that track each exit's chance of being right."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(size=n)
    logits = np.array([0.9, 2.0, 1.7])[None, :] - 1.6 * difficulty[:, None] + 0.6 * rng.normal(size=(n, 3))
    p = 1 / (1 + np.exp(-logits))
    correct = rng.random((n, 3)) < p
    return CascadeData(np.round(0.5 + p / 2, 3), correct, [0.4, 0.75, 1.0], heads=[0.02, 0.02])


def test_max_drop_is_measured_against_the_ensemble_when_it_is_best():
    labels = np.array([0, 1, 1, 0])
    # exits: 1/2 right 2 of 4 each; the mean of the logits is right 4 of 4
    logits = np.array([  # [image, exit, class]: each exit is right where it is sure
        [[3.0, 0.0], [0.0, 1.0]],
        [[0.0, 3.0], [1.0, 0.0]],
        [[1.0, 0.0], [0.0, 3.0]],
        [[0.0, 1.0], [3.0, 0.0]],
    ])
    refs = answer_references(logits, labels)
    assert best_reference(CascadeData(np.zeros((4, 2)), np.zeros((4, 2)), [1.0, 2.0]), refs) == ("ensemble", 1.0)
    # without the ensemble, the better of the exits (ties: the cheaper, exit 1)
    del refs["ensemble"]
    assert best_reference(None, refs) == ("exit 1/2", 0.5)


def test_max_drop_is_measured_against_the_best_exit_not_the_last():
    data = population(2000, seed=3)
    accs = data.correct.mean(axis=0)
    assert accs[1] > accs[2]  # the last exit is not the best here
    r = calibrate(data, max_drop=0.005)
    assert r.target["reference"] == "exit 2/3" and r.target["reference_accuracy"] == accs[1]
    # exit 2 leads by points on 2,000 images: hardly any luck in picking it
    assert 0 <= r.target["reference_selection_bias"] < 0.001
    assert r.target["accuracy_target"] == pytest.approx(accs[1] - r.target["reference_selection_bias"] - 0.005)


def equally_good_answers(n, seed, answers=5, accuracy=0.8, agree=0.9):
    """``answers`` answers of the same true accuracy, each right with the others on ``agree`` of the
    images (as exits and the ensemble of one model are) and independently on the rest."""
    rng = np.random.default_rng(seed)
    shared = rng.random(n) < accuracy
    own = rng.random((n, answers)) < accuracy
    right = np.where(rng.random((n, answers)) < agree, shared[:, None], own)
    return {f"answer {k + 1}": right[:, k] for k in range(answers)}


def test_the_max_drop_reference_is_corrected_for_being_picked_on_the_same_images():
    """Five equally good answers (true accuracy 80 %), 600 validation images per draw: the best of them on
    validation overstates its accuracy on new images (the plain max misses by more than half a point on
    average, the check can fail); the bootstrap-corrected reference, what --max-drop 0 promises, stays
    within 0.3 point on average. Deterministic: the same images give the same correction."""
    SURE = CascadeData(np.zeros((600, 2)), np.ones((600, 2), bool), [1.0, 2.0])  # only the target matters here
    plain, corrected = [], []
    for seed in range(60):
        refs = equally_good_answers(600, seed)
        r = calibrate(SURE, max_drop=0.0, references=refs)
        plain.append(r.target["reference_accuracy"] - 0.8)
        corrected.append(r.target["accuracy_target"] - 0.8)
    assert np.mean(plain) > 0.005
    assert np.mean(corrected) <= 0.003, f"mean shortfall of the reference {100 * np.mean(corrected):.2f} points"
    again = calibrate(SURE, max_drop=0.0,
                      references=equally_good_answers(600, 0))
    assert again.target["accuracy_target"] == pytest.approx(corrected[0] + 0.8, abs=0)


def test_default_mean_shortfall_on_new_data_is_at_most_half_a_point():
    """Draws of 600 validation images from a known population: averaged over the draws, the accuracy
    of the chosen thresholds on the whole population reaches every target up to the best exit's
    true accuracy within 0.5 point. The validation optimum (today's rule) misses by more: the check
    can fail."""
    pop = population(60_000)
    best = float(pop.correct.mean(axis=0).max())
    rng = np.random.default_rng(1)
    draws = [pop.subset(rng.choice(pop.n, 600, replace=False)) for _ in range(24)]
    for target in (best - 0.01, best):
        new, old = [], []
        for val in draws:
            for correct_selection, out in ((True, new), (False, old)):
                try:
                    t = calibrate(val, target_acc=target, correct_selection=correct_selection).thresholds[:-1]
                except TargetUnreachable:
                    continue  # refusing is allowed
                out.append(target - summarize(pop, t)["accuracy"])
        assert len(new) >= len(draws) // 3  # the promise is mostly made (at the very top it may be refused)
        assert np.mean(new) <= 0.005, f"target {target:.4f}: mean shortfall {100 * np.mean(new):.2f} points"
        assert np.mean(old) > 0.005  # what the correction is for


def test_the_fixed_sequence_certifies_with_coverage_at_least_one_minus_delta():
    """Many draws of 300 validation images; the family's true accuracies are known from the
    population. A draw fails when any configuration the sequence certifies is truly below the target.
    Certifying the best configuration without testing in order (the max over the family) must fail
    far more often: the check can fail."""
    pop = population(100_000, seed=5)
    family = threshold_family(pop.K)
    true = _simulate_many(pop, family)[0] / pop.n
    target = float(np.sort(true)[-8]) - 0.002  # a few configurations just above the target, most below
    delta, n, draws = 0.1, 300, 400
    rng = np.random.default_rng(2)
    fails = cherry = 0
    for _ in range(draws):
        val = pop.subset(rng.integers(0, pop.n, n))
        correct = _simulate_many(val, family)[0]
        k = _fixed_sequence(correct, n, target, delta)
        fails += bool(k) and true[:k].min() < target
        # the naive rule: certify every configuration whose own test passes, in no order
        passes = np.array([_fixed_sequence(correct[i : i + 1], n, target, delta) == 1 for i in range(len(correct))])
        cherry += bool(np.any(passes & (true < target)))
    assert fails / draws <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)
    assert cherry / draws > delta + 3 * math.sqrt(delta * (1 - delta) / draws)


def test_confidence_with_few_hundred_images_certifies_near_the_best_exit():
    """With 600 validation images and the last exit weaker than exit 2, --confidence 0.9 certifies a
    target 4 points under the best exit's validation accuracy (on this simulated population best - 3 is
    certified in only 3 of 10 draws; on the Fashion-MNIST run in 30 of 50 re-splits,
    bench/results/promise.md). Whether it holds is the coverage test's job (one draw holds only with
    probability 0.9)."""
    pop = population(60_000, seed=7)
    rng = np.random.default_rng(3)
    val = pop.subset(rng.choice(pop.n, 600, replace=False))
    target = float(val.correct.mean(axis=0).max()) - 0.04
    r = calibrate(val, target_acc=target, confidence=0.9)
    assert r.target["promise"]["kind"] == "certified" and r.guarantee["accuracy_bound"] == target


def test_a_target_that_cannot_be_expected_uses_the_most_accurate_thresholds_and_says_so():
    """A target at the best exit's accuracy on 600 images: the shrunk target is above anything attainable;
    the most accurate thresholds are used (not a refusal) and the promise states the lower accuracy they
    can be expected to give."""
    val = population(600, seed=5)
    r = calibrate(val, target_acc=float(val.correct.mean(axis=0).max()))
    from scan_cli.calibration import pareto_front

    front_best = pareto_front(val).max_correct / val.n
    promise = r.target["promise"]
    assert r.target["selection"]["capped"] is True
    assert r.val_accuracy == pytest.approx(front_best)  # the most accurate point of the front
    assert promise["accuracy"] < r.target["accuracy_target"]
    assert "cannot be expected" in promise["statement"]

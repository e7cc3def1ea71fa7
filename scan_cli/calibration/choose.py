"""`calibrate`: one operating point of the front for a target, and what it costs.

Exactly one target: ``--target-acc`` (cheapest thresholds expected to reach it on new data:
``selection.py``), ``--max-drop`` (target = the most accurate answer the model offers on
validation -- best single exit or ensemble -- minus the drop) or ``--budget`` (most accurate
thresholds within a fraction of the backbone's MACs); ``--confidence`` certifies an accuracy
target on future data instead (``guarantee.py``). The result carries a few operating points
along the front for the table and the plot.

Pure numpy: no torch, no printing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from .cascade import INF, CascadeData, TargetUnreachable, summarize
from .guarantee import _certify, binomial_interval
from .search import DEFAULT_MAX_EVALUATIONS, Front, _polish, pareto_front
from .selection import SHRINK, aimed_accuracy


@dataclass
class CalibrationResult:
    thresholds: list  # K entries: shallow thresholds (float, inf = never fires), last None
    # (json.dumps writes inf as Infinity, which json.loads reads back; there is no inf in strict JSON)
    val_accuracy: float
    val_accuracy_interval: tuple  # 95 % Clopper-Pearson interval: where accuracy on fresh data can fall
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
            "val_accuracy_interval": list(self.val_accuracy_interval),
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
        "speedup": backbone_cost / s["expected_cost"] if s["expected_cost"] > 0 else INF,
        "thresholds": [float(t) for t in shallow] + [None],
    }


def _summary_points(data, front, chosen, backbone_cost, count) -> list:
    """~count operating points spread over the front's accuracy range, plus chosen and backbone."""
    points = front.points()
    accs = np.array([p["accuracy"] for p in points])
    picks = []
    for level in np.linspace(accs[0], accs[-1], max(count - 2, 2)):
        picks.append(points[int(np.searchsorted(accs, level - 1e-12))]["thresholds"])
    last = tuple([INF] * (data.K - 1))
    keys = {tuple(float(t) for t in chosen), last}
    out = [_operating_point(data, chosen, backbone_cost, "chosen")]
    if len(keys) == 2:
        out.append(_operating_point(data, last, backbone_cost, "last exit only"))
    for t in picks:
        if tuple(t) not in keys:
            keys.add(tuple(t))
            out.append(_operating_point(data, t, backbone_cost))

    def dominated(p):  # another point at most as costly and at least as accurate, better in one
        return any(q is not p and q["cost"] <= p["cost"] and q["accuracy"] >= p["accuracy"]
                   and (q["cost"] < p["cost"] or q["accuracy"] > p["accuracy"]) for q in out)

    return sorted([p for p in out if p["label"] == "chosen" or not dominated(p)], key=lambda p: (p["cost"], p["accuracy"]))


def best_reference(data: CascadeData, references: dict | None = None) -> tuple:
    """(name, accuracy) of the most accurate answer the model offers on these images: each exit
    alone, or (from the caller) the ensemble. Ties go to the first named, i.e. the cheaper."""
    if references is None:
        references = {f"exit {k + 1}/{data.K}": data.correct[:, k] for k in range(data.K)}
    accuracy = {name: float(np.mean(c)) for name, c in references.items()}
    name = max(accuracy, key=lambda k: accuracy[k])  # max keeps the first of equal values
    return name, accuracy[name]


REFERENCE_RESAMPLES = 1000


def reference_bias(references: dict, name: str, seed: int = 0, resamples: int = REFERENCE_RESAMPLES) -> float:
    """How much the best answer's validation accuracy overstates what it gives on new images because
    it was picked as the best on the same images (>= 0; 0 with a single answer): an out-of-bag
    bootstrap (Efron & Tibshirani, 1997). Each resample picks its best answer on the images it drew
    and scores it on the images it left out; the bias is the mean, over resamples (seeded,
    deterministic), of the out-of-bag accuracy of ``name`` minus that of the resample's pick (the
    same images, so it is exactly 0 when every resample picks ``name``). The plain bootstrap of the
    maximum (mean of max_k acc*_k - max_k acc_k) corrects only about a third of the bias when the
    answers are equally good: its resamples start from the already lucky winner."""
    right = np.stack([np.asarray(c, dtype=bool) for c in references.values()], axis=1).astype(float)  # [n, A]
    n, A = right.shape
    if A < 2 or n < 2:
        return 0.0
    pick = list(references).index(name)
    rng, total, used, done = np.random.default_rng(seed), 0.0, 0, 0
    chunk = max(1, min(resamples, 2_000_000 // n))
    while done < resamples:
        b = min(chunk, resamples - done)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=b)  # [b, n] draws of each image
        best = (counts @ right).argmax(axis=1)  # ties: the first named, as best_reference
        out = counts == 0
        left = out.sum(axis=1)
        oob = (out @ right) / np.maximum(left, 1)[:, None]  # [b, A] accuracy on the left-out images
        keep = left > 0
        total += float((oob[keep, pick] - oob[keep, best[keep]]).sum())
        used += int(keep.sum())
        done += b
    return max(0.0, total / max(used, 1))


def _aim_for_new_data(front, goal: float, n: int):
    """(front level, what the JSON records) of the default promise: ``goal`` on new images.

    When no thresholds reach the shrunk target on validation (a target at the best exit's accuracy,
    ``--max-drop 0``), the most accurate thresholds are used and the promise says what they can be
    expected to give instead: refusing would leave the user with nothing, and the most accurate
    cascade is what such a target asks for."""
    aimed = aimed_accuracy(goal, n)
    level = front.index_for(aimed)
    record = {"method": f"shrunk target: + {SHRINK:g} standard error", "validation_accuracy_aimed": aimed}
    if level > front.max_correct:
        level = front.max_correct
        best = front.max_correct / n
        record.update(capped=True, expected_accuracy=best - (aimed - goal))
    return level, record


def _promise(target: dict, guarantee: dict | None, n: int) -> dict | None:
    """What the chosen thresholds promise on new data, in the form the benchmark checks."""
    if "accuracy_target" not in target:
        return None  # --budget promises a cost, not an accuracy
    a = target["accuracy_target"]
    if guarantee is not None:
        return {"accuracy": a, "kind": "certified", "statement":
                f"accuracy on new data >= {100 * a:.2f}% with probability >= {guarantee['confidence']:g}"}
    selection = target.get("selection")
    if selection and selection.get("capped"):
        e = selection["expected_accuracy"]
        return {"accuracy": e, "kind": "expected", "statement":
                f"expected accuracy on new data >= {100 * e:.2f}% (the target {100 * a:.2f}% cannot be expected from "
                f"{n} validation images: the most accurate thresholds are used; add validation images to promise more)"}
    if selection:
        return {"accuracy": a, "kind": "expected", "statement": f"expected accuracy on new data >= {100 * a:.2f}%"}
    return {"accuracy": a, "kind": "validation", "statement":
            f"accuracy on these {n} validation images >= {100 * a:.2f}% (on new data expect less)"}


def check_goal(target_acc=None, max_drop=None, budget=None, confidence=None) -> None:
    """What calibrate is asked for, checked before any data or model loads (NaN fails every range)."""
    if sum(v is not None for v in (target_acc, max_drop, budget)) != 1:
        raise UsageError("give exactly one of --target-acc, --max-drop or --budget")
    if target_acc is not None and not (0.0 < target_acc <= 1.0):
        raise UsageError(f"--target-acc {target_acc} is outside (0, 1]: give an accuracy such as 0.76")
    if max_drop is not None and not (0.0 <= max_drop < 1.0):
        raise UsageError(f"--max-drop {max_drop} is outside [0, 1): give an accuracy drop such as 0.01")
    if budget is not None and not 0.0 < budget < float("inf"):
        raise UsageError(f"--budget {budget} is not a positive fraction of the backbone's MACs: give one such as 0.5")
    if confidence is not None:
        if budget is not None:
            raise UsageError("--confidence certifies an accuracy target: use it with --target-acc or --max-drop")
        if not (0.0 < confidence < 1.0):
            raise UsageError(f"--confidence {confidence} is outside (0, 1): give a probability such as 0.95")


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
    references: dict | None = None,
    score: str = "max_softmax",
    correct_selection: bool = True,
) -> CalibrationResult:
    """Pick per-exit thresholds on validation outputs.

    Exactly one of: ``target_acc`` (cheapest thresholds expected to reach it on new data),
    ``max_drop`` (target = the best reference's accuracy minus max_drop), ``budget``
    (most accurate thresholds with expected cost <= budget * backbone_cost). ``backbone_cost`` is
    the plain backbone's MACs (default: costs[K-1]). ``confidence`` (accuracy targets only)
    certifies the target on future data instead of only on validation (see ``_certify``).
    ``references``: name -> [n] bool correctness of each answer ``max_drop`` may be measured
    against (default: every exit of ``data``); the most accurate one is the reference, its accuracy
    less the bootstrap estimate of its selection bias (``reference_bias``) what max_drop is taken from.
    ``correct_selection`` (default on): aim for the target on new images, not on these
    (``selection.py``); off is the plain validation optimum (tests of the search, the benchmark).
    """
    check_goal(target_acc, max_drop, budget, confidence)
    backbone_cost = float(data.costs[-1] if backbone_cost is None else backbone_cost)
    if not backbone_cost > 0:
        raise UsageError(f"the backbone cost must be positive, got {backbone_cost}")
    n = data.n
    if budget is not None:
        target = {"mode": "budget", "budget": budget, "cost_limit": budget * backbone_cost}
    elif max_drop is not None:
        name, reference = best_reference(data, references)
        # picked as the best on these images, the reference looks better here than on new ones: the
        # target is measured against its bias-corrected accuracy (reference_bias)
        refs = references or {f"exit {k + 1}/{data.K}": data.correct[:, k] for k in range(data.K)}
        bias = reference_bias(refs, name, seed)
        target = {"mode": "max_drop", "max_drop": max_drop, "reference": name, "reference_accuracy": reference,
                  "reference_selection_bias": bias, "reference_accuracy_corrected": reference - bias,
                  "accuracy_target": reference - bias - max_drop}
    else:
        target = {"mode": "target_acc", "accuracy_target": target_acc}

    guarantee = None
    front = pareto_front(data, max_evaluations)
    best_c = front.max_correct
    if confidence is not None:
        shallow, guarantee = _certify(data, confidence, target["accuracy_target"], seed, max_evaluations, score)
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
        if correct_selection:
            c_index, target["selection"] = _aim_for_new_data(front, goal, n)
    method = {"search": "exact" if front.exact else "grid", "evaluations": front.evaluations,
              "candidates_per_exit": front.grid_sizes}
    if c_index is not None:
        shallow = front.thresholds[c_index]
        gap = float(front.gap_bound[c_index])  # how far above the optimum the cost can be (0 when exact)
        # The default promise skips the polish: searching many more thresholds on the same images is
        # more selection, which the shrunk target was not measured for (selection.py).
        if not front.exact and budget is None and "selection" not in target:
            # Grid point -> local pair descent with exact thresholds; the certificate still holds:
            # OPT(c) >= grid cost at c - slack, and polishing only lowers the cost.
            shallow = _polish(data, shallow, c_index, width=int(np.clip(max_evaluations // (4 * n), 128, 4096)))
            method["grid_cost"] = float(front.cost[c_index])
            polished = summarize(data, shallow)["expected_cost"]
            gap = max(0.0, polished - float(front.cost[max(c_index - front.slack, 0)]))
        method["gap_bound"] = gap
        method["gap_bound_fraction"] = gap / backbone_cost
    point = summarize(data, shallow)
    ci = binomial_interval(int(round(point["accuracy"] * n)), n)
    if not front.exact:
        method["rounding_loss_bound"] = front.slack
        if budget is not None:  # the optimum within the budget is at most this much more accurate
            method["accuracy_gap_bound"] = front.slack / n
    target["promise"] = _promise(target, guarantee, n)
    return CalibrationResult(
        thresholds=[float(t) for t in shallow] + [None],
        val_accuracy=point["accuracy"],
        val_accuracy_interval=ci,
        expected_cost=point["expected_cost"],
        speedup=backbone_cost / point["expected_cost"] if point["expected_cost"] > 0 else INF,
        exit_shares=point["exit_shares"],
        backbone_cost=backbone_cost,
        n_val=n,
        target=target,
        method=method,
        pareto=_summary_points(data, front, shallow, backbone_cost, n_points),
        guarantee=guarantee,
        front=front,
    )

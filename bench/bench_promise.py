"""Do calibration's promises hold on data it never saw? (issue 19, part 2)

    python bench/bench_promise.py --run DIR [--run DIR ...] [--resplits 50] [--out bench/results/promise.md]

Per run (a fitted SCAN run folder): the model fixed, the labelled images it never trained on
(its validation + test splits' exit outputs, cached as numpy) are pooled and re-split at random
``--resplits`` times into a calibration part of the run's validation size and an evaluation part.
On every re-split each mode calibrates for each promise (`--max-drop` 0, 0.005, 0.01 and
`--target-acc` at the pool's best single exit - 4, - 3, - 2, - 1, - 0 points) and the thresholds are scored
on the evaluation part. Reported per mode and promise: how often a promise was made (refusing is
allowed), coverage (share of the promises made whose evaluation accuracy >= the promised number),
mean shortfall (promise - evaluation accuracy, in points) and the mean counted speed-up
(backbone MACs / expected MACs on the evaluation part).

Modes: today's default (validation optimum with the exact polish, `--max-drop` against the last
exit) and today's `--confidence 0.9` (Pareto Testing alone), next to the new default (shrunk target,
`--max-drop` against the best exit or ensemble) and the new `--confidence 0.9` (fixed sequence +
Pareto Testing ordered on a sixth, Bonferroni 0.2 / 0.8). Score max_softmax, fallback last.

The drift alarm (runs with a model only, ``--no-drift`` skips it; `drift_shift.py`): every pooled image also gets
a shifted copy (rotation, contrast, noise or blur), put through the model and cached; on each
re-split the reference comes from the calibration part and the alarm `scan predict` runs is asked
about the clean and the shifted evaluation part. Reported per new mode and promise: false alarms,
firing rates (all, 500 images, per shift kind) and the cascade's accuracy on the shifted part
against its promise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(1, str(HERE))

from bench import drift_shift  # noqa: E402
from bench.common import cpu_flags, cpu_name  # noqa: E402
from scan_cli.calibration import CascadeData, TargetUnreachable, calibrate, summarize  # noqa: E402
from scan_cli.calibration import guarantee  # noqa: E402
from scan_cli.scoring import confidence  # noqa: E402

MODES = ["today, default", "new, default", "today, --confidence 0.9", "new, --confidence 0.9"]
DROPS = (0.0, 0.005, 0.01)
BELOW_BEST = (0.04, 0.03, 0.02, 0.01, 0.0)  # 3 points: the level `--confidence 0.9` should certify


def run_outputs(run_dir: Path, cache: Path) -> dict:
    """Exit logits and labels of validation and test, and the costs, cached as one .npz."""
    if cache.is_file():
        return dict(np.load(cache))
    from scan_cli.calibration.run import costs_of, split_outputs
    from scan_cli.runs import Run

    run = Run(run_dir)
    out = {}
    for split in ("val", "test"):
        logits, labels, _ = split_outputs(run, split)
        out[f"{split}_logits"], out[f"{split}_labels"] = np.asarray(logits, np.float32), np.asarray(labels)
    costs = costs_of(run)
    out["costs"], out["heads"] = np.asarray(costs.cumulative), np.asarray(costs.heads)
    out["backbone"] = np.array(costs.backbone_macs)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def _calibrate(mode: str, part: CascadeData, refs: dict, backbone: float, seed: int, promise: tuple):
    """(promised accuracy, thresholds) for one mode, or None when it refuses."""
    kind, value = promise
    today = mode.startswith("today")
    confidence = 0.9 if "confidence" in mode else None
    kw = {"target_acc": value} if kind == "target" else {"max_drop": value}
    if today and kind == "drop":
        kw["references"] = {"last exit": part.correct[:, -1]}  # today: measured against the last exit
    shares, order = guarantee.SHARES, guarantee.OPT_SHARE
    if today and confidence:
        guarantee.SHARES = {"fixed sequence": 0.0, "Pareto testing": 1.0}  # today: Pareto Testing alone,
        guarantee.OPT_SHARE = 0.5  # on a half split
    try:
        r = calibrate(part, confidence=confidence, seed=seed, backbone_cost=backbone,
                      correct_selection=not today, **kw,
                      **({} if today and kind == "drop" else {"references": refs}))
    except TargetUnreachable:
        return None
    finally:
        guarantee.SHARES, guarantee.OPT_SHARE = shares, order
    return r.target["accuracy_target"], r.thresholds[:-1]


def pool_of(out: dict) -> dict:
    """The pooled validation + test images: max-softmax scores, correctness per exit and of the ensemble."""
    logits = np.concatenate([out["val_logits"], out["test_logits"]])
    labels = np.concatenate([out["val_labels"], out["test_labels"]])
    right = logits.argmax(-1) == labels[:, None]
    scores = np.stack([confidence(logits[:, k], "max_softmax") for k in range(logits.shape[1])], axis=1)
    return {"scores": scores, "right": right, "logits": logits, "labels": labels,
            "ensemble": logits.mean(1).argmax(-1) == labels, "n_cal": len(out["val_labels"]),
            "costs": out["costs"], "heads": out["heads"], "backbone": float(out["backbone"]),
            "val_best": float(right[: len(out["val_labels"])].mean(0).max())}


def synthetic_pool(n: int = 2600, n_cal: int = 600, seed: int = 0) -> dict:
    """A simulated 4-exit cascade (bench_calibration's, ~67 / 75 / 79 / 80 %), for a run without a model."""
    from bench_calibration import synthetic_cascade

    d = synthetic_cascade(n, seed)
    heads = np.array([0.03, 0.03, 0.03])
    costs = d.costs.copy()
    costs[:3] += np.cumsum(heads)
    costs[3] += heads.sum()
    right = d.correct
    return {"scores": d.scores, "right": right, "ensemble": None, "n_cal": n_cal, "costs": costs, "heads": heads,
            "backbone": 1.0, "val_best": float(right[:n_cal].mean(0).max())}


def bench_run(name: str, pool_: dict, resplits: int, seed: int = 0) -> tuple[list, dict, dict]:
    """(table lines, goals, made): ``made`` maps (new mode, promise) to [(permutation, n_cal,
    promised accuracy, thresholds)] of the re-splits that made it, for the drift part."""
    right, ensemble, n_cal = pool_["right"], pool_["ensemble"], pool_["n_cal"]
    n, K = right.shape
    pool = CascadeData(pool_["scores"], right, pool_["costs"], pool_["heads"])
    out = {"backbone": pool_["backbone"]}
    best = float(right.mean(0).max())
    promises = [("drop", d) for d in DROPS] + [("target", round(best - b, 4)) for b in BELOW_BEST]
    rng = np.random.default_rng(seed)
    rows = {(m, p): [] for m in MODES for p in promises}
    made = {(m, p): [] for m in MODES if m.startswith("new") for p in promises}
    t0 = time.perf_counter()
    for r in range(resplits):
        perm = rng.permutation(n)
        cal, ev = perm[:n_cal], perm[n_cal:]
        part, held = pool.subset(cal), pool.subset(ev)
        refs = {f"exit {k + 1}/{K}": right[cal, k] for k in range(K)}
        if ensemble is not None:
            refs["ensemble"] = ensemble[cal]
        for m in MODES:
            for p in promises:
                got = _calibrate(m, part, refs, float(out["backbone"]), r, p)
                if got is None:
                    rows[(m, p)].append(None)
                    continue
                s = summarize(held, got[1])
                if (m, p) in made:
                    made[(m, p)].append((perm, n_cal, got[0], list(got[1])))
                rows[(m, p)].append((got[0], s["accuracy"], float(out["backbone"]) / s["expected_cost"]))
        print(f"{name}: re-split {r + 1}/{resplits} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    facts = {"n_cal": n_cal, "n_eval": n - n_cal, "best": best, "exits": right.mean(0).tolist(),
             "ensemble": None if ensemble is None else float(ensemble.mean()), "val_exits": right[: n_cal].mean(0).tolist(),
             "seconds": time.perf_counter() - t0}
    return _table(name, rows, promises, resplits, facts), _goals(rows, promises, facts), made


def drift_draws(pool_: dict, draws: int, seed: int = 1) -> dict:
    """More re-splits for the drift alarm's rates alone: the new default calibrated for `--max-drop
    0.01` and `--target-acc` best exit - 1 point on each; same shape as bench_run's ``made``."""
    right, n_cal = pool_["right"], pool_["n_cal"]
    n, K = right.shape
    pool = CascadeData(pool_["scores"], right, pool_["costs"], pool_["heads"])
    best = float(right.mean(0).max())
    promises = [("drop", 0.01), ("target", round(best - 0.01, 4))]
    rng = np.random.default_rng(seed)
    made = {("new, default", p): [] for p in promises}
    t0 = time.perf_counter()
    for r in range(draws):
        perm = rng.permutation(n)
        cal = perm[:n_cal]
        refs = {f"exit {k + 1}/{K}": right[cal, k] for k in range(K)}
        refs["ensemble"] = pool_["ensemble"][cal]
        for p in promises:
            got = _calibrate("new, default", pool.subset(cal), refs, pool_["backbone"], 10_000 + r, p)
            if got is not None:
                made[("new, default", p)].append((perm, n_cal, got[0], list(got[1])))
        if (r + 1) % 100 == 0:
            print(f"drift draws {r + 1}/{draws} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return made


def _label(p) -> str:
    return f"--max-drop {p[1]:g}" if p[0] == "drop" else f"--target-acc {p[1]:.4f}"


def _table(name, rows, promises, resplits, facts) -> list:
    ex = " / ".join(f"{100 * a:.2f}" for a in facts["exits"])
    ens = "no ensemble (simulated)" if facts["ensemble"] is None else f"ensemble {100 * facts['ensemble']:.2f} %"
    lines = [f"### {name}: {facts['n_cal']} calibration / {facts['n_eval']} evaluation images, {resplits} re-splits", "",
             f"Pool accuracy per exit {ex} %, {ens}; the `--target-acc` levels are "
             f"the pool's best single exit ({100 * facts['best']:.2f} %) - "
             + ", - ".join(f"{100 * b:g}" for b in BELOW_BEST) + " points. "
             f"{facts['seconds']:.0f} s.", "",
             "| mode | promise | made | mean promised | coverage (of made) | held (of all re-splits) "
             "| mean shortfall (points) | mean speed-up |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for m in MODES:
        for p in promises:
            made = [x for x in rows[(m, p)] if x is not None]
            if not made:
                lines.append(f"| {m} | {_label(p)} | 0/{resplits} | – | – | 100 % | – | – |")
                continue
            a = np.array(made)
            failed = int((a[:, 1] < a[:, 0]).sum())
            lines.append(f"| {m} | {_label(p)} | {len(made)}/{resplits} | {100 * a[:, 0].mean():.2f} % | "
                         f"{100 * (a[:, 1] >= a[:, 0]).mean():.0f} % | {100 * (1 - failed / resplits):.0f} % | "
                         f"{100 * (a[:, 0] - a[:, 1]).mean():+.2f} | "
                         f"{a[:, 2].mean():.2f}x |")
    return lines


def _goals(rows, promises, facts) -> dict:
    """Issue 19's goals on this run: default shortfall <= 0.5 point at every target up to the best
    exit; --confidence 0.9 coverage >= 90 %; the target certified vs the best exit's validation
    accuracy - 3 points."""
    out = {}
    worst = []
    for p in promises:
        made = [x for x in rows[("new, default", p)] if x is not None]
        if made and (p[0] == "drop" or p[1] <= facts["best"] + 1e-9):
            a = np.array(made)
            worst.append(100 * (a[:, 0] - a[:, 1]).mean())
    out["default_worst_shortfall"] = max(worst) if worst else None
    # "accuracy >= X with probability >= 0.9" is a statement over re-splits: a re-split fails it when a
    # target was certified and the evaluation part fell short of it (a refusal promises nothing). The
    # share of promises made that held (conditional coverage) is in the table too, but it is not what
    # the guarantee bounds: certification is likelier on a lucky calibration part.
    cov = []
    for p in promises:
        runs = rows[("new, --confidence 0.9", p)]
        cov.append(1 - sum(1 for x in runs if x is not None and x[1] < x[0]) / len(runs))
    out["confidence_min_coverage"] = min(cov) if cov else None
    # the highest target certified in at least half of the re-splits (not the luckiest one)
    often = [p[1] for p in promises if p[0] == "target"
             and sum(x is not None for x in rows[("new, --confidence 0.9", p)]) * 2 >= len(rows[("new, --confidence 0.9", p)])]
    out["highest_certified"] = max(often) if often else None
    # the speed-up given up for the promise: today's mode vs the new one, per promise (made ones only)
    def speed(m, p):
        made = [x[2] for x in rows[(m, p)] if x is not None]
        return float(np.mean(made)) if made else None

    out["speedup"] = [(p, kind, speed(f"today, {kind}", p), speed(f"new, {kind}", p))
                      for kind in ("default", "--confidence 0.9") for p in promises]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", type=Path, default=[], help="a fitted run folder (repeat)")
    p.add_argument("--synthetic", action="store_true", help="also a simulated cascade (600 / 2,000 images)")
    p.add_argument("--name", action="append", help="a name per --run (default: the folder's name)")
    p.add_argument("--resplits", type=int, default=50)
    p.add_argument("--cache", type=Path, default=None, help="where the exit outputs are kept (default: in each run)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "promise.md")
    p.add_argument("--drift-draws", type=int, default=1000,
                   help="extra re-splits (two promises each) for the drift alarm's rates (default 1000)")
    p.add_argument("--no-drift", dest="drift", action="store_false",
                   help="skip the drift alarm on shifted images (it puts a shifted copy of every image through the model)")
    a = p.parse_args(argv)
    names = a.name or [r.name for r in a.run]
    lines = ["# Promises on unseen data (issue 19)", "", f"CPU: {cpu_name()} ({os.cpu_count()} logical CPUs; {cpu_flags()}). `python bench/bench_promise.py` "
             f"({a.resplits} re-splits per run). Pure numpy on cached exit outputs.", ""]
    summary = []
    pools = [(name, run, lambda run=run, name=name: pool_of(run_outputs(run, (a.cache or run) / f"promise-outputs-{name}.npz")))
             for run, name in zip(a.run, names)]
    if a.synthetic:
        pools.append(("simulated cascade", None, synthetic_pool))
    drift_lines, drift_summary = [], []
    for name, run, make in pools:
        pool_ = make()
        table, goals, made = bench_run(name, pool_, a.resplits)
        lines += table + [""]
        summary.append((name, goals, 100 * pool_["val_best"]))
        if a.drift and run is not None and (Path(run) / "model.safetensors").is_file():
            t0 = time.perf_counter()
            shifted = drift_shift.shifted_outputs(run, (a.cache or run) / f"promise-shifted-v{drift_shift.VERSION}-{name}.npz",
                                                  pool_["logits"])
            results = drift_shift.bench_drift(pool_, shifted, made)
            n_eval = len(pool_["right"]) - pool_["n_cal"]
            drift_lines += drift_shift.drift_tables(name, results, _label, a.resplits, shifted, n_eval)
            many = drift_shift.bench_drift(pool_, shifted, drift_draws(pool_, a.drift_draws)) if a.drift_draws else {}
            if many:
                drift_lines += [""] + drift_shift.drift_tables(name, many, _label, a.drift_draws, shifted, n_eval,
                                                               title="the same on more re-splits")
            drift_lines += ["", f"{time.perf_counter() - t0:.0f} s (shifted outputs cached).", ""]
            drift_summary += drift_shift.goal_lines(name, drift_shift.drift_goals(many or results))
    lines += ["## Goals", ""]
    for name, g, val_best in summary:
        w, c, h = g["default_worst_shortfall"], g["confidence_min_coverage"], g["highest_certified"]
        lines.append(f"- {name}: default mode's worst mean shortfall {w:+.2f} point (goal <= 0.5): "
                     f"{'met' if w is not None and w <= 0.5 else '**not met**'}" if w is not None else f"- {name}: no default promise made")
        lines.append(f"- {name}: `--confidence 0.9` lowest share of re-splits in which the certified promise held "
                     f"{100 * c:.0f} % (goal >= 90 %): "
                     f"{'met' if c >= 0.9 else '**not met**'}" if c is not None else f"- {name}: `--confidence 0.9` certified nothing")
        if h is None:
            lines.append(f"- {name}: no `--target-acc` level was certified at 0.9 in half the re-splits")
        else:
            lines.append(f"- {name}: highest target certified at 0.9 in at least half the re-splits {100 * h:.2f} % "
                         f"vs the run's best single exit on "
                         f"validation {val_best:.2f} % - 3 = {val_best - 3:.2f} %: {'met' if 100 * h >= val_best - 3 else '**not met**'}")
        given = [f"{_label(p)} {t:.2f}x -> {n:.2f}x" for p, kind, t, n in g["speedup"] if kind == "default"
                 and t is not None and n is not None]
        lines.append(f"- {name}: speed-up given up by the new default (today -> new, mean over re-splits): " + "; ".join(given))
    lines += drift_summary
    lines += ["", "## Drift alarm", "", "On simulated exit outputs (`tests/test_drift.py`): false alarms "
              "0.7-1.1 % over 3,000 exchangeable draws at 5 sizes; fires on 100 % of draws with an issue-sized shift of "
              "the exit shares, 87 % with half of it, at 600 reference / 500 predicted images. On real shifted images:", ""]
    lines += drift_lines or ["(not run: it needs a run with a model, and not `--no-drift`)", ""]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines))
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The drift alarm on really shifted images (issue 19, part 3), for bench_promise.py.

Every pooled image (the run's validation + test files) gets a shifted copy: one of four shifts,
picked at random per image (seeded by the image's place in the pool): a rotation by an angle drawn
uniformly from -15..15 degrees, contrast x0.5 (Pillow's ImageEnhance), Gaussian pixel noise
(sigma 25 of 255 grey levels) or a Gaussian blur (radius 1 px). The copies are written as PNG files
and put through the model with the run's own eval preprocessing (the validation split's dataset,
other paths); their exit logits are cached next to the clean ones.

For each re-split bench_promise made, the drift reference is built from the calibration part
exactly as `scan calibrate` stores it (``drift.reference_from_logits``), and ``drift.check`` (what
`scan predict` runs) is asked about the evaluation part, clean and shifted, whole and at 500 images,
and about the shifted images of each kind. The shifted part's cascade accuracy is set against the
promise the calibration made.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np

from scan_cli.calibration import CascadeData, drift, summarize
from scan_cli.scoring import confidence

SHIFTS = ("rotation", "contrast", "noise", "blur")
VERSION = 1  # of the shifts above: the cache name changes with them
SUBSET = 500


def shift_image(img, kind: str, rng):
    """One shifted copy of a PIL image (mode kept)."""
    from PIL import Image, ImageEnhance, ImageFilter

    if kind == "rotation":
        return img.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR, fillcolor=0)
    if kind == "contrast":
        return ImageEnhance.Contrast(img).enhance(0.5)
    if kind == "noise":
        a = np.asarray(img, dtype=np.float32)
        return Image.fromarray(np.clip(a + rng.normal(0, 25, a.shape), 0, 255).round().astype(np.uint8), img.mode)
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(1))
    raise ValueError(kind)


def shifted_outputs(run_dir: Path, cache: Path, clean_logits, seed: int = 0) -> dict:
    """Exit logits of the shifted copies of the run's validation + test images (pool order), their
    labels and shift kinds, cached as one .npz (images under ``cache``'s stem). ``clean_logits``: the
    pool's, to check on the first images of each split that the files are read in the pool's order."""
    if cache.is_file():
        return dict(np.load(cache))
    from PIL import Image

    from scan_cli.data import make_loader, run_split
    from scan_cli.exit_outputs import collect_exit_outputs
    from scan_cli.runs import Run

    run = Run(run_dir)
    folder = cache.with_suffix("")
    model, _ = run.load("cpu")
    logits, labels, kinds, i = [], [], [], 0
    for split in ("val", "test"):
        dataset, _ = run_split(run.folder, run.info, split)
        if not hasattr(dataset, "paths"):
            raise SystemExit(f"{run_dir}: the drift part needs a run on image files (or pass --no-drift)")
        head = copy.copy(dataset)
        head.paths, head.labels = dataset.paths[:32], dataset.labels[:32]
        first = collect_exit_outputs(model, make_loader(head, batch_size=32, shuffle=False))[0].numpy()
        if not np.allclose(first, clean_logits[i:i + len(first)], atol=1e-3):
            raise SystemExit(f"the {split} files are not read in the order of the cached outputs: remove the cache")
        paths = []
        for path in dataset.paths:
            rng = np.random.default_rng([seed, i])
            kind = int(rng.integers(len(SHIFTS)))
            with Image.open(path) as img:
                out = shift_image(img.copy(), SHIFTS[kind], rng)
            target = folder / f"{i:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            out.save(target)
            paths.append(str(target))
            kinds.append(kind)
            i += 1
        shifted = copy.copy(dataset)
        shifted.paths = paths  # same labels, same eval transform
        lg, lb = collect_exit_outputs(model, make_loader(shifted, batch_size=128, shuffle=False),
                                      progress=f"shifted {split} exits")
        logits.append(lg.numpy())
        labels.append(lb.numpy())
    out = {"logits": np.concatenate(logits).astype(np.float32), "labels": np.concatenate(labels),
           "kinds": np.asarray(kinds)}
    np.savez(cache, **out)
    return out


def routed(logits, thresholds):
    """(exit index, answering score) per image under ``thresholds``, fallback last, as predict reports them."""
    n, K, _ = logits.shape
    scores = np.stack([confidence(logits[:, k], "max_softmax") for k in range(K)], axis=1)
    exits = drift.route(scores, drift._shallow(thresholds, K))
    return exits, scores[np.arange(n), exits]


def _fired(logits, thresholds, ref) -> bool:
    e, s = routed(logits, thresholds)
    return drift.check(e, s, ref, thresholds=thresholds, score="max_softmax", fallback="last")["fired"]


def cascade_data(logits, labels, costs, heads) -> CascadeData:
    scores = np.stack([confidence(logits[:, k], "max_softmax") for k in range(logits.shape[1])], axis=1)
    return CascadeData(scores, logits.argmax(-1) == labels[:, None], costs, heads)


def bench_drift(pool_: dict, shifted: dict, made: dict, seed: int = 0) -> dict:
    """Per (mode, promise): one record per re-split whose calibration made the promise: alarms on
    the clean / shifted evaluation part (all of it, its first 500, each shift kind), and the
    promised, clean and shifted accuracy and speed-up. ``made``: (mode, promise) -> [(re-split
    permutation, n_cal, promised accuracy, thresholds)]."""
    logits, labels = pool_["logits"], pool_["labels"]
    assert np.array_equal(shifted["labels"], labels), "the shifted copies are not the pooled images"
    s_logits, kinds = shifted["logits"], shifted["kinds"]
    costs, heads, backbone = pool_["costs"], pool_["heads"], pool_["backbone"]
    clean_all = cascade_data(logits, labels, costs, heads)
    shifted_all = cascade_data(s_logits, labels, costs, heads)
    out = {}
    for key, runs in made.items():
        rows = []
        for perm, n_cal, promised, thresholds in runs:
            cal, ev = perm[:n_cal], perm[n_cal:]
            t = list(thresholds) + [None]
            ref = drift.reference_from_logits(logits[cal], t, "max_softmax", "last")
            row = {"promised": promised,
                   "clean": _fired(logits[ev], t, ref), "clean500": _fired(logits[ev[:SUBSET]], t, ref),
                   "shifted": _fired(s_logits[ev], t, ref), "shifted500": _fired(s_logits[ev[:SUBSET]], t, ref)}
            for k, name in enumerate(SHIFTS):
                part = ev[kinds[ev] == k]
                row[name] = _fired(s_logits[part], t, ref)
                row[f"n_{name}"] = len(part)
                row[f"acc_{name}"] = summarize(shifted_all.subset(part), thresholds)["accuracy"]
                row[f"silent_{name}"] = row[f"acc_{name}"] < promised and not row[name]
            c, s = summarize(clean_all.subset(ev), thresholds), summarize(shifted_all.subset(ev), thresholds)
            row.update(acc_clean=c["accuracy"], acc_shifted=s["accuracy"], speed_clean=backbone / c["expected_cost"],
                       speed_shifted=backbone / s["expected_cost"], share_clean=c["exit_shares"],
                       share_shifted=s["exit_shares"])
            rows.append(row)
        out[key] = rows
    return out


def _pct(x) -> str:
    return f"{100 * x:.0f} %"


def drift_tables(name: str, results: dict, label, resplits: int, shifted: dict, n_eval: int, title=None) -> list:
    kinds = shifted["kinds"]
    counts = " / ".join(f"{SHIFTS[k]} {int((kinds == k).sum())}" for k in range(len(SHIFTS)))
    head = [f"### {name}: drift alarm on real shifted images, {resplits} re-splits", "",
            f"Every pooled image has one shifted copy ({counts} of {len(kinds)}): rotation by -15..15 degrees, "
             "contrast x0.5, Gaussian noise (sigma 25 grey levels), Gaussian blur (radius 1 px). The reference is "
             "each re-split's calibration part under the thresholds it chose (as `scan calibrate` stores it); "
             f"`drift.check` (what `scan predict` runs, alpha 0.01) is asked about the {n_eval}-image evaluation "
             f"part clean and shifted, its first {SUBSET} images, and the shifted images of each kind "
             f"(~{n_eval // len(SHIFTS)} each). Alarm rates are over the re-splits in which the promise was made.", ""]
    if title:
        head = [f"#### {name}: {title} ({resplits} re-splits, other seeds; the new default only)", ""]
    lines = head + [
             "| mode | promise | made | false alarms, clean all | clean 500 | fires, shifted all | shifted 500 | "
             + " | ".join(SHIFTS) + " |",
             "|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(SHIFTS)]
    for (m, p), rows in results.items():
        if not rows:
            continue
        r = lambda k: _pct(np.mean([x[k] for x in rows]))  # noqa: E731
        lines.append(f"| {m} | {label(p)} | {len(rows)}/{resplits} | {r('clean')} | {r('clean500')} | {r('shifted')} | "
                     f"{r('shifted500')} | " + " | ".join(r(k) for k in SHIFTS) + " |")
    lines += ["", "Accuracy of the same cascades on the shifted evaluation part, against the promise made on the "
              "clean calibration part (shortfall = promise - accuracy, points; silent = the promise fell short "
              "and the alarm on that part did not fire; per kind: the part's accuracy and in how many re-splits it "
              "fell short silently).", "",
              "| mode | promise | mean promised | clean accuracy | shifted accuracy | mean shortfall, shifted | "
              "fell short | silent | " + " | ".join(f"{k} acc." for k in SHIFTS) + " | speed-up clean -> shifted |",
              "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(SHIFTS) + "---:|"]
    for (m, p), rows in results.items():
        if not rows:
            continue
        mean = lambda k: np.mean([x[k] for x in rows])  # noqa: E731
        short = [x for x in rows if x["acc_shifted"] < x["promised"]]
        silent = sum(1 for x in short if not x["shifted"])
        lines.append(f"| {m} | {label(p)} | {100 * mean('promised'):.2f} % | {100 * mean('acc_clean'):.2f} % | "
                     f"{100 * mean('acc_shifted'):.2f} % | {100 * (mean('promised') - mean('acc_shifted')):+.2f} | "
                     f"{len(short)}/{len(rows)} | {silent}/{len(rows)} | "
                     + " | ".join(f"{100 * mean('acc_' + k):.2f} % ({sum(x['silent_' + k] for x in rows)} silent)"
                                  for k in SHIFTS)
                     + f" | {mean('speed_clean'):.2f}x -> {mean('speed_shifted'):.2f}x |")
    return lines


def drift_goals(results: dict) -> dict:
    """Over every (mode, promise, re-split) made: the false-alarm rate (clean, all and 500) and the
    firing rate on shifted parts of >= 500 images (all, 500, and each kind)."""
    rows = [x for rs in results.values() for x in rs]
    if not rows:
        return {}
    mean = lambda k: float(np.mean([x[k] for x in rows]))  # noqa: E731
    return {"n": len(rows), "false_all": mean("clean"), "false_500": mean("clean500"), "fires_all": mean("shifted"),
            "fires_500": mean("shifted500"), "fires_kind": {k: mean(k) for k in SHIFTS},
            "silent_kind": {k: mean(f"silent_{k}") for k in SHIFTS},
            "short_kind": {k: float(np.mean([x["promised"] - x[f"acc_{k}"] for x in rows])) for k in SHIFTS},
            "silent": float(np.mean([x["acc_shifted"] < x["promised"] and not x["shifted"] for x in rows])),
            "kind_sizes": (min(x[f"n_{k}"] for x in rows for k in SHIFTS), max(x[f"n_{k}"] for x in rows for k in SHIFTS))}


def wilson(rate: float, n: int, z: float = 1.96) -> tuple:
    """The 95 % Wilson interval of a proportion measured as ``rate`` over ``n`` trials."""
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def goal_lines(name: str, g: dict) -> list:
    if not g:
        return []
    ok = lambda b: "met" if b else "**not met**"  # noqa: E731
    worst_kind = min(g["fires_kind"], key=g["fires_kind"].get)

    def alarms(rate):
        lo, hi = wilson(rate, g["n"])
        return f"{100 * rate:.1f} % ({round(rate * g['n'])}/{g['n']}, 95 % interval {100 * lo:.1f}-{100 * hi:.1f} %)"

    worst = max(g["false_all"], g["false_500"])
    verdict = ("met" if worst <= 0.01 else "consistent with it (1 % inside the 95 % interval)"
               if wilson(worst, g["n"])[0] <= 0.01 else "**not met**")
    return [f"- {name}: drift false alarms on clean evaluation parts {alarms(g['false_all'])} (all) / "
            f"{alarms(g['false_500'])} ({SUBSET} images) (goal <= 1 %): {verdict}",
            f"- {name}: drift alarm fires on shifted parts {100 * g['fires_all']:.1f} % (all) / {100 * g['fires_500']:.1f} % "
            f"({SUBSET} images) (goal >= 90 % at >= 500 images): {ok(min(g['fires_all'], g['fires_500']) >= 0.9)}; per "
            f"shift kind alone ({g['kind_sizes'][0]}-{g['kind_sizes'][1]} images): "
            + ", ".join(f"{k} {100 * v:.0f} %" for k, v in g["fires_kind"].items())
            + f" (weakest: {worst_kind})",
            f"- {name}: the cascade on the shifted parts fell short of its promise without an alarm in "
            f"{100 * g['silent']:.1f} % of the checks; on {worst_kind} alone in {100 * g['silent_kind'][worst_kind]:.0f} % "
            f"(mean shortfall {100 * g['short_kind'][worst_kind]:+.2f} points there)"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)

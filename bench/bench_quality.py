"""Training quality: do the exits keep SCAN's promise? Per-exit test accuracy, mean +- std over seeds.

    python bench/bench_quality.py [--quick] [--seeds 0,1,2] [--jobs 2] [--keep DIR] [--out bench/results/quality.md]

On digits (scikit-learn's 1,797 images, the fixed 1079/359/359 split) and on a Fashion-MNIST subset
(the Debian package `dataset-fashion-mnist`, converted by bench/fashion_mnist.py: 3,000 training
images of which `scan fit` holds 10 % out for validation, and the 10,000 official test images),
`resnet10_cifar` at 16 px, the same epochs and schedule (scan fit's defaults, no recipe) for:

* plain:  the backbone alone (cross-entropy on the last exit only; the heads get no gradient), one
          learning rate for every stage;
* plain4: the same with the section past the last split at 4x the rate (`last_lr_scale = 4`), as
          the default trains it: the plain backbone trained the same way;
* ce:     multi-exit cross-entropy, no distillation, no hint, no attention;
* scan:   SCAN joint training as the paper schedules it (the deepest exit teaches, no heads phase,
          one rate);
* phased: SCAN joint, then 3 heads-only epochs on the frozen backbone (`heads_epochs = 3`);
* onerate: the previous default (below, with one learning rate for every stage);
* default: `scan fit`'s default since issue 22: the ensemble of exits teaches, the section past the
          last split learns at 4x the rate, then a heads phase of 0.3x the joint epochs in which
          that section learns too;
* heads:  SCAN heads-only (`--mode heads`) on the plain run's weights (`--weights`);
* heads4: the same on the plain4 run's weights;
* paper:  SCAN with the paper's exact loss (`--loss paper`), digits only.

Every run is a real `scan fit` in its own process (1 thread each, `--jobs` at a time); the test
split is only ever read for these numbers. The goals of issues 9 and 22 are checked at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the plain backbone: cross-entropy on the last exit only, no heads phase
PLAIN = {"kd": False, "feature_hint": False, "attention": False, "exit_weights": [0.0, 0.0, 0.0], "heads_epochs": 0}
VARIANTS = {  # name: (description, recipe keys)
    # heads_epochs = 0 and last_lr_scale = 1: these rows are what they say (the heads phase and the last
    # section's own rate became defaults, issue 22)
    "plain": ("plain backbone (CE on the last exit only)", {**PLAIN, "last_lr_scale": 1.0}),
    "plain4": ("plain backbone, the last section at 4x lr (`last_lr_scale = 4`)", {**PLAIN, "last_lr_scale": 4.0}),
    "ce": ("multi-exit CE (no KD, hint or attention)",
           {"kd": False, "feature_hint": False, "attention": False, "heads_epochs": 0, "last_lr_scale": 1.0}),
    "scan": ("SCAN joint (deepest-exit teacher, no heads phase)",
             {"heads_epochs": 0, "kd_teacher": "last", "last_lr_scale": 1.0}),
    "phased": ("SCAN joint + 3 heads-only epochs (`heads_epochs = 3`)",
               {"heads_epochs": 3, "kd_teacher": "last", "heads_last": False, "last_lr_scale": 1.0}),
    "onerate": ("the previous default: one learning rate for every stage (`last_lr_scale = 1`)", {"last_lr_scale": 1.0}),
    "default": ("`scan fit`'s default (ensemble teacher, last section at 4x lr, heads phase with the last section)", {}),
    "heads": ("SCAN heads-only on the plain run's weights", {"mode": "heads"}),
    "heads4": ("SCAN heads-only on the weights of the plain run with the last section at 4x lr", {"mode": "heads"}),
    "paper": ("SCAN, the paper's loss (`--loss paper`)", {"loss": "paper", "heads_epochs": 0}),
}


VARIANT_SHORT = {"scan": "joint", "heads": "heads-only on plain", "heads4": "heads-only on plain 4x"}
HEADS_ON = {"heads": "plain", "heads4": "plain4"}  # heads-only variants: the plain run whose weights they take


def _toml(keys: dict) -> str:
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())


def _fit(backbone: str, data: str, img_size: int, epochs: int, seed: int, keys: dict, out: Path,
         weights: Path | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    recipe = out.parent / f"{out.name}.toml"
    recipe.write_text(_toml(keys))
    cmd = [sys.executable, "-m", "scan_cli", "fit", backbone, "--recipe", str(recipe), "--data", data,
           "--img-size", str(img_size), "--epochs", str(epochs), "--seed", str(seed), "--workers", "0",
           "--out", str(out / "run"), "--json"]
    if weights is not None:
        cmd += ["--weights", str(weights)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", SCAN_RUNS_DIR=str(out / "runs"),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"scan fit failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
    doc = json.loads(res.stdout)
    doc["seconds"] = time.perf_counter() - t
    doc["run_dir"] = str(out / "run")
    return doc


def run_dataset(name: str, data: str, variants: list[str], seeds: list[int], epochs: int, jobs: int, work: Path,
                backbone: str = "resnet10_cifar", img_size: int = 16) -> dict:
    """{variant: [fit summary per seed]}; heads runs start from the same seed's plain run."""
    results: dict = {v: [None] * len(seeds) for v in variants}

    def job(variant: str, i: int):
        seed = seeds[i]
        weights = None
        if variant in HEADS_ON:
            weights = Path(results[HEADS_ON[variant]][i]["run_dir"]) / "model.safetensors"
        doc = _fit(backbone, data, img_size, epochs, seed, VARIANTS[variant][1], work / name / f"{variant}-{seed}", weights)
        results[variant][i] = doc
        accs = " ".join(f"{100 * a:.2f}" for a in doc["test"]["exits"])
        print(f"{name} {variant} seed {seed}: {accs}  ({doc['seconds']:.0f} s)", flush=True)

    first = [(v, i) for i in range(len(seeds)) for v in variants if v not in HEADS_ON]
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda a: job(*a), first))
        list(pool.map(lambda a: job(*a), [(v, i) for i in range(len(seeds)) for v in variants if v in HEADS_ON]))
    return results


def _stats(values):
    values = [100 * v for v in values]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(name: str, results: dict) -> list[str]:
    K = len(next(iter(results.values()))[0]["test"]["exits"])
    n_test = next(iter(results.values()))[0]["split_sizes"].get("test")
    lines = [f"### {name} (test split, {n_test} images; accuracy in %, mean ± std over {len(next(iter(results.values())))} seeds)", "",
             "| variant | " + " | ".join(f"exit {k + 1}/{K}" for k in range(K)) + " | ensemble | time per run |",
             "|---|" + "---:|" * (K + 2)]
    for v, docs in results.items():
        cells = []
        for k in range(K):
            if v.startswith("plain") and k < K - 1:  # one exit trained
                cells.append("–")
                continue
            m, s = _stats([d["test"]["exits"][k] for d in docs])
            cells.append(f"{m:.2f} ± {s:.2f}")
        em, es = _stats([d["test"]["ensemble"] for d in docs])
        ens = "–" if v.startswith("plain") else f"{em:.2f} ± {es:.2f}"
        secs = statistics.mean(d["seconds"] for d in docs)
        lines.append(f"| {VARIANTS[v][0]} | " + " | ".join(cells) + f" | {ens} | {secs:.0f} s |")
    return lines


def goals(name: str, results: dict, digits: bool) -> list[str]:
    """Issue 9's goals, each with the measured numbers and met / not met."""
    mean = lambda v, k: statistics.mean(100 * d["test"]["exits"][k] for d in results[v])  # noqa: E731
    K = len(results["scan"][0]["test"]["exits"])
    out = [f"Goals on {name}:", ""]

    def line(ok, text):
        out.append(f"- {'met' if ok else '**not met**'}: {text}")

    if "plain" in results:
        a, b = mean("scan", K - 1), mean("plain", K - 1)
        line(a >= b - 0.3, f"SCAN's deepest exit {a:.2f} vs the plain backbone {b:.2f} (goal >= plain - 0.3)")
    if "ce" in results:
        worse = [(k + 1, mean("scan", k), mean("ce", k)) for k in range(K - 1) if mean("scan", k) < mean("ce", k)]
        line(not worse, "SCAN's shallow exits >= multi-exit CE at every exit: " + (
            "; ".join(f"exit {k}: {a:.2f} vs {b:.2f}" for k, a, b in worse) if worse else
            ", ".join(f"{mean('scan', k):.2f} vs {mean('ce', k):.2f}" for k in range(K - 1))))
    best = max(range(K), key=lambda k: mean("scan", k))
    line(mean("scan", K - 1) >= mean("scan", best) - 0.5,
         f"deepest exit {mean('scan', K - 1):.2f}, best single exit {best + 1} at {mean('scan', best):.2f} (goal: within 0.5)")
    if digits:
        line(mean("scan", K - 1) >= 95.0, f"defaults without a recipe reach {mean('scan', K - 1):.2f} % on digits (last exit; goal >= 95)")
    if "heads" in results and "plain" in results:
        same = all(h["test"]["exits"][K - 1] == p["test"]["exits"][K - 1] for h, p in zip(results["heads"], results["plain"]))
        line(same, "heads-only: deepest exit identical to the given weights' accuracy in every seed" if same else
             "heads-only: deepest exit differs from the given weights")
        gaps = [mean("scan", k) - mean("heads", k) for k in range(K - 1)]
        line(max(gaps) <= 1.0, "heads-only shallow exits within 1 point of joint SCAN: gaps " +
             ", ".join(f"{g:+.2f}" for g in gaps))
    return out


def goals_default(name: str, results: dict) -> list[str]:
    """Issue 22's goals for the default schedule (needs scan, default, heads and plain)."""
    mean = lambda v, k: statistics.mean(100 * d["test"]["exits"][k] for d in results[v])  # noqa: E731
    K = len(results["default"][0]["test"]["exits"])
    out = [f"Goals of issue 22 on {name} (`scan fit`'s default):", ""]

    def line(ok, text):
        out.append(f"- {'met' if ok else '**not met**'}: {text}")

    others = [v for v in ("scan", "heads", "heads4") if v in results]  # heads4: on the better plain weights
    ref = [max(mean(v, k) for v in others) for k in range(K)]
    gaps = [mean("default", k) - ref[k] for k in range(K)]
    line(min(gaps) >= -0.3, f"every exit >= max({', '.join(VARIANT_SHORT[v] for v in others)}) - 0.3: gaps "
         + ", ".join(f"{g:+.2f}" for g in gaps))
    best = max(range(K), key=lambda k: mean("default", k))
    line(mean("default", K - 1) >= mean("default", best) - 1.0,
         f"deepest exit {mean('default', K - 1):.2f}, best single exit {best + 1} at {mean('default', best):.2f} (goal: within 1)")
    line(mean("default", K - 1) >= mean("plain", K - 1) + 0.5,
         f"deepest exit {mean('default', K - 1):.2f} vs plain {mean('plain', K - 1):.2f} (goal: plain + 0.5)")
    if "plain4" in results:  # the plain backbone with the default's faster last section: trained the same way
        line(mean("default", K - 1) >= mean("plain4", K - 1) + 0.5,
             f"deepest exit {mean('default', K - 1):.2f} vs plain with the last section at 4x lr "
             f"{mean('plain4', K - 1):.2f} (goal: plain + 0.5)")
    ratios = [phase_time_ratio(d) for d in results["default"]]
    line(max(ratios) <= 1.3, f"time {min(ratios):.2f}-{max(ratios):.2f}x joint SCAN's for the same backbone epochs "
         "(all epochs / the joint ones, within each run) (goal <= 1.3x)")
    return out


def phase_time_ratio(doc: dict) -> float:
    """A run's training time over its joint epochs' time: what the heads phase adds to joint SCAN's
    time for the same backbone epochs. Taken within one run, so other load on the machine cancels
    (wall time per run across runs does not: processes run 2 at a time next to others)."""
    joint = sum(h["seconds"] for h in doc["history"] if h.get("phase") == "joint")
    return sum(h["seconds"] for h in doc["history"]) / joint


def run(quick: bool = False, seeds=(0, 1, 2), jobs: int = 2, keep: Path | None = None,
        fashion_train: int = 3000, epochs: int = 10, fashion_img_size: int = 16, fashion_epochs: int | None = None,
        fashion_test: int = 10000, skip_digits: bool = False) -> list[str]:
    """The benchmark; returns its markdown section (``quick``: 1 seed, 3 epochs, 1,000 images)."""
    sys.path.insert(0, str(HERE))
    from fashion_mnist import IDX_DIR, write_folder

    if quick:
        seeds, epochs, fashion_train = (0,), 3, 1000
    fashion_epochs = fashion_epochs or epochs
    seeds = list(seeds)
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="scan-quality-"))
    t0 = time.perf_counter()
    sections = []
    if not skip_digits:
        digits = run_dataset("digits", "digits", ["plain", "plain4", "ce", "scan", "default", "paper", "heads", "heads4"],
                             seeds, epochs, jobs, work)
        sections += [[f"digits: `resnet10_cifar` at 16 px, {epochs} epochs."], table("digits", digits),
                     goals("digits", digits, digits=True), goals_default("digits", digits)]
    if (IDX_DIR / "train-images-idx3-ubyte.gz").is_file():
        folder = write_folder(work / f"fashion-mnist-{fashion_train}-{fashion_test}", n_train=fashion_train,
                              n_test=fashion_test)
        fashion = run_dataset("fashion-mnist", str(folder), ["plain", "plain4", "ce", "scan", "default", "heads", "heads4"],
                              seeds, fashion_epochs, jobs, work, img_size=fashion_img_size)
        sections += [[f"Fashion-MNIST: `resnet10_cifar` at {fashion_img_size} px, {fashion_epochs} epochs."],
                     table(f"Fashion-MNIST, {fashion_train} training images", fashion),
                     goals("Fashion-MNIST", fashion, digits=False), goals_default("Fashion-MNIST", fashion)]
    else:
        sections.append(["Fashion-MNIST skipped: `apt-get install dataset-fashion-mnist` to include it."])
    lines = ["`scan fit`'s defaults otherwise (no recipe: SGD, lr scaled to the batch, warm-up + cosine, "
             "pad-and-crop); every run a real `scan fit` process with 1 thread, "
             f"{jobs} at a time. Wall time {time.perf_counter() - t0:.0f} s.", ""]
    for s in sections:
        lines += s + [""]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--fashion-train", type=int, default=3000)
    p.add_argument("--fashion-test", type=int, default=10000)
    p.add_argument("--fashion-img-size", type=int, default=16)
    p.add_argument("--fashion-epochs", type=int, default=None, help="default: --epochs")
    p.add_argument("--skip-digits", action="store_true")
    p.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder")
    p.add_argument("--out", type=Path, default=HERE / "results" / "quality.md")
    a = p.parse_args()
    sys.path.insert(0, str(HERE))
    from bench_train import append_results, machine

    lines = run(a.quick, [int(s) for s in a.seeds.split(",")], a.jobs, a.keep, a.fashion_train, a.epochs,
                a.fashion_img_size, a.fashion_epochs, a.fashion_test, a.skip_digits)
    head = [f"## Training quality ({time.strftime('%Y-%m-%d')}{', quick' if a.quick else ''})", "",
            f"Machine: {machine()}. Command: `python bench/bench_quality.py{' --quick' if a.quick else ''}`.", ""]
    append_results(a.out, "# Training quality: every exit vs the plain backbone", head + lines)


if __name__ == "__main__":
    main()

"""The paper's ablation on the digits recipe: per-exit test accuracy with and without distillation
and attention.

    python bench/bench_ablation.py [--recipe digits-cpu] [--epochs N] [--seed 0]

Runs `scan fit` once per variant (same recipe, seed and data split) and writes a table to
bench/results/ablation.md with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = [
    ("SCAN (KD + hint + attention)", []),
    ("no distillation (--no-kd --no-hint)", ["--no-kd", "--no-hint"]),
    ("no attention", ["--no-attention"]),
    ("neither", ["--no-kd", "--no-hint", "--no-attention"]),
]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_train import append_results, machine

    p = argparse.ArgumentParser()
    p.add_argument("--recipe", default="digits-cpu")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/ablation.md")
    a = p.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in VARIANTS:
            cmd = [sys.executable, "-m", "scan_cli", "fit", "--recipe", a.recipe, "--seed", str(a.seed),
                   "--out", str(Path(tmp) / f"variant{len(rows)}"), "--json", *flags]
            if a.epochs:
                cmd += ["--epochs", str(a.epochs)]
            t = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                sys.exit(f"{name}: scan fit failed:\n{res.stderr[-2000:]}")
            doc = json.loads(res.stdout)
            rows.append((name, flags, doc, time.perf_counter() - t))
            print(name, [round(100 * x, 2) for x in doc["test"]["exits"]], flush=True)

    K = len(rows[0][2]["test"]["exits"])
    lines = [f"## Ablation: `{a.recipe}` recipe, seed {a.seed}" + (f", {a.epochs} epochs" if a.epochs else ""), "",
             f"Machine: {machine()}. Command: `python bench/bench_ablation.py --recipe {a.recipe}`.",
             f"Test split: {rows[0][2]['split_sizes'].get('test')} images, never used for training or selection. "
             "Accuracy in %.", "",
             "| variant | " + " | ".join(f"exit {k + 1}/{K}" for k in range(K)) + " | ensemble | train time |",
             "|---|" + "---:|" * (K + 2)]
    for name, _, doc, seconds in rows:
        t = doc["test"]
        lines.append(f"| {name} | " + " | ".join(f"{100 * x:.2f}" for x in t["exits"]) +
                     f" | {100 * t['ensemble']:.2f} | {seconds:.0f} s |")
    append_results(Path(a.out), "# Ablation (SCAN paper, Table style)", lines)


if __name__ == "__main__":
    main()

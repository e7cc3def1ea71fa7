"""Start-up cost of the commands that should not need torch, timm or a model (issue 10's goals).

    python bench/bench_startup.py [--repeats 5] [--out FILE] [--work DIR] [--quick]

Times, each as the median of --repeats fresh processes: `scan --help` (goal < 0.5 s), a misspelled
backbone in `scan fit` (< 1.5 s, after timm's model list was recorded once), a bad flag value
(< 1.5 s), and `scan calibrate` on a run whose exit outputs and MACs are cached (< 3 s; the run is a
1-epoch digits run trained here first, and calibrated once to fill its caches); and issue 24's first
mistakes in `scan fit` (each < 1.5 s: answered before torch or timm is imported).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS = {"scan --help": 0.5, "unknown backbone (scan fit resnet5O)": 1.5, "bad flag (scan fit resnet18 --lr -1)": 1.5,
         "scan calibrate on a cached run": 3.0}
# issue 24: a user's first mistakes in `scan fit`, answered before torch or timm is imported
FIRST_MISTAKES = {
    "missing folder (fit resnet50 --data /nonexistent/folder)": ["resnet50", "--data", "/nonexistent/folder"],
    "imagenet not cached, offline (fit resnet50 --data imagenet)": ["resnet50", "--data", "imagenet"],
    "cifar10 offline (fit test_resnet --data cifar10)": ["test_resnet", "--data", "cifar10"],
    "empty folder (fit test_resnet --data EMPTY)": ["test_resnet", "--data", "{empty}"],
    "bad split (fit test_resnet --data digits --splits bogus)": ["test_resnet", "--data", "digits", "--splits", "bogus"],
    "weights not cached, offline (fit resnet50 --pretrained)": ["resnet50", "--pretrained", "--data", "digits"],
}
GOALS.update({name: 1.5 for name in FIRST_MISTAKES})


def _time(cmd, env, repeats: int) -> tuple[float, float, int]:
    times, code = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        code = subprocess.run(cmd, capture_output=True, env=env).returncode
        times.append(time.perf_counter() - t)
    return statistics.median(times), max(times), code


def run(repeats: int = 5, work: Path | None = None) -> list[str]:
    work = Path(work or tempfile.mkdtemp(prefix="scan-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    hf = work / "hf-empty"  # "not cached" rows: empty Hugging Face caches
    env = dict(os.environ, SCAN_RUNS_DIR=str(work / "runs"), SCAN_CACHE_DIR=str(work / "cache"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", HF_HOME=str(hf), HF_HUB_CACHE=str(hf / "hub"), HF_DATASETS_CACHE=str(hf / "datasets"))
    (work / "empty").mkdir(exist_ok=True)
    scan = [sys.executable, "-m", "scan_cli"]
    run_dir = work / "digits-run"
    if not (run_dir / "model.safetensors").is_file():
        subprocess.run(scan + ["fit", "--recipe", "digits-cpu", "--epochs", "1", "--out", str(run_dir)], env=env,
                       capture_output=True, check=True)
    calibrate = scan + ["calibrate", "--run", str(run_dir), "--max-drop", "0.01", "--dry-run"]
    subprocess.run(calibrate, env=env, capture_output=True, check=True)  # fills the caches
    subprocess.run(scan + ["fit", "resnet50", "--print-recipe"], env=env, capture_output=True, check=True)  # timm's list
    cases = {"scan --help": scan + ["--help"],
             "unknown backbone (scan fit resnet5O)": scan + ["fit", "resnet5O"],
             "bad flag (scan fit resnet18 --lr -1)": scan + ["fit", "resnet18", "--lr", "-1"],
             "scan calibrate on a cached run": calibrate}
    cases.update({name: scan + ["fit"] + [a.replace("{empty}", str(work / "empty")) for a in args]
                  for name, args in FIRST_MISTAKES.items()})
    lines = [f"Median (max) wall time of {repeats} fresh processes each; `python -m scan_cli` = the `scan` command.", "",
             "| command | median s | max s | exit code | goal | met |", "|---|---:|---:|---:|---:|---|"]
    for name, cmd in cases.items():
        med, worst, code = _time(cmd, env, repeats)
        goal = GOALS[name]
        lines.append(f"| {name} | {med:.2f} | {worst:.2f} | {code} | < {goal} s | {'yes' if med < goal else '**no**'} |")
        print(f"{name}: {med:.2f} s (max {worst:.2f}), exit {code}", file=sys.stderr)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="2 repeats")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "startup.md")
    a = p.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_train import append_results, machine

    lines = run(2 if a.quick else a.repeats, a.work)
    head = [f"## Start-up ({time.strftime('%Y-%m-%d')})", "", f"Machine: {machine()}; load {os.getloadavg()[0]:.2f}.", ""]
    append_results(a.out, "# Start-up time", head + lines)


if __name__ == "__main__":
    main()

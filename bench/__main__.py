"""Every benchmark the issues ask for, in one run: `python -m bench [--quick] [--only NAMES]`.

Writes bench/RESULTS.md: the machine, its load before and after, the versions and the date, then one
section per benchmark (each also keeps its own file in bench/results/ when run on its own). Every
benchmark runs in its own process, so one cannot disturb the next through memory or threads.

    python -m bench                 # everything (about 1.5-2 hours on 2 CPU cores, most of it training)
    python -m bench --quick         # a smoke run of everything (minutes): numbers only show it works
    python -m bench --only startup,predict --work /tmp/scan-bench

Benchmarks (in order): startup, calibration (threshold search), quality (training quality, issue 9;
it also trains the Fashion-MNIST run the next ones use), predict (early exit vs the plain timm model:
model only and from files, per-exit time vs MACs, `--thresholds none`), latency (per-exit time at
batch 1 and 64 on resnet50 and resnet18_cifar), onnx (ONNX Runtime cascade vs ORT plain vs the
PyTorch engine), int8 (`--quantize int8` pieces vs float32 on resnet50; on the Fashion-MNIST run the
int8 vs float32 cascade's test accuracy and promises, and the ONNX engine from files at batch 64),
train (training throughput).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["startup", "calibration", "quality", "promise", "predict", "latency", "onnx", "int8", "train"]


def machine() -> dict:
    sys.path.insert(0, str(HERE))
    from common import cpu_name

    cpu = cpu_name()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {"cpu": cpu, "cores": cores, "python": platform.python_version(), "platform": platform.platform()}


def versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("scan-cli", "torch", "timm", "numpy", "onnxruntime", "onnx", "fvcore"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def load() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _python() -> str:
    return sys.executable


def fashion_run(work: Path, quick: bool) -> Path | None:
    """A calibrated SCAN run on Fashion-MNIST for the predict and onnx benchmarks: the quality
    benchmark's seed-0 run when it is there, else one trained here, calibrated to a target half a
    point below the best validation accuracy any thresholds reach."""
    sys.path.insert(0, str(HERE))
    from fashion_mnist import IDX_DIR, write_folder

    kept = work / "quality" / "fashion-mnist" / "scan-0" / "run"
    run = kept if (kept / "model.safetensors").is_file() else work / "fashion-run"
    if not (run / "model.safetensors").is_file():
        if not (IDX_DIR / "train-images-idx3-ubyte.gz").is_file():
            return None
        data = write_folder(work / "fashion-mnist-3000", n_train=1000 if quick else 3000, n_test=2000 if quick else 10000)
        _call([_python(), "-m", "scan_cli", "fit", "resnet10_cifar", "--data", str(data), "--img-size", "16",
               "--epochs", "2" if quick else "10", "--out", str(run), "--workers", "0"], work / "fashion-run.log")
    # a target near the top of the validation front, as a user would ask for. Where the shallow exits
    # are as accurate as the last (this run), the cheapest thresholds send nearly every image out at
    # exit 1; the predict benchmark therefore also times a fixed spread mix (--run-mix)
    res = subprocess.run([_python(), "-m", "scan_cli", "calibrate", "--run", str(run), "--max-drop", "0.5", "--json",
                          "--dry-run"], capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if res.returncode != 0:
        raise SystemExit(f"calibrating {run} failed: {res.stderr[-500:]}")
    best = max(p["accuracy"] for p in json.loads(res.stdout)["pareto"])
    _call([_python(), "-m", "scan_cli", "calibrate", "--run", str(run), "--target-acc", f"{best - 0.005:.4f}"],
          work / "fashion-calibrate.log")
    return run


def _call(cmd, log: Path) -> None:
    with open(log, "a") as f:
        f.write("+ " + " ".join(map(str, cmd)) + "\n")
        f.flush()
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed (exit {res.returncode}): see {log}")


def commands(name: str, quick: bool, work: Path, out: Path) -> list | None:
    """The command that runs one benchmark and writes its markdown section to ``out``."""
    py, q = _python(), (["--quick"] if quick else [])
    if name == "startup":
        return [py, str(HERE / "bench_startup.py"), "--out", str(out), "--work", str(work / "startup"), *q]
    if name == "calibration":
        sizes = "360,2000" if quick else "360,2000,10000"
        return [py, str(HERE / "bench_calibration.py"), "--sizes", sizes, "--out", str(out)]
    if name == "quality":
        return [py, str(HERE / "bench_quality.py"), "--keep", str(work / "quality"), "--out", str(out), *q]
    if name == "promise":  # promises on re-splits of unseen data (issue 19): the Fashion-MNIST run + a simulated cascade
        run = fashion_run(work, quick)
        args = [py, str(HERE / "bench_promise.py"), "--out", str(out), "--synthetic"] + (["--resplits", "5"] if quick else [])
        return args + ([] if run is None else ["--run", str(run), "--name", "fashion-mnist"])
    if name in ("predict", "onnx"):
        run = fashion_run(work, quick)
        script = "bench_predict.py" if name == "predict" else "bench_onnx.py"
        args = [py, str(HERE / script), "--out", str(out), *q]
        if run is None:
            return args
        return args + ["--run", str(run)] + (["--run-mix", "0.4,0.3,0.2,0.1"] if name == "predict" else [])
    if name == "int8":  # issue 21: int8 pieces on resnet50; accuracy and from-files timing on the Fashion-MNIST run
        run = fashion_run(work, quick)
        args = [py, str(HERE / "bench_int8.py"), "--out", str(out), *q]
        return args + ([] if run is None else ["--run", str(run)])
    if name == "latency":
        return [py, str(HERE / "bench_latency.py"), "--out", str(out), *q]
    if name == "train":
        return [py, str(HERE / "bench_train.py"), "--out", str(out), "--channels-last"] + (["--steps", "2"] if quick else [])
    raise SystemExit(f"unknown benchmark {name!r}: choose from {', '.join(ORDER)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run of every benchmark (minutes)")
    p.add_argument("--only", default=",".join(ORDER), help=f"comma-separated subset of {','.join(ORDER)}")
    p.add_argument("--work", type=Path, default=None, help="keep runs and logs here (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    a = p.parse_args(argv)
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}: choose from {', '.join(ORDER)}")
    import tempfile

    work = a.work or Path(tempfile.mkdtemp(prefix="scan-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started, load_before = time.strftime("%Y-%m-%d %H:%M %Z"), load()
    sections, failed = [], []
    for name in sorted(names, key=ORDER.index):
        out = work / f"{name}.md"
        out.unlink(missing_ok=True)
        t = time.perf_counter()
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            cmd = commands(name, a.quick, work, out)
            _call(cmd, work / f"{name}.log")
            body = out.read_text() if out.exists() else "(the benchmark wrote nothing)"
        except SystemExit as exc:
            failed.append(name)
            body = f"**failed**: {exc}"
        sections.append(f"## {name} ({time.perf_counter() - t:.0f} s)\n\n{body.strip()}\n")
    m, v = machine(), versions()
    header = [
        "# Benchmark results" + (" (quick smoke run: not for reading numbers)" if a.quick else ""), "",
        f"`python -m bench{' --quick' if a.quick else ''}{'' if a.only == ','.join(ORDER) else ' --only ' + a.only}`, "
        f"started {started}.", "",
        f"- Machine: {m['cpu']}, {m['cores']} cores usable, {m['platform']}, Python {m['python']}; no GPU used.",
        f"- Load average (1, 5, 15 min): {load_before} before, {load()} after. Ratios come from interleaved runs "
        "in one process, so a busy neighbour slows both sides alike; absolute times do not.",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        f"- Work folder: {work} (runs, logs).", "",
    ]
    a.out.write_text("\n".join(header) + "\n" + "\n".join(sections))
    print(f"wrote {a.out}" + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    (work / "summary.json").write_text(json.dumps({"failed": failed, "sections": names}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

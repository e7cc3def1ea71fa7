"""`bench_int8.py --run DIR`: issue 21's numbers on a trained run (see bench_int8's docstring).

* ``accuracy``: per --max-drop, on a copy of the run calibrated for it, the float32 cascade (its float
  export) and the int8 cascade (`quantize_run`, as `scan export --quantize int8`) on the test split;
  the promise each states (`target.promise.accuracy`) against the test accuracy.
* ``files``: the ONNX engine from image files at batch 64: `onnx_engine.predict_paths` with the float32
  and the int8 export vs plain.onnx (float32, and int8 quantized as the pieces are) through the same
  input pipeline (`inference.preprocess.batches`, `Preprocessing.normalize`), interleaved; then the
  whole `scan predict FOLDER --run EXPORT --batch-size 64` process vs a process running plain.onnx
  the same way (start-up, imports and session creation included).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLAIN_SCRIPT = """
import sys, numpy as np, onnxruntime as ort
from pathlib import Path
from scan_cli.data.images import find_images
from scan_cli.inference.manifest import read
from scan_cli.inference.onnx_engine import session_options
from scan_cli.inference.preprocess import Preprocessing, batches
folder, images, batch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
pre = Preprocessing.from_manifest(read(folder, graphs=False))
session = ort.InferenceSession(str(folder / sys.argv[4]), session_options(), providers=["CPUExecutionProvider"])
n = 0
for indices, x, errors in batches(find_images([images]), pre, batch, threads=1):
    if x is not None:
        n += int(session.run(None, {"image": pre.normalize(x)})[0].argmax(-1).size)
print(n)
"""


def load() -> list:
    return [round(v, 2) for v in os.getloadavg()]


def test_tensors(run_dir: Path):
    """The run's test split as the run's eval transform gives it: numpy (x [n, 3, S, S], y [n])."""
    import numpy as np

    from scan_cli.data import make_loader, run_split
    from scan_cli.data.dataset import SkippedImages
    from scan_cli.runs import Run

    run = Run.open(str(run_dir))
    dataset, _ = run_split(run.folder, run.info, "test")
    xs, ys = [], []
    for x, y in make_loader(dataset, batch_size=256, shuffle=False, skipped=SkippedImages()):
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def cascade_on(folder: Path, x, y, thresholds, score: str, fallback: str) -> dict:
    """An export's cascade on (x, y): accuracy, exit shares, counted speed-up."""
    import numpy as np

    from scan_cli.inference.onnx_engine import Cascade

    cascade = Cascade(folder)
    exits, right = [], []
    for i in range(0, len(x), 64):
        out = cascade.early_exit(x[i:i + 64], thresholds, score, fallback)
        exits.append(out.exit_index)
        right.append(out.logits.argmax(-1) == y[i:i + 64])
    exits, right = np.concatenate(exits), np.concatenate(right)
    macs = cascade.manifest["macs"]
    avg = float(np.mean(np.asarray(macs["exits_cumulative"], dtype=float)[exits]))
    return {"accuracy": float(right.mean()), "exit_shares": (np.bincount(exits, minlength=cascade.num_exits) / len(x)).tolist(),
            "counted_speedup": macs["backbone"] / avg, "thresholds": list(thresholds),
            "heads": [p["logits"] is not None for p in cascade.pieces[:-1]]}


def accuracy_case(run_dir: Path, max_drop: float, work: Path, x, y) -> tuple:
    """(row, float export folder, int8 export folder, float policy, int8 policy) for one --max-drop."""
    from scan_cli.calibration.run import calibrate_run
    from scan_cli.inference.export import export_model
    from scan_cli.inference.quantize import quantize_run
    from scan_cli.policy import Calibration
    from scan_cli.runs import Run

    copy = work / f"run-{max_drop:g}"
    shutil.copytree(run_dir, copy, symlinks=True)
    doc = calibrate_run(copy, max_drop=max_drop)
    run = Run.open(str(copy))
    K = run.num_exits
    policy = Calibration.from_metadata(run.info.calibration, K).policy()
    model, info = run.load()
    f32 = work / f"f32-{max_drop:g}"
    export_model(model, info, f32, plain=True, cache_dir=run.cache_dir)  # the float export, plus plain.onnx
    i8 = work / f"int8-{max_drop:g}"
    manifest = quantize_run(run, i8)
    i8_policy = Calibration.from_metadata(manifest, K).policy()
    f = cascade_on(f32, x, y, policy.thresholds, policy.score, policy.fallback)
    q = cascade_on(i8, x, y, i8_policy.thresholds, i8_policy.score, i8_policy.fallback)
    f["promise"] = doc["target"]["promise"]
    q["promise"] = manifest["quantization"]["operating_point"]["target"]["promise"]
    f["val_accuracy"], q["val_accuracy"] = doc["val_accuracy"], manifest["quantization"]["operating_point"]["val_accuracy"]
    return {"max_drop": max_drop, "n_test": int(len(y)), "n_val": int(doc["n_val"]), "float32": f, "int8": q}, f32, i8, policy, i8_policy


def files_case(run_dir: Path, f32: Path, i8: Path, policies: dict, batch: int, repeats: int, work: Path) -> dict:
    """The ONNX engine from files at ``batch``: cascades vs plain.onnx through the same pipeline."""
    import numpy as np
    import onnxruntime as ort

    from bench_predict import interleaved, test_files
    from scan_cli.inference.onnx_engine import Cascade, predict_paths, session_options
    from scan_cli.inference.plan import workers_for
    from scan_cli.inference.preprocess import Preprocessing, batches
    from scan_cli.inference.quantize import _quantize_piece, _validation
    from scan_cli.runs import Run

    run = Run.open(str(run_dir))
    paths, labels = test_files(run.folder, run.info, work / "test-files")
    workers = workers_for(None, len(paths), batch)
    sample = []  # int8 plain.onnx: ranges from the first 256 validation images, as the pieces'
    for xb, _ in _validation(run):
        sample.append(xb)
        if sum(len(b) for b in sample) >= 256:
            break
    _quantize_piece(f32 / "plain.onnx", i8 / "plain.onnx", "image", sample)
    cascades = {"float32": Cascade(f32), "int8": Cascade(i8)}
    pre = Preprocessing.from_manifest(cascades["float32"].manifest)
    plains = {p: ort.InferenceSession(str(folder / "plain.onnx"), session_options(), providers=["CPUExecutionProvider"])
              for p, folder in (("float32", f32), ("int8", i8))}

    def cascade_fn(p):
        return lambda: predict_paths(cascades[p], paths, policies[p], batch_size=batch, workers=workers, progress=False)

    def plain_fn(p):
        def go():
            preds = {}
            for indices, images, _ in batches(paths, pre, batch, threads=max(1, workers)):
                if images is not None:
                    logits = plains[p].run(None, {"image": pre.normalize(images)})[0]
                    for i, c in zip(indices, logits.argmax(-1).tolist()):
                        preds[i] = c
            return preds
        return go

    fns = {"plain float32": plain_fn("float32"), "cascade float32": cascade_fn("float32"),
           "plain int8": plain_fn("int8"), "cascade int8": cascade_fn("int8")}
    load_start = load()
    times, outs = interleaved(fns, repeats)  # a warm-up call each (sessions, page cache), then rounds
    load_mid = load()
    rows = {}
    y = np.asarray(labels)
    for p in ("float32", "int8"):
        report = outs[f"cascade {p}"]
        counted = report.summary["counted_speedup"]  # plain MACs / the cascade's average on these images
        best = min(times[f"plain {p}"]) / min(times[f"cascade {p}"])
        med = statistics.median(times[f"plain {p}"]) / statistics.median(times[f"cascade {p}"])
        index = {str(path): i for i, path in enumerate(paths)}
        right = [pr.class_index == y[index[pr.path]] for pr in report.predictions]
        plain_preds = outs[f"plain {p}"]
        rows[p] = {"cascade_s": min(times[f"cascade {p}"]), "plain_s": min(times[f"plain {p}"]),
                   "realised": best, "realised_median": med, "counted": counted, "realised_over_counted": best / counted,
                   "cascade_accuracy": float(np.mean(right)),
                   "plain_accuracy": float(np.mean([plain_preds[i] == y[i] for i in range(len(y))])),
                   "vs_float32_plain": min(times["plain float32"]) / min(times[f"cascade {p}"])}
    rows["processes"] = process_times(f32, i8, image_root(paths), batch, repeats)
    return {"images": len(paths), "batch": batch, "workers": workers, "repeats": repeats, "load": [load_start, load_mid, load()],
            "rows": rows}


def image_root(paths: list) -> Path:
    """The folder holding every test file (a folder run's test/, or where digits were written out)."""
    return Path(os.path.commonpath([str(p) for p in paths]))


def process_times(f32: Path, i8: Path, images: Path, batch: int, repeats: int) -> dict:
    """Wall time of whole processes, interleaved: `scan predict IMAGES --run EXPORT` vs plain.onnx."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmds = {"scan predict float32": [sys.executable, "-m", "scan_cli", "predict", str(images), "--run", str(f32),
                                     "--batch-size", str(batch), "--json"],
            "plain float32": [sys.executable, "-c", PLAIN_SCRIPT, str(f32), str(images), str(batch), "plain.onnx"],
            "scan predict int8": [sys.executable, "-m", "scan_cli", "predict", str(images), "--run", str(i8),
                                  "--batch-size", str(batch), "--json"],
            "plain int8": [sys.executable, "-c", PLAIN_SCRIPT, str(i8), str(images), str(batch), "plain.onnx"]}
    times = {k: [] for k in cmds}
    for _ in range(max(1, repeats)):
        for k, cmd in cmds.items():
            t = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
            times[k].append(time.perf_counter() - t)
    return {k: min(v) for k, v in times.items()}


def run_case(run_dir: Path, max_drops: list, batch: int, repeats: int) -> dict:
    import onnxruntime as ort

    from bench_int8 import cpu_model, flags

    t0, load_start = time.perf_counter(), load()
    work = Path(tempfile.mkdtemp(prefix="bench-int8-run-"))
    x, y = test_tensors(run_dir)
    rows, files = [], None
    for i, drop in enumerate(max_drops):
        row, f32, i8, fpol, ipol = accuracy_case(Path(run_dir), drop, work, x, y)
        rows.append(row)
        print(f"max-drop {drop:g}: test accuracy float32 {row['float32']['accuracy']:.4f}, int8 {row['int8']['accuracy']:.4f}",
              file=sys.stderr, flush=True)
        if i == 0:
            files = files_case(work / f"run-{drop:g}", f32, i8, {"float32": fpol, "int8": ipol}, batch, repeats, work)
    shutil.rmtree(work, ignore_errors=True)
    return {"run": str(run_dir), "cpu": cpu_model(), "flags": flags(), "cores": len(os.sched_getaffinity(0)),
            "onnxruntime": ort.__version__, "load_at_start": load_start, "load_at_end": load(), "accuracy": rows,
            "files": files, "seconds": time.perf_counter() - t0}


def markdown(doc: dict) -> str:
    pct = lambda v: f"{100 * v:.2f} %"  # noqa: E731
    lines = [f"### The trained run {doc['run']}", "",
             f"- machine: {doc['cpu']}, {doc['cores']} cores; flags: {doc['flags']}; onnxruntime {doc['onnxruntime']}",
             f"- load average at start {doc['load_at_start']}, at end {doc['load_at_end']}; run took {doc['seconds']:.0f} s", "",
             "Accuracy on the test split (the images `scan fit` never saw), each cascade with its own thresholds for "
             "the same `--max-drop` (float32: `scan calibrate`; int8: searched on the int8 pieces' validation outputs):", "",
             "| --max-drop | cascade | thresholds | exit shares (test) | counted | val acc | test acc | int8 - float32 (goal within 0.5 pt) | promise | held on test? |",
             "|---|---|---|---|---:|---:|---:|---:|---|---|"]
    for row in doc["accuracy"]:
        for p in ("float32", "int8"):
            c = row[p]
            diff = 100 * (row["int8"]["accuracy"] - row["float32"]["accuracy"])
            promise = c["promise"]
            ts = ", ".join("never" if t is None else f"{t:.4g}" for t in c["thresholds"])
            lines.append(f"| {row['max_drop']:g} | {p} | {ts} | {' / '.join(f'{100 * s:.1f}' for s in c['exit_shares'])} % "
                         f"| {c['counted_speedup']:.2f}x | {pct(c['val_accuracy'])} | **{pct(c['accuracy'])}** "
                         f"| {'' if p == 'float32' else f'**{diff:+.2f}** ' + ('(met)' if abs(diff) <= 0.5 else '(**not met**)')} "
                         f"| {promise['kind']} >= {pct(promise['accuracy'])} | {'yes' if c['accuracy'] >= promise['accuracy'] else '**no**'} |")
    f = doc["files"]
    if f:
        r = f["rows"]
        lines += ["", f"ONNX engine from files: the {f['images']} test images as files, batch {f['batch']}, "
                  f"{f['workers']} decoding processes (a background thread), best of {f['repeats']} interleaved passes "
                  f"after a warm-up; load {f['load'][0]} at start, {f['load'][1]} after the in-process passes, "
                  f"{f['load'][2]} after the processes. In process: `onnx_engine.predict_paths` (the whole job of "
                  "`scan predict --run EXPORT` after start-up: decoding, preprocessing, early exit, the report) vs "
                  "plain.onnx through the same input pipeline.", "",
                  "| precision | cascade s | plain s | realised (median) | counted | realised / counted (goal >= 0.85) | cascade vs float32 plain | test acc cascade / plain |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for p in ("float32", "int8"):
            x = r[p]
            lines.append(f"| {p} | {x['cascade_s']:.3f} | {x['plain_s']:.3f} | {x['realised']:.2f}x ({x['realised_median']:.2f}x) "
                         f"| {x['counted']:.2f}x | **{x['realised_over_counted']:.2f}** "
                         f"{'(met)' if x['realised_over_counted'] >= 0.85 else '(**not met**)'} | {x['vs_float32_plain']:.2f}x "
                         f"| {pct(x['cascade_accuracy'])} / {pct(x['plain_accuracy'])} |")
        pr = r["processes"]
        lines += ["", "Whole processes (start-up, imports, sessions included), best of the same passes: "
                  + "; ".join(f"`scan predict FOLDER --run EXPORT --batch-size {f['batch']}` {p} {pr[f'scan predict {p}']:.2f} s "
                              f"vs plain.onnx {pr[f'plain {p}']:.2f} s ({pr[f'plain {p}'] / pr[f'scan predict {p}']:.2f}x)"
                              for p in ("float32", "int8")) + "."]
    lines.append("")
    return "\n".join(lines)

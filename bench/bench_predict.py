"""Benchmark: `scan predict`'s early-exit path vs the plain timm model, on the same images.

    python bench/bench_predict.py --run DIR [--batch-sizes 1,64] [--repeats 3] [--threads N]
                                  [--workers N] [--json FILE] [--markdown FILE]

DIR is a digits run (`scan fit resnet10_cifar --recipe digits-cpu --out DIR` then
`scan calibrate --run DIR --max-drop 0.005`). The run's digits test split is written out as PNG
files (the 8x8 grayscale arrays exactly as the data module decodes them), then, per batch size:

* files: the whole `scan predict` job, decoding included. Early exit = `predict_files.predict_paths`
  (the code `scan predict` runs) with the run's calibrated thresholds; plain = the same DataLoader
  over `images.ImageFiles` with the same eval transform, batch size and workers, then
  `model.backbone.model(x)` (the timm model's own forward) and the same softmax/top-1.
* tensors: decoding-free, on the pre-decoded test images: `model.early_exit(x)` vs
  `model.backbone.model(x)` per batch, to separate model time from I/O.

Each timing is the best (minimum) of --repeats passes over all images, the two paths interleaved
(on a shared machine the minimum is the least disturbed pass; the ratio of medians is reported too). Also
reported: test accuracy of both, exit shares, the counted speed-up (plain backbone MACs over the
average MACs spent, from `profiling.cascade_costs`) vs the realised one, and the measured time of
running up to each exit (decoding-free) against its MAC count, which is where a gap comes from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def machine() -> dict:
    import torch

    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"cpu": model, "cores": cpus, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "load_1min_at_start": load}


def write_test_pngs(run_dir, info, folder: Path):
    """The run's test split as PNG files; returns (paths, labels)."""
    from PIL import Image

    from scan_cli.data import run_split

    dataset, _ = run_split(run_dir, info, "test")
    images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    if images is None:
        raise SystemExit("this benchmark needs an array-backed test split (the digits data)")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(images):
        path = folder / f"{i:04d}_{int(labels[i])}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths, [int(v) for v in labels]


def plain_files_pass(plain, paths, transform, batch_size, workers, layout):
    """The plain model doing scan predict's job: same loader, same preprocessing, top-1 + prob."""
    import torch
    from torch.utils.data import DataLoader

    from scan_cli.images import ImageFiles, collate_images

    loader = DataLoader(ImageFiles(paths, transform), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_images)
    preds = {}
    with torch.inference_mode():
        for indices, x, _errors in loader:
            if x is None:
                continue
            probs = torch.softmax(plain(x.contiguous(memory_format=layout)).float(), dim=-1)
            p, c = probs.max(dim=-1)
            for i, ci, pi in zip(indices, c.tolist(), p.tolist()):
                preds[i] = (ci, pi)
    return [preds[i][0] for i in sorted(preds)]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def interleaved(fns: dict, repeats: int) -> dict:
    """name -> list of wall times; one warm-up call each, then `repeats` rounds calling each once."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    outs = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            t, outs[k] = timed(fn)
            times[k].append(t)
    return times, outs


def stats(times: dict, n: int) -> dict:
    out = {}
    for k, ts in times.items():
        out[k] = {"best_s": min(ts), "median_s": statistics.median(ts), "images_per_s": n / min(ts), "all_s": ts}
    for k in times:
        if k != "scan":
            out[f"speedup_vs_{k}"] = {"best": min(times[k]) / min(times["scan"]),
                                      "median": statistics.median(times[k]) / statistics.median(times["scan"])}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a calibrated digits run folder")
    ap.add_argument("--batch-sizes", default="1,64")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--workers", type=int, default=None, help="decoding processes (default: scan predict's)")
    ap.add_argument("--channels-last", default="auto", help="as scan predict's flag: auto|on|off")
    ap.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    args = ap.parse_args(argv)

    import copy

    import torch

    from scan_cli.artifact import load
    from scan_cli.data import eval_transform
    from scan_cli.images import open_rgb
    from scan_cli.data import default_num_workers as default_workers
    from scan_cli.predict_files import ExitPolicy, _shallow, predict_paths, use_channels_last
    from scan_cli.profiling import cascade_costs, run_to_exit
    from scan_cli.runs import CACHE_DIR, model_path, resolve_run

    if args.threads:
        torch.set_num_threads(args.threads)
    workers = default_workers() if args.workers is None else args.workers
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    run_dir = resolve_run(args.run)
    model, info = load(model_path(run_dir))
    model.eval()
    cl = use_channels_last(args.channels_last, model)
    layout = torch.channels_last if cl else torch.contiguous_format
    plain_nchw = copy.deepcopy(model.backbone.model)  # the timm model exactly as timm builds it
    if cl:
        model.to(memory_format=torch.channels_last)
    plain = model.backbone.model  # the same modules the early-exit path runs, same layout
    plains = {"plain": (plain, layout)}
    if cl:
        plains["plain_nchw"] = (plain_nchw, torch.contiguous_format)
    transform = eval_transform(info.data_config, info.input_size)
    all_costs = cascade_costs(model, info.input_size, cache_dir=run_dir / CACHE_DIR)
    costs, backbone_macs = all_costs.cumulative, all_costs.backbone_macs
    cal = info.calibration
    if not cal:
        raise SystemExit(f"{run_dir} is not calibrated: run 'scan calibrate --run {run_dir} --max-drop 0.005' first")
    K = model.num_exits
    policy = ExitPolicy(_shallow(cal["thresholds"], K),
                        cal.get("score", "max_softmax"), cal.get("fallback", "last"), source="calibration")
    result = {"machine": machine(), "run": str(run_dir), "backbone": info.backbone_id, "input_size": info.input_size,
              "workers": workers, "repeats": args.repeats, "channels_last": cl, "policy": policy.to_dict(),
              "calibration": cal, "exit_macs": costs, "backbone_macs": backbone_macs, "batches": {}}

    with tempfile.TemporaryDirectory(prefix="scan-bench-") as tmp:
        paths, labels = write_test_pngs(run_dir, info, Path(tmp) / "test")
        n = len(paths)
        x_all = torch.stack([transform(open_rgb(p)) for p in paths])
        y = torch.tensor(labels)
        with torch.inference_mode():
            all_logits = torch.cat([torch.stack([o.float() for o in model(x_all[i:i + 64])], 1) for i in range(0, n, 64)])
        result["exit_test_accuracy"] = [(all_logits[:, k].argmax(-1) == y).float().mean().item() for k in range(K)]

        for b in batch_sizes:
            row = {}

            def scan_files(b=b):
                return predict_paths(model, paths, transform, policy, classes=info.classes, costs=costs,
                                     backbone_macs=backbone_macs, batch_size=b, workers=workers, progress=False,
                                     channels_last=cl)

            fns = {"scan": scan_files}
            for name, (m, lay) in plains.items():
                fns[name] = lambda m=m, lay=lay, b=b: plain_files_pass(m, paths, transform, b, workers, lay)
            times, outs = interleaved(fns, args.repeats)
            report = outs["scan"]
            row["files"] = stats(times, n)
            row["files"].update(
                scan_accuracy=(torch.tensor([p.class_index for p in report.predictions]) == y).float().mean().item(),
                plain_accuracy=(torch.tensor(outs["plain"]) == y).float().mean().item(),
                exit_shares=report.summary["exit_shares"], avg_macs=report.summary["avg_macs"],
                counted_speedup=report.summary["counted_speedup"], errors=report.summary["errors"])
            if "plain_nchw" in outs:
                row["files"]["plain_nchw_accuracy"] = (torch.tensor(outs["plain_nchw"]) == y).float().mean().item()

            # decoding-free: the model alone on pre-decoded tensors
            chunks = {lay: [x_all[i:i + b].contiguous(memory_format=lay) for i in range(0, n, b)]
                      for lay in {layout, torch.contiguous_format}}

            def scan_tensors():
                with torch.inference_mode():
                    return [model.early_exit(c, policy.thresholds, policy.score, policy.fallback) for c in chunks[layout]]

            fns = {"scan": scan_tensors}
            for name, (m, lay) in plains.items():
                def plain_tensors(m=m, lay=lay):
                    with torch.inference_mode():
                        return [m(c) for c in chunks[lay]]
                fns[name] = plain_tensors
            # where the time goes: the network run up to each exit (stem, sections, heads on the way)
            for k in range(K):
                def upto(k=k):
                    with torch.inference_mode():
                        return [run_to_exit(model, k, c) for c in chunks[layout]]
                fns[f"to_exit_{k + 1}"] = upto
            times, _ = interleaved(fns, args.repeats)
            row["tensors"] = stats({k: v for k, v in times.items() if not k.startswith("to_exit")}, n)
            best_plain = min(times["plain"])
            row["tensors"]["time_to_exit_ratio"] = [min(times[f"to_exit_{k + 1}"]) / best_plain for k in range(K)]
            row["tensors"]["macs_to_exit_ratio"] = [c / backbone_macs for c in costs]
            result["batches"][str(b)] = row
            print(f"batch {b}: files {row['files']['speedup_vs_plain']['best']:.2f}x, "
                  f"tensors {row['tensors']['speedup_vs_plain']['best']:.2f}x, "
                  f"counted {row['files']['counted_speedup']:.2f}x", file=sys.stderr)
    try:
        result["machine"]["load_1min_at_end"] = os.getloadavg()[0]
    except OSError:
        pass
    print(json.dumps(result, indent=2, default=str))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(markdown(result), file=sys.stderr)
    return 0


def markdown(r: dict) -> str:
    m = r["machine"]
    layout = "channels_last" if r["channels_last"] else "NCHW"
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} intra-op threads, "
             f"{r['workers']} decoding worker(s); 1-min load average {m.get('load_1min_at_start')} at start, "
             f"{m.get('load_1min_at_end')} at end.",
             f"Run: {r['backbone']} at {r['input_size']} px, {layout}; thresholds {r['policy']['thresholds']} "
             f"({r['policy']['score']}, fallback {r['policy']['fallback']}).",
             f"Test accuracy per exit: {', '.join(f'{a * 100:.2f}' for a in r['exit_test_accuracy'])}.",
             "",
             "| batch | path | scan predict s | plain s | speed-up best (median) | plain NCHW s | speed-up vs NCHW best (median) | counted | acc scan | acc plain |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for b, row in r["batches"].items():
        for what, label in (("files", "files (decode + model)"), ("tensors", "tensors (model only)")):
            d, f = row[what], row["files"]
            su = d["speedup_vs_plain"]
            nchw = d.get("plain_nchw")
            su2 = d.get("speedup_vs_plain_nchw")
            lines.append(
                f"| {b} | {label} | {d['scan']['best_s']:.3f} | {d['plain']['best_s']:.3f} | "
                f"{su['best']:.2f}x ({su['median']:.2f}x) | "
                + (f"{nchw['best_s']:.3f} | {su2['best']:.2f}x ({su2['median']:.2f}x) | " if nchw else "- | - | ")
                + f"{f['counted_speedup']:.2f}x | "
                + (f"{f['scan_accuracy'] * 100:.2f} | {f['plain_accuracy'] * 100:.2f} |" if what == "files" else "| |"))
    lines.append("")
    first = next(iter(r["batches"].values()))["files"]
    lines.append("Exit shares on the test split: " + ", ".join(
        f"{k + 1}/{len(r['exit_macs'])} {s * 100:.1f}%" for k, s in enumerate(first["exit_shares"])))
    lines.append("")
    K = len(r["exit_macs"])
    lines.append("| batch | " + " | ".join(f"up to exit {k + 1}: time / plain (MACs / plain)" for k in range(K)) + " |")
    lines.append("|---|" + "---|" * K)
    for b, row in r["batches"].items():
        t = row["tensors"]
        lines.append(f"| {b} | " + " | ".join(f"{a:.2f} ({c:.2f})" for a, c in zip(t["time_to_exit_ratio"], t["macs_to_exit_ratio"])) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: `scan predict`'s early exit vs the plain timm model, on the same images, in one run.

    python bench/bench_predict.py --run DIR [--batch-sizes 1,64] [--repeats 5] [--out FILE] [--quick]
    python bench/bench_predict.py --synthetic resnet50 --img-size 224 --mix 0.4,0.3,0.2,0.1 [--images 128]

Two sources of work:

* ``--run DIR``: a calibrated run (e.g. the Fashion-MNIST run of `python -m bench`); its own test
  split, as image files (a folder run's files; digits are written out as PNGs), with its calibrated
  thresholds.
* ``--run-mix 0.4,0.3,0.2,0.1`` with ``--run``: the same run again with thresholds that send those
  shares out at each exit (timing only), for runs whose calibration sends nearly everything to one exit.
* ``--synthetic ID``: a bare backbone with random weights and slim heads (timing only: accuracy is
  meaningless), random JPEG photos, and thresholds set to the score quantiles that send the ``--mix``
  shares of the images out at each exit.

Per batch size, interleaved (each round times every variant once, so a busy neighbour slows all alike):

* model only, on pre-decoded tensors: `model.early_exit` (what `scan predict` runs) vs the plain timm
  model (`model.backbone.model`, the same modules, the same layout); also with every exit switched
  off (`--thresholds none,...`), which must cost the plain backbone's MACs and time;
* the network run up to each exit (time to exit k / plain time, next to MACs to exit k / plain MACs);
* the whole job from files: `predict_files.predict_paths` (decoding, preprocessing, early exit) vs
  the same input pipeline (`file_batches`: decoded a batch ahead into uint8, normalised once per
  batch) feeding the plain model, so the ratio credits early exit alone.

Timings are the minimum over ``--repeats`` rounds (the least disturbed pass; the ratio of medians is
given too). Goals (issue 10): realised >= 85 % of the counted speed-up, model only, at batch 1 and
64; >= 70 % for the whole job from files; time to exit k / plain <= 1.15 x MACs to exit k / plain at
batch 64; `--thresholds none` within 5 % of the plain model's time with the same MACs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def machine() -> str:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_train import machine as m

    return m()


def test_files(run_dir, info, folder: Path):
    """The run's test split as image files: (paths, labels)."""
    from PIL import Image

    from scan_cli.data import run_split

    dataset, _ = run_split(run_dir, info, "test")
    if hasattr(dataset, "paths"):
        return [Path(p) for p in dataset.paths], [int(v) for v in dataset.labels]
    images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    if images is None:
        raise SystemExit("this benchmark needs a test split of image files or arrays")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(images):
        path = folder / f"{i:05d}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths, [int(v) for v in labels]


def synthetic_photos(folder: Path, n: int, side: int, seed: int = 0):
    """n random-texture JPEG photos a little larger than the input (decoding is part of the job)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = rng.integers(0, 255, (side // 8 + 1, side // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((side * 8 // 7, side * 8 // 7), Image.BILINEAR)
        path = folder / f"{i:05d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths, [0] * n


def mix_thresholds(model, x_all, mix, score="max_softmax"):
    """Thresholds that send the ``mix`` shares of these images out at each exit (score quantiles)."""
    import torch

    from scan_cli.scoring import confidence

    with torch.inference_mode():
        outs = model(x_all)
    K = model.num_exits
    remaining = torch.ones(x_all.shape[0], dtype=torch.bool)
    thresholds, left = [], 1.0
    for k in range(K - 1):
        s = confidence(outs[k].float(), score)
        share = mix[k] / left if left > 0 else 0.0
        pool = s[remaining]
        if share <= 0 or pool.numel() == 0:
            thresholds.append(None)
            continue
        t = float(torch.quantile(pool, 1 - min(1.0, share)))
        thresholds.append(t)
        remaining &= s < t
        left -= mix[k]
    return thresholds


def mix_policy(model, paths, transform, mix: str, fallback: str, source: str):
    """An exit policy whose thresholds send the ``mix`` shares ("0.4,0.3,...") of these images out at
    each exit (timing only: set on the measured images, no calibrated promise)."""
    import torch

    from scan_cli.data.images import open_rgb
    from scan_cli.policy import ExitPolicy

    x_all = torch.stack([transform(open_rgb(p)) for p in paths])
    return ExitPolicy(mix_thresholds(model, x_all, [float(m) for m in mix.split(",")]), "max_softmax", fallback,
                      source=source)


def plain_files_pass(plain, paths, transform, batch_size, workers, layout):
    """The plain model doing scan predict's job with scan predict's own input pipeline (decoding
    one batch ahead into uint8, normalised once per batch, draft mode), so that the comparison
    credits early exit only: top-1 class per image."""
    import torch

    from scan_cli.data.transforms import batch_preprocessing
    from scan_cli.inference.file_batches import to_model_input, uint8_batches
    from scan_cli.data.images import draft_size

    split = batch_preprocessing(transform)
    if split is None:
        raise SystemExit("this benchmark needs an eval transform that scan predict runs per batch")
    pil_steps, size, mean, std = split
    mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    preds = {}
    with torch.inference_mode():
        for indices, images, _errors in uint8_batches(paths, pil_steps, size, batch_size=batch_size, workers=workers,
                                                      pin=False, draft=draft_size(transform)):
            if images is None:
                continue
            x = to_model_input(images, mean, std, torch.device("cpu"), layout)
            probs = torch.softmax(plain(x).float(), dim=-1)
            for i, c in zip(indices, probs.argmax(-1).tolist()):
                preds[i] = c
    return [preds[i] for i in sorted(preds)]


def interleaved(fns: dict, repeats: int):
    """name -> wall times: one warm-up call each, then ``repeats`` rounds calling each once."""
    for fn in fns.values():
        fn()
    times, outs = {k: [] for k in fns}, {}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            outs[k] = fn()
            times[k].append(time.perf_counter() - t)
    return times, outs


def ratio(times, a, b) -> dict:
    """speed-up of ``a`` over ``b``: best-of and median-of."""
    return {"best": min(times[b]) / min(times[a]), "median": statistics.median(times[b]) / statistics.median(times[a])}


def measure(model, paths, labels, transform, policy, batch_sizes, repeats, workers, cl, costs_all, title) -> dict:
    import torch

    from scan_cli.inference.plan import workers_for as _workers_for
    from scan_cli.inference.torch_engine import predict_paths

    layout = torch.channels_last if cl else torch.contiguous_format
    if cl:
        model.to(memory_format=torch.channels_last)
    plain = model.backbone.model
    K = model.num_exits
    costs = costs_all.for_policy(policy.thresholds, policy.fallback)
    backbone_macs = costs_all.backbone_macs
    n = len(paths)
    from scan_cli.data.images import open_rgb

    x_all = torch.stack([transform(open_rgb(p)) for p in paths])
    y = torch.tensor(labels)
    none = [None] * (K - 1)
    result = {"title": title, "n": n, "layout": "NHWC" if cl else "NCHW", "threads": torch.get_num_threads(),
              "workers": {b: _workers_for(workers, len(paths), b) for b in batch_sizes}, "thresholds": policy.thresholds, "score": policy.score, "fallback": policy.fallback,
              "exit_macs": costs, "backbone_macs": backbone_macs, "batches": {}}
    for b in batch_sizes:
        chunks = [x_all[i:i + b].contiguous(memory_format=layout) for i in range(0, n, b)]
        exits = []

        def cascade():
            with torch.inference_mode():
                exits.clear()
                for c in chunks:
                    exits.append(model.early_exit(c, policy.thresholds, policy.score, policy.fallback).exit_index)

        def cascade_none():
            with torch.inference_mode():
                for c in chunks:
                    model.early_exit(c, none, policy.score, "last")

        def plain_pass():
            with torch.inference_mode():
                for c in chunks:
                    plain(c)

        from scan_cli.profiling import run_to_exit

        fns = {"scan": cascade, "plain": plain_pass, "none": cascade_none}
        for k in range(K):
            def upto(k=k):
                with torch.inference_mode():
                    for c in chunks:
                        run_to_exit(model, k, c)
            fns[f"to_exit_{k + 1}"] = upto
        times, _ = interleaved(fns, repeats)
        cascade()
        exit_index = torch.cat(exits)
        shares = [float((exit_index == k).float().mean()) for k in range(K)]
        counted = backbone_macs / sum(s * c for s, c in zip(shares, costs))
        row = {"model": {"scan_s": min(times["scan"]), "plain_s": min(times["plain"]), "realised": ratio(times, "scan", "plain"),
                         "counted": counted, "exit_shares": shares, "images_per_s": n / min(times["scan"]),
                         "none_vs_plain": min(times["none"]) / min(times["plain"])},
               "time_to_exit": [min(times[f"to_exit_{k + 1}"]) / min(times["plain"]) for k in range(K)],
               "macs_to_exit": [c / backbone_macs for c in costs_all.cumulative]}

        w = result["workers"][b]

        def scan_files(b=b, w=w):
            return predict_paths(model, paths, transform, policy, classes=[str(i) for i in range(model.num_classes)],
                                 costs=costs, backbone_macs=backbone_macs, batch_size=b, workers=w,
                                 progress=False, channels_last=cl)

        ftimes, fouts = interleaved({"scan": scan_files,
                                     "plain": lambda b=b, w=w: plain_files_pass(plain, paths, transform, b, w, layout)},
                                    max(1, repeats // 2))
        report = fouts["scan"]
        row["files"] = {"scan_s": min(ftimes["scan"]), "plain_s": min(ftimes["plain"]), "realised": ratio(ftimes, "scan", "plain"),
                        "counted": report.summary["counted_speedup"], "images_per_s": n / min(ftimes["scan"]),
                        "scan_accuracy": float((torch.tensor([p.class_index for p in report.predictions]) == y).float().mean()),
                        "plain_accuracy": float((torch.tensor(fouts["plain"]) == y).float().mean())}
        result["batches"][str(b)] = row
        print(f"{title} batch {b}: model {row['model']['realised']['best']:.2f}x of counted {counted:.2f}x, files "
              f"{row['files']['realised']['best']:.2f}x", file=sys.stderr, flush=True)
    return result


def markdown(r: dict, synthetic: bool) -> list[str]:
    K = len(r["exit_macs"])
    lines = [f"### {r['title']}", "",
             f"{r['n']} images, layout {r['layout']}, {r['threads']} torch threads, decoding "
             f"{', '.join(f'batch {b}: ' + (f'{w} process(es)' if w else 'a background thread') for b, w in r['workers'].items())}; "
             f"thresholds {', '.join('none' if t is None else f'{t:.4f}' for t in r['thresholds'])} ({r['score']}, "
             f"fallback {r['fallback']}).", "",
             "| batch | what | early exit s | plain s | realised speed-up best (median) | counted | realised / counted | images/s |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for b, row in r["batches"].items():
        for what, label in (("model", "model only"), ("files", "whole job from files")):
            d = row[what]
            lines.append(f"| {b} | {label} | {d['scan_s']:.3f} | {d['plain_s']:.3f} | {d['realised']['best']:.2f}x "
                         f"({d['realised']['median']:.2f}x) | {d['counted']:.2f}x | {100 * d['realised']['best'] / d['counted']:.0f} % | "
                         f"{d['images_per_s']:.1f} |")
    first = next(iter(r["batches"].values()))
    lines += ["", "Exit shares: " + ", ".join(f"{k + 1}/{K} {100 * s:.1f} %" for k, s in enumerate(first["model"]["exit_shares"])) + ".", ""]
    if not synthetic:
        f = first["files"]
        lines += [f"Test accuracy: early exit {100 * f['scan_accuracy']:.2f} %, plain model {100 * f['plain_accuracy']:.2f} %.", ""]
    lines += ["| batch | " + " | ".join(f"exit {k + 1}: time (MACs) vs plain" for k in range(K)) + " | all exits off: time vs plain |",
              "|---:|" + "---:|" * (K + 1)]
    for b, row in r["batches"].items():
        lines.append(f"| {b} | " + " | ".join(f"{t:.2f} ({m:.2f})" for t, m in zip(row["time_to_exit"], row["macs_to_exit"]))
                     + f" | {row['model']['none_vs_plain']:.3f} |")
    lines += ["", "Goals:"]
    for b, row in r["batches"].items():
        share = row["model"]["realised"]["best"] / row["model"]["counted"]
        lines.append(f"- batch {b}, model only: realised / counted = {100 * share:.0f} % (goal >= 85 %): "
                     f"{'met' if share >= 0.85 else '**not met**'}")
        share = row["files"]["realised"]["best"] / row["files"]["counted"]
        lines.append(f"- batch {b}, from files: {100 * share:.0f} % (goal >= 70 %): {'met' if share >= 0.70 else '**not met**'}")
        worst = max(t / m for t, m in zip(row["time_to_exit"], row["macs_to_exit"]))
        lines.append(f"- batch {b}: worst exit time/MACs ratio {worst:.2f} (goal <= 1.15 at batch 64): "
                     f"{'met' if worst <= 1.15 else '**not met**'}")
        none = row["model"]["none_vs_plain"]
        lines.append(f"- batch {b}, every exit off: {none:.3f}x the plain time with exactly its MACs (goal within 5 %): "
                     f"{'met' if abs(none - 1) <= 0.05 else '**not met**'}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a calibrated run folder")
    ap.add_argument("--synthetic", action="append", default=None,
                    help="a backbone id to time with random weights (repeatable; default with no --run: resnet50)")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--mix", default="0.4,0.3,0.2,0.1", help="share of images per exit for --synthetic")
    ap.add_argument("--run-mix", default=None,
                    help="also time --run with thresholds that send these shares out at each exit (set on the "
                         "measured images: a timing row for spread exits, its accuracy is no calibrated promise)")
    ap.add_argument("--images", type=int, default=128, help="images for --synthetic")
    ap.add_argument("--max-images", type=int, default=1000, help="at most this many of the run's test images (a stratified-enough prefix: the split is in class order, so every k-th)")
    ap.add_argument("--batch-sizes", default="1,64")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None, help="decoding processes (default: scan predict's)")
    ap.add_argument("--channels-last", default="auto")
    ap.add_argument("--quick", action="store_true", help="smoke run: few images, 2 repeats")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "predict.md")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    from common import allocator_as_scan_runs

    allocator = allocator_as_scan_runs()

    import torch

    from scan_cli.artifact import load
    from scan_cli.data import eval_transform
    from scan_cli.devices import use_channels_last
    from scan_cli.policy import ExitPolicy, shallow as _shallow
    from scan_cli.profiling import cascade_costs
    from scan_cli.runs import CACHE_DIR, model_path, resolve_run

    if a.threads:
        torch.set_num_threads(a.threads)
    workers = a.workers  # None: scan predict's own rule (predict_files._workers_for), for both sides
    batch_sizes = [int(b) for b in a.batch_sizes.split(",")]
    repeats = 2 if a.quick else a.repeats
    synthetic = a.synthetic if a.synthetic is not None else (["resnet50"] if not a.run or not a.quick else [])
    if a.quick and a.synthetic is None:
        synthetic = ["resnet50"]
    results, sections = [], []
    with tempfile.TemporaryDirectory(prefix="scan-bench-predict-") as tmp:
        if a.run:
            run_dir = resolve_run(a.run)
            model, info = load(model_path(run_dir))
            cal = info.calibration
            if not cal:
                raise SystemExit(f"{run_dir} is not calibrated: run 'scan calibrate --run {run_dir}' first")
            paths, labels = test_files(run_dir, info, Path(tmp) / "test")
            limit = 256 if a.quick else a.max_images
            if len(paths) > limit:  # every k-th image, so that every class keeps its share
                step = len(paths) / limit
                keep = [int(i * step) for i in range(limit)]
                paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
            policy = ExitPolicy(_shallow(cal["thresholds"], model.num_exits), cal.get("score", "max_softmax"),
                                cal.get("fallback", "last"), source="calibration")
            costs = cascade_costs(model, info.input_size, cache_dir=run_dir / CACHE_DIR)
            transform = eval_transform(info.data_config, info.input_size)
            r = measure(model.eval(), paths, labels, transform, policy,
                        batch_sizes, repeats, workers, use_channels_last(a.channels_last, model), costs,
                        f"{info.backbone_id} at {info.input_size} px, run {run_dir.name} (its test split)")
            results.append(r)
            sections += markdown(r, synthetic=False) + [""]
            if a.run_mix:  # calibration may send nearly every image out at one exit: time a spread mix too
                policy = mix_policy(model, paths, transform, a.run_mix, cal.get("fallback", "last"), "--run-mix")
                r = measure(model.eval(), paths, labels, transform, policy, batch_sizes, repeats, workers,
                            use_channels_last(a.channels_last, model), costs,
                            f"{info.backbone_id} at {info.input_size} px, run {run_dir.name}, thresholds for an exit "
                            f"mix of {a.run_mix} (set on these test images: timing only, not a calibrated promise)")
                results.append(r)
                sections += markdown(r, synthetic=False) + [""]
        for bid in synthetic:
            from scan_cli.model import build_bare_model

            torch.manual_seed(0)
            size = 64 if a.quick else a.img_size
            model, size = build_bare_model(bid, size, "slim")
            model.eval()
            transform = eval_transform(model.backbone.data_config, size)
            n = 16 if a.quick else a.images
            paths, labels = synthetic_photos(Path(tmp) / f"photos-{bid}", n, size)
            policy = mix_policy(model, paths, transform, a.mix, "last", "--mix")
            costs = cascade_costs(model, size)
            r = measure(model, paths, labels, transform, policy, batch_sizes if not a.quick else [1, 8], repeats, workers,
                        use_channels_last(a.channels_last, model), costs,
                        f"{bid} at {size} px, random weights, thresholds for an exit mix of {a.mix}")
            results.append(r)
            sections += markdown(r, synthetic=True) + [""]
    if a.json:
        a.json.write_text(json.dumps(results, indent=2, default=str))
    from bench_train import append_results

    head = [f"## scan predict vs the plain timm model ({time.strftime('%Y-%m-%d')}{', quick' if a.quick else ''})", "",
            f"Machine: {machine()}; load {os.getloadavg()[0]:.2f}. Command: `python bench/bench_predict.py "
            f"{' '.join(argv if argv is not None else sys.argv[1:])}`; {allocator}.", ""]
    append_results(a.out, "# scan predict: early exit vs the plain timm model", head + sections)
    return 0


if __name__ == "__main__":
    sys.exit(main())

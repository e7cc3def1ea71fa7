"""Benchmark: early exit on ONNX Runtime vs ONNX Runtime running the plain model, and vs PyTorch.

    python bench/bench_onnx.py [--run DIR] [--no-resnet50] [--quick] [--threads N] [--repeats N]
                               [--out FILE] [--json FILE]
    python -m bench --only onnx [--quick]  (the entry point: the Fashion-MNIST run as --run)

Cases: the trained run given as --run (its calibrated thresholds, its test split: the data
`scan fit` held out), and resnet50 at 224 px with random weights (slim heads; random normal
images; thresholds placed so that 50 / 25 / 15 / 10 % of the images leave at exits 1..4, the
classifiers centred on those images so scores spread instead of collapsing to one value).

Per case the model is exported with `scan_cli.inference.export.export_model` (pieces as `scan export`
writes them, plus `plain.onnx`: the backbone alone) and, at batch 1 and 64, over the same images:

* `ort plain`: ONNX Runtime running plain.onnx;
* `ort cascade`: `onnx_engine.Cascade.early_exit` (what `scan predict --engine onnxruntime` runs);
* `torch cascade`: `ScanModel.early_exit` (the PyTorch engine, channels-last as `scan predict`);
* `torch plain`: the backbone in PyTorch, same layout, for reference.

Decoding-free (pre-processed tensors), the same thread count for both runtimes. Each timing is the
best of --repeats passes, the paths interleaved (a busy neighbour slows all alike); medians are kept
in the JSON. Ratios: *counted* speed-up = plain MACs / average MACs the cascade spent (the
export's per-exit costs; heads left out count nothing); *realised* = ort plain time / ort cascade
time; goal 1: realised >= 90 % of counted at batch 1 and 64; goal 2: ort cascade faster than the
torch cascade at batch 1.

`run(quick, out_md, ...)` does the work; `python -m bench` calls this script with `--out` (and `--run`
with its Fashion-MNIST run). `--quick` is a smoke run (64 images, one timed pass), never results to
publish.
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
from typing import Optional

SHARES = (0.50, 0.25, 0.15, 0.10)  # resnet50: the share of images leaving at exits 1..4
BATCH_SIZES = (1, 64)


# -- the machine ------------------------------------------------------------------------------------
def machine(threads: int) -> dict:
    import numpy
    import onnx
    import onnxruntime
    import torch

    from scan_cli import __version__

    cpu = platform.processor() or "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {"cpu": cpu, "cores": cores, "threads": threads, "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "numpy": numpy.__version__, "scan_cli": __version__, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "load_at_start": _load()}


def _load():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# -- the cases ----------------------------------------------------------------------------------------
def spread_classifiers(model, x, seed: int = 0, spread: float = 2.0) -> None:
    """Random-weight networks map every image to nearly the same logits; centre each exit's classifier on
    ``x`` so scores spread and quantile thresholds give a stable exit mix (timing does not depend on it)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    linears = [h.fc for h in model.heads] + [model.backbone.classifier()]
    seen = {id(m): [] for m in linears}
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen[id(mod)].append(inp[0].detach().flatten(1)))
             for m in linears]
    with torch.no_grad():
        for i in range(0, len(x), 32):
            model(x[i:i + 32])
        for h in hooks:
            h.remove()
        for m in linears:
            f = torch.cat(seen[id(m)]).double()
            w = torch.randn(m.weight.shape, generator=g, dtype=torch.float64)
            scale = spread / ((f - f.mean(0)) @ w.T).std(0).clamp_min(1e-12)
            m.weight.copy_(w * scale[:, None])
            m.bias.copy_(-(f.mean(0) @ w.T) * scale)


def mix_thresholds(model, x, shares=SHARES) -> list:
    """Thresholds (max_softmax) sending ``shares`` of ``x`` out at exits 1..K-1, midway between scores."""
    import numpy as np
    import torch

    from scan_cli.scoring import confidence

    with torch.no_grad():
        outs = [torch.cat(o) for o in zip(*(model(x[i:i + 32]) for i in range(0, len(x), 32)))]
    n = len(x)
    remaining = np.ones(n, dtype=bool)
    thresholds = []
    for k, share in enumerate(shares[:-1]):
        scores = confidence(outs[k].float(), "max_softmax").numpy()
        alive = np.sort(scores[remaining])[::-1]
        count = int(round(share * n))
        t = float((alive[count - 1] + alive[count]) / 2) if count < len(alive) else float(alive[-1])
        thresholds.append(t)
        remaining &= ~(scores >= t)
    return thresholds


def resnet50_case(n: int):
    import torch

    from scan_cli.artifact import info_for
    from scan_cli.model import HeadConfig, build_scan_model
    from scan_cli.backbones.registry import default_registry

    registry = default_registry()
    spec = registry.get("resnet50")
    torch.manual_seed(0)
    model = build_scan_model(spec, num_classes=1000, head=HeadConfig.preset("slim"), input_size=224).eval()
    x = torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    spread_classifiers(model, x)
    thresholds = mix_thresholds(model, x)
    info = info_for(model, spec, registry, classes=[str(i) for i in range(1000)],
                    data_config=model.backbone.data_config, input_size=224)
    info.calibration = {"thresholds": thresholds + [None], "score": "max_softmax", "fallback": "last"}
    return {"name": "resnet50 at 224 px (random weights, exit mix 50/25/15/10 %)", "model": model, "info": info,
            "x": x, "source": "random normal images"}


def run_case(run_dir: Path, n: int):
    import torch

    from scan_cli.artifact import load
    from scan_cli.data import run_split
    from scan_cli.runs import model_path

    model, info = load(model_path(run_dir))
    if not (info.calibration or {}).get("thresholds"):
        raise SystemExit(f"{run_dir} is not calibrated: run 'scan calibrate --run {run_dir}' first")
    dataset, _ = run_split(run_dir, info, "test")
    images = [dataset[i][0] for i in range(min(n, len(dataset)))]
    x = torch.stack(images)
    return {"name": f"{info.backbone_id} run {run_dir.name} at {info.input_size} px", "model": model, "info": info,
            "x": x, "source": f"the run's test split, {len(x)} images"}


# -- timing ---------------------------------------------------------------------------------------------
def interleaved(fns: dict, batches: list, repeats: int) -> dict:
    """name -> wall times of ``fn(batches)``; each round calls every path once (a busy neighbour slows all)."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn(batches)
            times[k].append(time.perf_counter() - start)
    return times


def bench_case(case: dict, threads: int, repeats: int, batch_sizes, workdir: Path, variants: bool) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    from scan_cli.inference.export import export_model
    from scan_cli.inference.onnx_engine import Cascade, session_options

    model, info, x = case["model"], case["info"], case["x"]
    t0 = time.perf_counter()
    folder = workdir / "onnx"
    manifest = export_model(model, info, folder, plain=True)
    export_s = time.perf_counter() - t0
    K = model.num_exits
    thresholds = [p["threshold"] for p in manifest["pieces"][:-1]]
    score, fallback = manifest["score"], manifest["fallback"]
    costs = manifest["macs"]["exits_cumulative"]
    plain_macs = manifest["macs"]["backbone"]

    torch.set_num_threads(threads)
    cascades = {"ort cascade": Cascade(folder, threads=threads)}  # the engine's settings: no spinning
    if variants:
        cascades["ort cascade, spinning"] = Cascade(folder, threads=threads, spinning=True)
    plains = {name: ort.InferenceSession(str(folder / manifest["plain"]["file"]), session_options(threads, spin),
                                         providers=["CPUExecutionProvider"])
              for name, spin in (("ort plain", None), ("ort plain, no spinning", False))}
    # the PyTorch engine as `scan predict` runs it: channels-last except for ViTs
    layout = torch.contiguous_format if model.backbone.family == "vit" else torch.channels_last
    model.to(memory_format=layout)
    xn = x.numpy()

    # the two engines agree (labels and exits) on these images
    ort_out = cascades["ort cascade"].early_exit(xn, thresholds, score, fallback)
    with torch.inference_mode():
        ref = model.early_exit(x.contiguous(memory_format=layout), thresholds, score, fallback)
    agree = float(np.mean((ort_out.exit_index == ref.exit_index.numpy())
                          & (ort_out.logits.argmax(1) == ref.logits.argmax(1).numpy())))
    exits = np.bincount(ort_out.exit_index, minlength=K)
    avg_macs = float(sum(costs[k] * c for k, c in enumerate(exits)) / len(x))
    counted = plain_macs / avg_macs

    def ort_plain(session):
        def go(batches):
            for b, _ in batches:
                session.run(None, {"image": b})
        return go

    def ort_cascade(engine):
        def go(batches):
            for b, _ in batches:
                engine.early_exit(b, thresholds, score, fallback)
        return go

    def torch_cascade(batches):
        with torch.inference_mode():
            for _, t in batches:
                model.early_exit(t, thresholds, score, fallback)

    def torch_plain(batches):
        with torch.inference_mode():
            for _, t in batches:
                model.backbone(t)

    fns = {**{k: ort_plain(p) for k, p in plains.items()}, **{k: ort_cascade(c) for k, c in cascades.items()},
           "torch cascade": torch_cascade, "torch plain": torch_plain}
    rows = []
    for bs in batch_sizes:
        batches = [(xn[i:i + bs], x[i:i + bs].contiguous(memory_format=layout)) for i in range(0, len(x), bs)]
        # warm-up: the first real batch through every path, so that the timed passes find the sessions'
        # memory for these shapes (the remaining batch sizes after each exit included) already allocated
        interleaved(fns, batches[:1], 1)
        times = interleaved(fns, batches, repeats)
        best = {k: min(v) for k, v in times.items()}
        med = {k: statistics.median(v) for k, v in times.items()}
        plain_best = min(best[k] for k in plains)  # the plain model in its faster ONNX Runtime setting
        realised = plain_best / best["ort cascade"]
        rows.append({
            "batch_size": bs, "images": len(x),
            "ms_per_image": {k: 1000 * v / len(x) for k, v in best.items()},
            "median_ms_per_image": {k: 1000 * v / len(x) for k, v in med.items()},
            "all_s": times,
            "realised_speedup": realised,
            "realised_speedup_median": min(med[k] for k in plains) / med["ort cascade"],
            "counted_speedup": counted, "realised_over_counted": realised / counted,
            "ort_cascade_vs_torch_cascade": best["torch cascade"] / best["ort cascade"],
            "ort_plain_vs_torch_plain": best["torch plain"] / plain_best,
            "variants": {k: plain_best / best[k] for k in cascades},
        })
    pieces = time_pieces(cascades["ort cascade"], plains, xn, batch_sizes, repeats, costs, plain_macs)
    return {"name": case["name"], "source": case["source"], "export_s": export_s, "num_exits": K,
            "thresholds": thresholds, "score": score, "fallback": fallback,
            "heads_exported": [p["logits"] is not None for p in manifest["pieces"]],
            "exit_counts": exits.tolist(), "exit_shares": (exits / len(x)).tolist(), "costs": costs,
            "plain_macs": plain_macs, "avg_macs": avg_macs, "counted_speedup": counted,
            "engines_agree": agree, "rows": rows, "pieces": pieces}


def time_pieces(cascade, plains: dict, xn, batch_sizes, repeats: int, costs: list, plain_macs: float) -> list:
    """Where a gap between counted and realised comes from: each piece on every image (no exit taken),
    its time against its MACs, relative to the plain model's time per MAC. ``speed`` 1.0 = the
    piece runs as many MACs per second as the plain model; below 1 it is slower per MAC."""
    import numpy as np

    K = cascade.num_exits
    piece_macs = [costs[0]] + [costs[k] - costs[k - 1] for k in range(1, K)]
    out = []
    for bs in batch_sizes:
        feeds, h = [], xn  # every piece's input for the whole image set, computed once
        for k in range(K):
            feeds.append(h)
            if k < K - 1:
                h = np.concatenate([cascade._run(k, h[i:i + bs])[0] for i in range(0, len(h), bs)])

        def piece(k):
            def go(_):
                for i in range(0, len(xn), bs):
                    cascade._run(k, feeds[k][i:i + bs])
            return go

        def plain(session):
            def go(_):
                for i in range(0, len(xn), bs):
                    session.run(None, {"image": xn[i:i + bs]})
            return go

        fns = {**{f"piece {k + 1}": piece(k) for k in range(K)}, **{k: plain(s) for k, s in plains.items()}}
        interleaved(fns, None, 1)  # warm-up at this batch size
        times = interleaved(fns, None, repeats)
        best = {k: min(v) for k, v in times.items()}
        plain_s = min(best[k] for k in plains)
        rows = []
        for k in range(K):
            t = best[f"piece {k + 1}"]
            rows.append({"piece": k + 1, "macs": piece_macs[k], "ms_per_image": 1000 * t / len(xn),
                         "share_of_plain_macs": piece_macs[k] / plain_macs, "share_of_plain_time": t / plain_s,
                         "speed": (piece_macs[k] / t) / (plain_macs / plain_s)})
        out.append({"batch_size": bs, "plain_ms_per_image": 1000 * plain_s / len(xn), "pieces": rows})
    return out


# -- report ---------------------------------------------------------------------------------------------
def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [f"## ONNX Runtime early exit vs the plain model and the PyTorch engine (CPU; {m['date']}"
             + (", quick" if doc["quick"] else "") + ")", "",
             f"Command: `python bench/bench_onnx.py {doc['argv']}`" + (" (**--quick: a smoke run, not results**)" if doc["quick"] else ""),
             "",
             f"- machine: {m['cpu']}, {m['cores']} cores; {m['threads']} threads for both runtimes",
             f"- versions: onnxruntime {m['onnxruntime']}, onnx {m['onnx']}, torch {m['torch']}, numpy {m['numpy']}, "
             f"python {m['python']}, scan_cli {m['scan_cli']}",
             f"- date: {m['date']}; load average (1, 5, 15 min) at start {m['load_at_start']}, at end {doc['load_at_end']}",
             f"- timing: best of {doc['repeats']} interleaved passes over all images (after a warm-up batch); decoding-free. "
             "Realised = the faster ONNX Runtime plain setting (thread spinning on, its default, or off) / the cascade "
             "(the engine's setting: spinning off, one session per piece)",
             f"- total run time {doc['seconds']:.0f} s; {doc['allocator']} (ONNX Runtime uses its own arena)", ""]
    for case in doc["cases"]:
        shares = " / ".join(f"{s * 100:.1f}" for s in case["exit_shares"])
        heads = ", ".join(f"{k + 1}" for k, h in enumerate(case["heads_exported"][:-1]) if not h)
        lines += [f"### {case['name']}", "",
                  f"{case['source']}; exit shares {shares} %; thresholds "
                  + ", ".join("never" if t is None else f"{t:.4g}" for t in case["thresholds"])
                  + f" ({case['score']}, fallback {case['fallback']})"
                  + (f"; exits without a head: {heads}" if heads else "")
                  + f". Counted: {case['plain_macs'] / 1e6:.1f} M MACs plain vs {case['avg_macs'] / 1e6:.1f} M average "
                  f"= **{case['counted_speedup']:.2f}x**. Engines agree on {case['engines_agree'] * 100:.1f} % of labels and exits. "
                  f"Export took {case['export_s']:.0f} s.", "",
                  "| batch | ort plain ms/img (spinning / not) | ort cascade ms/img | realised | counted "
                  "| realised / counted (goal >= 0.90) | torch cascade ms/img | ort vs torch cascade (goal > 1 at b1) "
                  "| torch plain ms/img |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in case["rows"]:
            ms = r["ms_per_image"]
            lines.append(f"| {r['batch_size']} | {ms['ort plain']:.2f} / {ms['ort plain, no spinning']:.2f} "
                         f"| {ms['ort cascade']:.2f} | {r['realised_speedup']:.2f}x "
                         f"| {r['counted_speedup']:.2f}x | **{r['realised_over_counted']:.2f}** | {ms['torch cascade']:.2f} "
                         f"| **{r['ort_cascade_vs_torch_cascade']:.2f}x** | {ms['torch plain']:.2f} |")
        lines += ["", "Each piece on every image (no exit taken): its share of the plain model's MACs and time; "
                  "speed = MACs per second relative to the plain model (below 1: slower per MAC).", "",
                  "| batch | piece | M MACs | ms/img | % plain MACs | % plain time | speed |", "|---|---|---:|---:|---:|---:|---:|"]
        for block in case["pieces"]:
            for p in block["pieces"]:
                lines.append(f"| {block['batch_size']} | {p['piece']}/{case['num_exits']} | {p['macs'] / 1e6:.1f} "
                             f"| {p['ms_per_image']:.2f} | {p['share_of_plain_macs'] * 100:.1f} | {p['share_of_plain_time'] * 100:.1f} "
                             f"| {p['speed']:.2f} |")
        variants = [(k, r["batch_size"], v) for r in case["rows"] for k, v in r["variants"].items() if k != "ort cascade"]
        if variants:
            lines += ["", "Session variants (realised speed-up vs ort plain): "
                      + "; ".join(f"{k} b{bs}: {v:.2f}x" for k, bs, v in variants)]
        lines.append("")
    return "\n".join(lines)


def run(quick: bool, out_md: Path, run_dir: Optional[Path] = None, *, resnet50: bool = True,
        threads: Optional[int] = None, repeats: Optional[int] = None, images: Optional[int] = None,
        variants: bool = False, json_out: Optional[Path] = None, argv: str = "") -> dict:
    """Benchmark the cases, write the markdown section to ``out_md`` (and the raw numbers to
    ``json_out``); returns the document."""
    threads = threads or default_threads()
    repeats = repeats or (1 if quick else 5)
    start = time.perf_counter()
    sys.path.insert(0, str(Path(__file__).parent))
    from common import allocator_as_scan_runs

    doc = {"machine": machine(threads), "allocator": allocator_as_scan_runs(), "quick": quick, "repeats": repeats, "argv": argv, "cases": []}
    cases = []
    if run_dir is not None:
        cases.append(lambda: run_case(Path(run_dir), images or (64 if quick else 512)))
    if resnet50:
        cases.append(lambda: resnet50_case(images or (64 if quick else 256)))
    for make in cases:
        case = make()
        print(f"benchmarking {case['name']} ...", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
            doc["cases"].append(bench_case(case, threads, repeats, BATCH_SIZES, Path(tmp), variants))
    doc["load_at_end"] = _load()
    doc["seconds"] = time.perf_counter() - start
    text = markdown(doc)
    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text + "\n")
    if json_out is not None:
        Path(json_out).write_text(json.dumps(doc, indent=1, default=float) + "\n")
    return doc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="a calibrated run folder (e.g. the Fashion-MNIST run)")
    ap.add_argument("--no-resnet50", action="store_true", help="skip the resnet50 @ 224 case")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 images, one timed pass")
    ap.add_argument("--threads", type=int, default=None, help="threads for both runtimes (default: all available cores)")
    ap.add_argument("--repeats", type=int, default=None, help="timed passes (default 5; 1 with --quick)")
    ap.add_argument("--images", type=int, default=None, help="images per case (default 512 run / 256 resnet50; 64 quick)")
    ap.add_argument("--variants", action="store_true", help="also time the cascade with thread spinning on")
    ap.add_argument("--out", "--markdown", dest="out", type=Path, default=None,
                    help="where to write the section (default bench/results/onnx.md; with --quick a temporary file)")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = ap.parse_args(argv)
    if args.run is None and args.no_resnet50:
        ap.error("nothing to benchmark: give --run or drop --no-resnet50")
    out = args.out
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="bench-onnx-")) / "onnx.md" if args.quick else \
            Path(__file__).resolve().parent / "results" / "onnx.md"
    run(args.quick, out, args.run, resnet50=not args.no_resnet50, threads=args.threads, repeats=args.repeats,
        images=args.images, variants=args.variants, json_out=args.json,
        argv=" ".join(sys.argv[1:] if argv is None else argv))
    sys.stdout.write(Path(out).read_text())
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

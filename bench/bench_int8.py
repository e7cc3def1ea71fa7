"""Benchmark: int8 pieces (`scan export --quantize int8`) vs float32 pieces on ONNX Runtime.

    python bench/bench_int8.py [--images N] [--repeats N] [--out FILE]
    python bench/bench_int8.py --run DIR [--max-drops 0.01,0.005] [--no-resnet50] [--out FILE]
    python -m bench --only int8 [--quick]  (the entry point: the Fashion-MNIST run as --run)

resnet50 at 224 px with random weights (slim heads, classifiers spread over random normal images as
in bench_onnx.py), exported as `scan export` writes it (plus plain.onnx), every piece and plain.onnx
quantized as `scan export --quantize int8` does (`inference.quantize._quantize_piece`: QDQ,
per-channel int8 weights, min/max ranges from 64 of the images, piece k on the float features before
it). Timed at batch 64, decoding-free, best of --repeats interleaved passes:

* each piece on every image, float32 vs int8 (goal: int8 >= 1.8x faster), and plain.onnx;
* the int8 cascade (thresholds placed on the int8 exits' own scores so 40/30/20/10 % leave at exits
  1..4) vs the float32 plain model (goal >= 3.5x realised), next to the float32 cascade at the same mix.

With ``--run DIR`` (a trained run with a test split), issue 21's numbers on it, each ``--max-drop``
on a copy of the run calibrated for it:

* accuracy: the float32 cascade (`scan calibrate --max-drop`, run as the float export) and the int8
  cascade (`scan export --quantize int8`, thresholds searched on its own validation outputs) on the
  test split: goal int8 within 0.5 point of float32; and whether each promise (`target.promise`,
  what `scan calibrate` states) held on the test images;
* the ONNX engine from files at batch 64 (the first ``--max-drop``): `onnx_engine.predict_paths`
  (what `scan predict FOLDER --run EXPORT --batch-size 64` runs: decoding one batch ahead,
  preprocessing from the manifest, early exit, the report) vs the plain model (plain.onnx, float32
  and int8) through the same input pipeline, interleaved; realised = plain time / cascade time,
  counted = plain MACs / the cascade's average MACs on those images (bench_onnx's definitions);
  goal realised >= 85 % of counted. Also the whole `scan predict` process (start-up included) next
  to a process running plain.onnx the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_onnx import interleaved, spread_classifiers  # noqa: E402

SHARES = (0.40, 0.30, 0.20, 0.10)
BATCH = 64


def flags() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    found = sorted({f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f" {f}" in text})
    return " ".join(found) or "none of avx2 / avx512f / avx512_vnni / avx_vnni"


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return "?"


def mix_thresholds(exit_logits: list, shares=SHARES) -> list:
    """max_softmax thresholds (numpy, on these logits) that send ``shares`` out at exits 1..K-1."""
    import numpy as np

    from scan_cli.scoring import confidence

    n = len(exit_logits[0])
    remaining = np.ones(n, dtype=bool)
    out = []
    for k, share in enumerate(shares[:-1]):
        scores = np.asarray(confidence(exit_logits[k], "max_softmax"))
        alive = np.sort(scores[remaining])[::-1]
        count = int(round(share * n))
        t = float((alive[count - 1] + alive[count]) / 2) if count < len(alive) else float(alive[-1])
        out.append(t)
        remaining &= ~(scores >= t)
    return out


def resnet50(args) -> dict:
    """The random-weight resnet50 case: per-piece and cascade timings, float32 vs int8."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from scan_cli.artifact import info_for
    from scan_cli.backbones.registry import default_registry
    from scan_cli.inference.export import export_model
    from scan_cli.inference.onnx_engine import Cascade, session_options
    from scan_cli.inference.quantize import _quantize_piece
    from scan_cli.model import HeadConfig, build_scan_model

    load_start = os.getloadavg()
    t_all = time.perf_counter()
    registry = default_registry()
    spec = registry.get("resnet50")
    torch.manual_seed(0)
    model = build_scan_model(spec, num_classes=1000, head=HeadConfig.preset("slim"), input_size=224).eval()
    x = torch.randn(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    spread_classifiers(model, x)
    info = info_for(model, spec, registry, classes=[str(i) for i in range(1000)],
                    data_config=model.backbone.data_config, input_size=224)
    info.calibration = {"thresholds": [0.5, 0.5, 0.5, None], "score": "max_softmax", "fallback": "last"}
    work = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    manifest = export_model(model, info, work / "f32", plain=True, all_exits=True)
    xn = x.numpy()
    flt = Cascade(work / "f32")
    # int8: every piece, ranges from the float features on 64 images
    (work / "i8").mkdir()
    h = xn[:64]
    for k, piece in enumerate(manifest["pieces"]):
        _quantize_piece(work / "f32" / piece["file"], work / "i8" / piece["file"], piece["input"], [h[:32], h[32:]])
        if k < len(manifest["pieces"]) - 1:
            h = flt._run(k, h)[0]
    _quantize_piece(work / "f32" / "plain.onnx", work / "i8" / "plain.onnx", "image", [xn[:32], xn[32:64]])
    (work / "i8" / "manifest.json").write_text((work / "f32" / "manifest.json").read_text())
    i8 = Cascade(work / "i8")
    K = flt.num_exits
    batches = [xn[i:i + BATCH] for i in range(0, len(xn), BATCH)]
    f_logits = [np.concatenate(z) for z in zip(*(flt.exits(b) for b in batches))]
    i_logits = [np.concatenate(z) for z in zip(*(i8.exits(b) for b in batches))]
    t_f, t_i = mix_thresholds(f_logits), mix_thresholds(i_logits)
    shares = lambda c, t: np.bincount(np.concatenate([c.early_exit(b, t).exit_index for b in batches]),  # noqa: E731
                                      minlength=K) / len(xn)
    plains = {p: ort.InferenceSession(str(work / p / "plain.onnx"), session_options(),
                                      providers=["CPUExecutionProvider"]) for p in ("f32", "i8")}
    plain_run = lambda s: (lambda bs: [s.run(None, {"image": b}) for b in bs])  # noqa: E731
    # piece inputs on every image (float features), for per-piece timing
    inputs = [batches]
    for k in range(K - 1):
        inputs.append([flt._run(k, b)[0] for b in inputs[-1]])
    piece_fn = lambda c, k: (lambda bs: [c._run(k, b) for b in inputs[k]])  # noqa: E731
    fns = {"plain f32": plain_run(plains["f32"]), "plain int8": plain_run(plains["i8"]),
           "cascade f32": lambda bs: [flt.early_exit(b, t_f) for b in bs],
           "cascade int8": lambda bs: [i8.early_exit(b, t_i) for b in bs]}
    for k in range(K):
        fns[f"piece {k + 1} f32"] = piece_fn(flt, k)
        fns[f"piece {k + 1} int8"] = piece_fn(i8, k)
    for fn in fns.values():  # warm-up
        fn(batches[:1])
    times = interleaved(fns, batches, args.repeats)
    ms = {k: 1000 * min(v) / len(xn) for k, v in times.items()}
    agree = [float((f.argmax(1) == i.argmax(1)).mean()) for f, i in zip(f_logits, i_logits)]
    macs = manifest["macs"]
    counted = macs["backbone"] / float(np.dot(shares(i8, t_i), macs["exits_cumulative"]))
    doc = {"cpu": cpu_model(), "flags": flags(), "cores": len(os.sched_getaffinity(0)),
           "onnxruntime": ort.__version__, "load_at_start": [round(v, 2) for v in load_start],
           "load_at_end": [round(v, 2) for v in os.getloadavg()], "images": len(xn), "batch": BATCH,
           "repeats": args.repeats, "ms_per_image": ms, "shares_int8": shares(i8, t_i).tolist(),
           "shares_f32": shares(flt, t_f).tolist(), "counted_speedup": counted,
           "top1_agreement_f32_int8_per_exit": agree, "seconds": time.perf_counter() - t_all}
    print(json.dumps(doc, indent=2))
    return doc


def markdown(doc: dict) -> str:
    ms = doc["ms_per_image"]
    lines = [f"- machine: {doc['cpu']}, {doc['cores']} cores; flags: {doc['flags']}; onnxruntime {doc['onnxruntime']}",
             f"- load average at start {doc['load_at_start']}, at end {doc['load_at_end']} (2 cores: the machine was "
             f"{'busy' if max(doc['load_at_start'] + doc['load_at_end']) > 2.5 else 'quiet'})",
             f"- {doc['images']} random normal images, batch {doc['batch']}, best of {doc['repeats']} interleaved passes, "
             "decoding-free; ONNX Runtime's default threads",
             "", "| graph | float32 ms/img | int8 ms/img | int8 speed-up (goal >= 1.8x) |", "|---|---:|---:|---:|"]
    names = ["plain"] + [f"piece {k + 1}" for k in range(len(doc["shares_int8"]))]
    for name in names:
        f, i = ms[f"{name} f32"], ms[f"{name} int8"]
        lines.append(f"| {name} | {f:.2f} | {i:.2f} | **{f / i:.2f}x** |")
    pct = lambda s: " / ".join(f"{100 * v:.1f}" for v in s)  # noqa: E731
    lines += ["", f"Exit mix: int8 cascade {pct(doc['shares_int8'])} %, float32 cascade {pct(doc['shares_f32'])} % "
              "(thresholds placed on each cascade's own scores). Top-1 agreement float32 vs int8 per exit "
              f"(random weights): {', '.join(f'{100 * a:.1f} %' for a in doc['top1_agreement_f32_int8_per_exit'])}.", "",
              "| path | ms/img | vs float32 plain |", "|---|---:|---:|"]
    for name in ("plain f32", "plain int8", "cascade f32", "cascade int8"):
        lines.append(f"| {name} | {ms[name]:.2f} | {ms['plain f32'] / ms[name]:.2f}x |")
    lines += ["", f"int8 cascade vs float32 plain model: **{ms['plain f32'] / ms['cascade int8']:.2f}x** realised "
              f"(goal >= 3.5x); counted (MACs) {doc['counted_speedup']:.2f}x. Run took {doc['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128, help="resnet50: random images (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed interleaved passes (default 3)")
    parser.add_argument("--run", type=Path, default=None, help="a trained run with a test split (e.g. the Fashion-MNIST run)")
    parser.add_argument("--max-drops", default="0.01,0.005", help="--run: the --max-drop targets compared (default 0.01,0.005)")
    parser.add_argument("--no-resnet50", action="store_true", help="skip the random-weight resnet50 case")
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 images, one pass, one --max-drop")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown section here")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeats = 64, 1
        args.max_drops = args.max_drops.split(",")[0]
    if args.run is None and args.no_resnet50:
        parser.error("nothing to benchmark: give --run or drop --no-resnet50")
    sections = []
    if args.run is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from int8_run import markdown as run_markdown
        from int8_run import run_case

        drops = [float(v) for v in args.max_drops.split(",") if v.strip()]
        sections.append(run_markdown(run_case(args.run, drops, BATCH, args.repeats if not args.quick else 1)))
    if not args.no_resnet50:
        sections.append(markdown(resnet50(args)))
    if args.quick:
        sections.insert(0, "**--quick: a smoke run, not results**\n")
    if args.out:
        args.out.write_text("\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())

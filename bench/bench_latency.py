"""Per-exit latency vs the plain timm model, on this machine's CPU.

For resnet50 at 224 px and resnet18_cifar at 32 px (random weights, slim heads; thresholds do not
matter: each exit is timed as the network run up to and including it), time the plain timm forward
and every exit at batch 1 and batch 64, in the same process and thread setting, and write
bench/results/latency.md with the machine it ran on. Counted MACs are shown next to the times.

    python bench/bench_latency.py                    # ~2-5 minutes on 2 cores (longer when the box is busy)
    python bench/bench_latency.py --quick            # a smoke run (few iterations, small batch)
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

CASES = [("resnet50", 224), ("resnet18_cifar", 32)]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def busy(cores: int) -> bool:
    """Was the machine loaded beyond its cores (by anything, this run included)?"""
    try:
        return os.getloadavg()[0] > cores + 0.5
    except OSError:
        return False


def backbone_share(model, size: int, batch: int, rounds: int, threads: int, channels_last: bool) -> list[float]:
    """Time of the backbone alone (stem and sections, no exit head) up to each split / the plain
    model's time, interleaved, medians: where an exit's time goes when it exceeds its MACs share."""
    import statistics

    import torch

    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    if channels_last:  # the model is already in this layout (measure_latency leaves it so)
        x = x.contiguous(memory_format=torch.channels_last)

    def upto(k):
        h = model.stem(x)
        for j in range(k + 1):
            h = model.section(j, h)
        return h

    plain = model.backbone.model
    variants = [lambda: plain(x)] + [lambda k=k: upto(k) for k in range(model.num_exits - 1)]
    samples = [[] for _ in variants]
    torch.set_num_threads(threads)
    with torch.inference_mode():
        for fn in variants:  # warm-up
            fn()
        for i in range(rounds):
            for j in [(i + n) % len(variants) for n in range(len(variants))]:
                start = time.perf_counter()
                variants[j]()
                samples[j].append(time.perf_counter() - start)
    medians = [statistics.median(v) for v in samples]
    return [m / medians[0] for m in medians[1:]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=None, help="timed rounds (default: per case and batch size)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    parser.add_argument("--channels-last", choices=("on", "off"), default="on",
                        help="memory layout for the plain model and SCAN alike (on: what scan predict and profile use "
                             "for convolutional backbones)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, batch 4")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "latency.md")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from common import allocator_as_scan_runs

    allocator = allocator_as_scan_runs()

    import torch

    from scan_cli import profiling
    from scan_cli.model import build_bare_model

    threads = args.threads or os.cpu_count() or 1
    batch = 4 if args.quick else args.batch
    started = time.time()
    load_before = load_average()
    disturbed = busy(os.cpu_count() or 1)
    rows = []
    for backbone_id, size in CASES:
        torch.manual_seed(0)
        model, size = build_bare_model(backbone_id, size, "slim")
        macs = profiling.count_macs(model, size)
        # (warm-up rounds, timed rounds) per batch size; a round times every exit and the plain model once.
        # resnet50 at batch 64 takes seconds per forward on 2 cores: few rounds there.
        plan = {1: (args.warmup, 30 if backbone_id == "resnet50" else 40),  # cheap: many rounds, robust p50
                batch: (args.warmup, 3 if backbone_id == "resnet50" else 10)}
        if args.quick:
            plan = {b: (0, 1) for b in plan}
        if args.iters:
            plan = {b: (w, args.iters) for b, (w, _) in plan.items()}
        t0 = time.time()
        parts = [profiling.measure_latency(model, size, batch_sizes=(b,), device="cpu", threads=threads, warmup=w,
                                           iters=n, channels_last=args.channels_last == "on", progress=lambda m: print(f"  {backbone_id}: {m}", file=sys.stderr, flush=True))
                 for b, (w, n) in plan.items()]
        lat = parts[0]
        for extra in parts[1:]:  # one report with both batch sizes
            lat.batch_sizes += extra.batch_sizes
            lat.backbone.update(extra.backbone)
            for mine, theirs in zip(lat.exits, extra.exits):
                mine.update(theirs)
        shares = {b: backbone_share(model, size, b, 1 if args.quick else n, threads, args.channels_last == "on")
                  for b, (_, n) in plan.items()}
        print(f"{backbone_id}@{size}: {time.time() - t0:.0f}s", file=sys.stderr)
        disturbed = disturbed or busy(os.cpu_count() or 1)
        rows.append((backbone_id, size, macs, lat, plan, shares))
        del model

    elapsed = time.time() - started
    lines = [
        "# Per-exit latency vs the plain timm model (CPU)",
        "",
        "Written by `python bench/bench_latency.py`. Random weights, slim exit heads (`HeadConfig.preset('slim')`),",
        "default split points. An exit's latency is the network run up to and including that exit (stem,",
        "sections, every exit head on the way): what an image answered there costs. `plain` is the timm",
        "model's own forward. Ratios are exit p50 / plain p50 at the same batch size, in the same run.",
        "MACs are fvcore counts at batch 1 (cumulative: backbone to the split + all exit heads on the way).",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores ({platform.system()} {platform.release()})",
        f"- torch {torch.__version__}, {rows[0][3].threads} threads, layout {rows[0][3].layout}, python {platform.python_version()}",
        "- timing is interleaved: each round runs the plain model and every exit once (rotating order), so a busy",
        "  neighbour slows all alike; rounds (warm-up + timed) per batch size: "
        + "; ".join(f"{r[0]} " + ", ".join(f"b{b}: {w}+{n}" for b, (w, n) in r[4].items()) for r in rows),
        f"- load average before / after: {load_before} / {load_average()} "
        "(the machine is shared: a load above the core count inflates times, mostly at batch 1)",
        f"- total run time {elapsed:.0f} s; {allocator}",
        "",
    ]
    for backbone_id, size, macs, lat, _, shares in rows:
        b1, bn = lat.batch_sizes
        lines += [
            f"## {backbone_id} at {size} px",
            "",
            f"| exit | cumulative GMACs | % of plain MACs | b{b1} p50 ms | b{b1} p95 ms | b{b1} vs plain "
            f"| b{bn} p50 ms | b{bn} p95 ms | b{bn} ms/image | b{bn} vs plain |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for k, e in enumerate(macs.exits):
            t1, tn = lat.exits[k][b1], lat.exits[k][bn]
            lines.append(
                f"| {e.name} ({e.split}) | {e.macs_cumulative / 1e9:.3f} | {100 * e.macs_cumulative / macs.backbone_macs:.1f}% "
                f"| {t1.p50_ms:.2f} | {t1.p95_ms:.2f} | {lat.ratio(k, b1):.2f}x "
                f"| {tn.p50_ms:.1f} | {tn.p95_ms:.1f} | {tn.per_image_ms:.2f} | {lat.ratio(k, bn):.2f}x |")
        p1, pn = lat.backbone[b1], lat.backbone[bn]
        lines.append(
            f"| plain (timm) | {macs.backbone_macs / 1e9:.3f} | 100.0% | {p1.p50_ms:.2f} | {p1.p95_ms:.2f} | 1.00x "
            f"| {pn.p50_ms:.1f} | {pn.p95_ms:.1f} | {pn.per_image_ms:.2f} | 1.00x |")
        lines += ["", "The backbone alone (stem and sections, no exit head) up to each split, time vs the plain model's "
                      "next to its share of the MACs: when an exit's time share exceeds its MACs share, this says whether "
                      "the backbone's own early stages or the exit heads take the extra time.", "",
                  "| split | MACs share | " + " | ".join(f"b{b} time share" for b in shares) + " |",
                  "|---|---:|" + "---:|" * len(shares)]
        for k, e in enumerate(macs.exits[:-1]):
            lines.append(f"| {e.split} | {e.backbone_macs_to_split / macs.backbone_macs:.2f} | "
                         + " | ".join(f"{shares[b][k]:.2f}" for b in shares) + " |")
        first, last = macs.exits[0], macs.exits[-1]
        lines += ["", f"Shallow exits add {100 * macs.heads_overhead:.1f}% of the plain MACs "
                      f"({macs.shallow_exit_params / 1e6:.2f}M params). Exit {first.name} costs "
                      f"{100 * first.macs_cumulative / macs.backbone_macs:.0f}% of the plain MACs and "
                      f"{100 * lat.ratio(0, b1):.0f}% (batch {b1}) / {100 * lat.ratio(0, bn):.0f}% (batch {bn}) of the plain model's time; "
                      f"an image reaching exit {last.name} costs {100 * last.macs_cumulative / macs.backbone_macs - 100:+.0f}% "
                      f"MACs and {100 * lat.ratio(len(macs.exits) - 1, b1) - 100:+.0f}% / "
                      f"{100 * lat.ratio(len(macs.exits) - 1, bn) - 100:+.0f}% time vs the plain model.", ""]
    if disturbed:
        lines.insert(2, "**The machine was busy during this run (1-minute load above the core count): absolute times "
                        "are inflated and ratios noisy. Re-run on a quiet machine.**\n")
    if args.quick:
        lines.insert(2, "**Smoke run (--quick): not a measurement.**\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

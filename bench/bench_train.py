"""Training throughput: SCAN joint vs the plain backbone, and heads-only vs joint, in one run.

    python bench/bench_train.py [--backbone resnet18_cifar] [--img-size 32] [--batch 64] [--steps 6]

Same batch, same machine, same process. Each variant does warm-up steps, then timed SGD steps on
random images (data loading excluded: this measures the model). Writes a markdown table to
bench/results/train.md with the machine it ran on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def machine() -> str:
    import torch

    from common import cpu_name

    cpu = cpu_name()
    import os

    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def append_results(out: Path, title: str, lines: list) -> None:
    """Append a section to a results file (created with ``title``) and echo it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = out.read_text() if out.exists() else f"{title}\n\n"
    out.write_text(previous + "\n".join(lines) + "\n\n")
    print("\n".join(lines))


def time_steps(step, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t


def main() -> None:
    import torch
    import torch.nn.functional as F

    from scan_cli.model import HeadConfig, build_scan_model
    from scan_cli.training.recipes import Recipe
    from scan_cli.backbones.registry import default_registry
    from scan_cli.training.loop import _freeze_backbone
    from scan_cli.training.loss import scan_loss

    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="resnet18_cifar")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--channels-last", action="store_true", help="NHWC layout for every variant")
    p.add_argument("--out", default="bench/results/train.md")
    a = p.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from common import allocator_as_scan_runs

    allocator = allocator_as_scan_runs()

    torch.manual_seed(0)
    spec = default_registry().get(a.backbone)
    x = torch.randn(a.batch, 3, a.img_size, a.img_size)
    y = torch.randint(0, a.classes, (a.batch,))
    recipe = Recipe()

    plain = spec.build(num_classes=a.classes).train()
    opt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)

    def plain_step():
        opt.zero_grad()
        F.cross_entropy(plain.model(x), y).backward()
        opt.step()

    def scan_step_for(model):
        params = [q for q in model.parameters() if q.requires_grad]
        o = torch.optim.SGD(params, lr=0.01, momentum=0.9)

        def step():
            o.zero_grad()
            logits, feats = model(x, return_features=True)
            scan_loss(logits, feats, y, recipe)[0].backward()
            o.step()
        return step

    joint = build_scan_model(spec, num_classes=a.classes, head=HeadConfig(), input_size=a.img_size).train()
    heads = build_scan_model(spec, num_classes=a.classes, head=HeadConfig(), input_size=a.img_size)
    _freeze_backbone(heads, retrain_classifier=True)
    heads.train()
    heads.backbone.eval()

    if a.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        for m in (plain, joint, heads):
            m.to(memory_format=torch.channels_last)

    results = {}
    for name, step in (("plain backbone (CE only)", plain_step), ("SCAN joint", scan_step_for(joint)),
                       ("SCAN heads-only (frozen backbone)", scan_step_for(heads))):
        seconds = time_steps(step, a.steps, a.warmup)
        results[name] = a.batch * a.steps / seconds
        print(f"{name:36s} {results[name]:8.1f} img/s", flush=True)

    plain_rate = results["plain backbone (CE only)"]
    joint_rate = results["SCAN joint"]
    heads_rate = results["SCAN heads-only (frozen backbone)"]
    lines = [
        f"## Training throughput: {a.backbone} at {a.img_size} px, batch {a.batch}, {a.classes} classes"
        + (", channels_last" if a.channels_last else ""),
        "",
        f"Machine: {machine()}. Command: `python bench/bench_train.py --backbone {a.backbone} --img-size {a.img_size} "
        f"--batch {a.batch} --steps {a.steps}{' --channels-last' if a.channels_last else ''}`. Random images (model time only), {a.warmup} warm-up + {a.steps} timed SGD steps each; {allocator}.",
        "",
        "| variant | images/s | ratio |",
        "|---|---:|---:|",
        f"| plain backbone (CE only) | {plain_rate:.1f} | 1.00x |",
        f"| SCAN joint (slim heads, KD + hint) | {joint_rate:.1f} | {joint_rate / plain_rate:.2f}x plain (goal >= 0.8x) |",
        f"| SCAN heads-only (frozen backbone) | {heads_rate:.1f} | {heads_rate / joint_rate:.2f}x joint (goal >= 2.5x) |",
        "",
    ]
    append_results(Path(a.out), "# Training throughput", lines)


if __name__ == "__main__":
    main()

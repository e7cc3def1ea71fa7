"""`scan profile`: counted cost per exit (fvcore MACs), the cascade's expected cost, measured latency."""

from __future__ import annotations

from typing import Optional

import typer

from ..devices import check_device, keep_freed_memory, resolve_device, use_channels_last
from ..errors import UsageError
from ._options import DEVICE, JSON, RUN


def profile_command(
    backbone_id: Optional[str] = typer.Argument(None, metavar="[BACKBONE_ID]",
                                                help="Profile a bare backbone (random weights) instead of a run."),
    run: Optional[str] = RUN,
    img_size: Optional[int] = typer.Option(None, "--img-size", help="Input side in pixels (default: the run's or the backbone's)."),
    heads: str = typer.Option("slim", "--heads", help="Exit-head preset for a bare backbone: slim or paper."),
    as_json: bool = JSON,
    flops: bool = typer.Option(False, "--flops", help="Also show GFLOPs (= 2 x MACs)."),
    no_latency: bool = typer.Option(False, "--no-latency", help="Count MACs only; measure nothing."),
    device: str = DEVICE,
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads while timing (default: torch's current)."),
    batch_size: int = typer.Option(32, "--batch-size", help="The larger batch size timed (batch 1 is always timed)."),
    warmup: int = typer.Option(2, "--warmup", help="Untimed rounds before timing (a round runs every exit and the plain model once)."),
    iters: int = typer.Option(20, "--iters", help="Timed rounds per batch size."),
    max_seconds: Optional[float] = typer.Option(60.0, "--max-seconds",
                                                help="Stop timing a batch size after this long (at least 3 rounds)."),
    cascade_images: int = typer.Option(512, "--cascade-images", help="Validation images for timing the real cascade."),
    channels_last: str = typer.Option("auto", "--channels-last", help="Memory layout while timing, as scan predict: auto (on except for ViTs), on or off."),
):
    """Cost per exit: fvcore MACs (batch 1), the cascade's expected cost when calibrated, and latency."""
    from ._output import info, print_json, stdout_console

    if backbone_id is not None and run is not None:
        raise UsageError("give either BACKBONE_ID or --run, not both")
    for name, value in (("--img-size", img_size), ("--batch-size", batch_size), ("--iters", iters), ("--threads", threads)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    if warmup < 0:
        raise UsageError(f"--warmup must be 0 or more, got {warmup}")
    if channels_last not in ("auto", "on", "off"):
        raise UsageError(f"--channels-last '{channels_last}': use auto, on or off")
    if max_seconds is not None and not max_seconds > 0:  # NaN fails this too
        raise UsageError(f"--max-seconds must be more than 0, got {max_seconds}")
    if cascade_images < 1:
        raise UsageError(f"--cascade-images must be at least 1, got {cascade_images}")
    from ..training.recipes import HEAD_PRESETS

    if heads not in HEAD_PRESETS:
        raise UsageError(f"--heads '{heads}': use one of {', '.join(HEAD_PRESETS)}")
    check_device(device)

    from .. import profiling

    run_dir = None
    model = None
    calibration = None
    if backbone_id is not None:
        info(f"building {backbone_id} with {heads} heads (random weights)")
        from ..model import build_bare_model

        model, size = build_bare_model(backbone_id, img_size, heads)
        info("counting MACs (fvcore, batch 1)")
        report = profiling.profile_macs(model, size)
        from ..backbones.registry import default_registry

        source = {"backbone": backbone_id, "provider": default_registry().get(backbone_id).provider, "heads": heads}
    else:
        from ..artifact import load, read_info
        from ..runs import model_path, resolve_run

        run_dir = resolve_run(run)
        artifact_info = read_info(model_path(run_dir))
        size = int(img_size or artifact_info.input_size)
        calibration = artifact_info.calibration
        if not no_latency:
            model, artifact_info = load(model_path(run_dir))
        info(f"counting MACs for {run_dir} (fvcore, batch 1; cached per artifact)")
        report = profiling.run_macs(run_dir, size, model=model)
        source = {"run": str(run_dir), "backbone": artifact_info.backbone_id, "provider": artifact_info.provider}

    doc = {"source": source, **report.to_dict()}
    if flops:
        doc["backbone_flops"] = 2 * report.backbone_macs
        for e in doc["exits"]:
            e["flops_cumulative"] = 2 * e["macs_cumulative"]

    expected = None
    if run_dir is None:
        doc["expected"] = None
        doc["expected_note"] = "a bare backbone has no calibration: no expected cost"
    else:
        problem = profiling.calibration_error(calibration, report.num_exits)
        if problem:
            doc["expected"] = None
            doc["expected_note"] = problem
        else:
            expected = profiling.expected_cost(report, calibration)
            doc["expected"] = expected.to_dict()

    latency = cascade = None
    if not no_latency:
        keep_freed_memory(resolve_device(device))  # as scan predict runs: both are timed under it
        layout = use_channels_last(channels_last, model)  # the same rule scan predict uses
        sizes = sorted({1, batch_size})
        latency = profiling.measure_latency(model, size, batch_sizes=sizes, device=device, threads=threads,
                                            warmup=warmup, iters=iters, max_seconds=max_seconds, progress=info,
                                            channels_last=layout)
        doc["latency"] = latency.to_dict()
        for k, e in enumerate(doc["exits"]):
            e.update(latency.exit_dict(k))
        if expected is not None:
            cascade, reason = _time_cascade(profiling, model, run_dir, artifact_info, calibration, batch_size,
                                            cascade_images, device, threads, warmup, info, layout)
            doc["cascade"] = ({**cascade.to_dict(), "counted_speedup": expected.speedup} if cascade is not None
                              else {"measured": False, "reason": reason})
            if cascade is None:
                info(f"cascade not timed: {reason}")

    if as_json:
        print_json(doc)
        return
    console = stdout_console()
    _print_table(console, report, doc, expected, latency, cascade, flops)


def _time_cascade(profiling, model, run_dir, artifact_info, calibration, batch_size, max_images, device, threads, warmup,
                  info, channels_last):
    info("loading validation images for the real cascade")
    from ..data import validation_batches

    batches, reason = validation_batches(run_dir, artifact_info, batch_size, max_images=max_images)
    if batches is None:
        return None, reason
    info(f"timing the cascade vs the plain backbone on {sum(int(b.shape[0]) for b in batches)} validation images")
    from ..policy import Calibration

    policy = Calibration.from_metadata(calibration, model.num_exits).policy()
    timing = profiling.measure_cascade(
        model, batches, policy.thresholds, score=policy.score, fallback=policy.fallback, device=device,
        threads=threads, warmup=min(warmup, 1), channels_last=channels_last)
    return timing, None


def _fmt_count(value: float, scale: float) -> str:
    return f"{value / scale:.3f}"


def _print_table(console, report, doc, expected, latency, cascade, flops: bool) -> None:
    from rich import box
    from rich.table import Table

    big = report.backbone_macs >= 1e8
    scale, unit = (1e9, "GMACs") if big else (1e6, "MMACs")
    name = doc["source"].get("backbone", "")
    table = Table(title=f"{name}: counted cost per exit in {unit} ({report.input_size}px, batch 1)", box=box.SIMPLE_HEAD)
    cols = ["exit", "after", "backbone", "attention", "head", "cumulative", "% plain", "params M"]
    if flops:
        cols.append(f"cumulative {'GFLOPs' if big else 'MFLOPs'}")
    for c in cols:
        table.add_column(c, justify="left" if c in ("exit", "after") else "right")
    for e in report.exits:
        row = [e.name, e.split, _fmt_count(e.backbone_macs_to_split, scale), _fmt_count(e.attention_macs, scale),
               _fmt_count(e.head_macs, scale), _fmt_count(e.macs_cumulative, scale),
               f"{100 * e.macs_cumulative / report.backbone_macs:.1f}%", f"{e.params / 1e6:.3f}"]
        if flops:
            row.append(_fmt_count(2 * e.macs_cumulative, scale))
        table.add_row(*row)
    plain = ["plain", f"({doc['source'].get('provider') or 'backbone'})", _fmt_count(report.backbone_macs, scale), "", "", _fmt_count(report.backbone_macs, scale),
             "100.0%", f"{report.backbone_params / 1e6:.3f}"]
    if flops:
        plain.append(_fmt_count(2 * report.backbone_macs, scale))
    table.add_row(*plain)
    console.print(table)
    if latency is not None:
        lat = Table(title=f"{name}: time to each exit vs its MACs, ms ({latency.device}, {latency.threads} threads, "
                          f"{latency.layout})", box=box.SIMPLE_HEAD)
        lat.add_column("exit")
        lat.add_column("MACs vs plain", justify="right")
        for b in latency.batch_sizes:
            for c in (f"b{b} p50", f"b{b} p95", f"b{b} time vs plain"):
                lat.add_column(c, justify="right")
        for k, e in enumerate(report.exits):
            row = [e.name, f"{e.macs_cumulative / report.backbone_macs:.2f}x"]
            for b in latency.batch_sizes:
                t = latency.exits[k][b]
                row += [f"{t.p50_ms:.2f}", f"{t.p95_ms:.2f}", f"{latency.ratio(k, b):.2f}x"]
            lat.add_row(*row)
        row = ["plain", "1.00x"]
        for b in latency.batch_sizes:
            t = latency.backbone[b]
            row += [f"{t.p50_ms:.2f}", f"{t.p95_ms:.2f}", "1.00x"]
        lat.add_row(*row)
        console.print(lat)
    console.print(f"units: MACs (one multiply-accumulate = 1; GFLOPs = 2 x GMACs). Shallow exits add "
                  f"{report.shallow_exit_macs / scale:.3f} {unit} ({100 * report.heads_overhead:.1f}% of the backbone) and "
                  f"{report.shallow_exit_params / 1e6:.3f}M params.", highlight=False)
    if latency is not None:
        console.print(f"latency: {latency.warmup} warm-up + up to {latency.iters} interleaved timed rounds; an exit's "
                      f"time runs the network up to and including it; plain = the backbone's own forward.",
                      highlight=False)
    if expected is not None:
        shares = ", ".join(f"{100 * s:.1f}%" for s in expected.exit_shares)
        console.print(f"expected cost (calibrated exit shares {shares}): {expected.macs / scale:.3f} {unit} per image, "
                      f"counted speed-up {expected.speedup:.2f}x", highlight=False)
    else:
        console.print(f"expected cost: none ({doc.get('expected_note')})", highlight=False)
    if cascade is not None:
        from ..profiling import speed_sentence

        console.print(speed_sentence(cascade.measured_speedup, expected.speedup, cascade.images_per_second,
                                 f"{cascade.what}: {cascade.images} images, batch {cascade.batch_size}, {cascade.layout}, "
                                 f"{cascade.device}, {cascade.threads} threads"), highlight=False)
    elif doc.get("cascade"):
        console.print(f"real cascade: not timed ({doc['cascade']['reason']})", highlight=False)
    if report.uncounted_ops:
        console.print("[bold red]uncounted operators[/bold red] (no MAC handle; may hide real work): "
                      + ", ".join(f"{k} x{v}" for k, v in report.uncounted_ops.items()), highlight=False)
    else:
        console.print("uncounted operators: none", highlight=False)
    if report.not_counted_elementwise:
        console.print("not counted (elementwise, by convention): "
                      + ", ".join(f"{k.split('::')[-1]} x{v}" for k, v in report.not_counted_elementwise.items()),
                      highlight=False)


def register(app: typer.Typer) -> None:
    app.command("profile")(profile_command)

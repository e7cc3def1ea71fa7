"""`scan predict`: early-exit predictions for image files (thin: flags -> scan_cli.inference.torch_engine)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UsageError
from ._options import DEVICE, JSON, RUN

HELP = """Predict image files with real early exit: each image leaves the network at the first exit
that is confident enough, so easy images cost a fraction of the full backbone.

INPUTS are image files, folders (searched recursively) or glob patterns ('photos/**/*.jpg').
The run's own eval preprocessing and calibrated thresholds are used; --target-acc or --thresholds
override the thresholds for this call only.

Output: a table on stdout (exits shown as 1/4 .. 4/4), or with --json one document
{"predictions": [...], "errors": [{"path", "error"}], "summary": {...}, "drift": {...}} where each prediction has
path, label, class_index, confidence (probability of the label), score (the exit rule's score),
exit (1-based), exit_index (0-based), num_exits, macs (MACs spent on that image) and top_k
([{label, probability}]). A summary (exit shares, average MACs vs the plain backbone, images/s)
goes to stderr.

--engine onnxruntime runs the same early exit on ONNX Runtime (CPU), from a `scan export` of the
run (made once and cached in the run's cache/) or from an export folder given as --run (which needs
neither torch nor timm); --quantize int8 runs the run's int8 export (made once and cached), its
thresholds searched on the int8 pieces' own validation outputs, for the run's target or --target-acc,
and only the exit heads they use.

Drift check (--drift on, the default): the images are compared with what calibration saw (exit
shares and answering scores; two-sample tests, false-alarm rate 1 % on images like the validation
images; 50 images at least). When they differ, one warning line on stderr says what moved; --json
always carries a "drift" object (fired, p_value, n, reference_n, exit_shares, or a status such as
"no reference" or "too few images").

Exit codes: 0 every image predicted; 3 some files could not be read (listed in errors) but at
least one was predicted; 1 no image could be read, or an error (e.g. nothing matched INPUTS);
2 bad flags."""


def predict_command(
    inputs: List[str] = typer.Argument(..., metavar="INPUTS", help="Image files, folders or glob patterns."),
    run: Optional[str] = RUN,
    target_acc: Optional[float] = typer.Option(None, "--target-acc", help="Calibrate for this validation accuracy (fraction, e.g. 0.95) for this call only; not saved."),
    thresholds: Optional[str] = typer.Option(None, "--thresholds", help="One threshold per shallow exit (K-1 values), e.g. 0.9,0.8,0.95; 'none' or 'inf' = never exit there."),
    score: Optional[str] = typer.Option(None, "--score", help="Confidence score: max_softmax, margin or neg_entropy (default: the calibration's)."),
    fallback: Optional[str] = typer.Option(None, "--fallback", help="Answer of images no exit took: last or ensemble (default: the calibration's)."),
    top_k: int = typer.Option(1, "--top-k", min=1, help="Also report the K most likely labels with their probabilities."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per batch."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decoding processes (default: min(4, CPUs - 1); 0, a background thread, when all images fit in one batch or on 2 CPUs or fewer)."),
    device: str = DEVICE,
    channels_last: str = typer.Option("auto", "--channels-last", help="NHWC memory layout: auto (on except for ViTs), on or off."),
    as_json: bool = JSON,
    csv_path: Optional[Path] = typer.Option(None, "--csv", metavar="FILE", help="Also write the predictions (and errors) to this CSV file."),
    compare_plain: bool = typer.Option(False, "--compare-plain", help="Also time the plain backbone on this call's decoded images (model only) and report the realised speed-up next to the counted one."),
    engine: Optional[str] = typer.Option(None, "--engine", help="torch (default) or onnxruntime (runs a 'scan export' of the run; an export folder as --run implies it)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8 (with --engine onnxruntime and a training run): run the int8 export of the run (quantized once and cached in its cache/), thresholds searched on its own validation outputs for the run's target or --target-acc."),
    drift: str = typer.Option("on", "--drift", help="on: compare these images with what calibration saw and warn when they differ (false-alarm rate 1 %); off: skip it (e.g. for tiny batches)."),
):
    from ..inference import onnx_engine, torch_engine
    from ..inference.report import summary_lines, write_csv
    from ._output import info, print_json

    # the ONNX Runtime engine gives the same report and exit codes
    use_onnx = onnx_engine.wants_onnx(engine, run)
    if use_onnx and compare_plain:
        raise UsageError("--compare-plain times the PyTorch engine: drop it with --engine onnxruntime "
                         "(bench/bench_onnx.py compares ONNX Runtime with the plain model)")
    if quantize is not None and not use_onnx:
        raise UsageError("--quantize runs the ONNX Runtime engine: add --engine onnxruntime")
    if drift not in ("on", "off"):
        raise UsageError(f"--drift '{drift}': use on or off")
    if csv_path is not None and csv_path.is_dir():  # found now, not after every image ran
        raise UsageError(f"--csv {csv_path} is a folder: give a file name, e.g. --csv {csv_path / 'predictions.csv'}")
    extra = {"compare_plain": True} if compare_plain else {}
    if quantize is not None:  # the run's int8 export, quantized once, thresholds searched on its outputs
        from ..inference.quantize import check_precision, int8_source

        if check_precision(quantize):
            extra["source"] = lambda *args: int8_source(run, *args)
    predict = onnx_engine.predict if use_onnx else torch_engine.predict
    report = predict(inputs, run=run, thresholds=thresholds, target_acc=target_acc, score=score, fallback=fallback,
                     batch_size=batch_size, workers=workers, device=device, top_k=top_k, drift=drift == "on",
                     channels_last=channels_last, **extra)
    report.summary.setdefault("engine", "torch")
    if as_json:
        print_json(report.to_dict())
    else:
        _print_table(report, top_k)
    if csv_path is not None:
        write_csv(report, csv_path, top_k=top_k)
    for e in report.errors:
        sys.stderr.write(f"warning: {e['path']}: {e['error']}\n")
    for line in summary_lines(report.summary):
        info(line)
    from ..calibration.drift import warning_line

    alarm = warning_line(report.drift)
    if alarm:
        sys.stderr.write(f"warning: {alarm}\n")
    if csv_path is not None:
        info(f"wrote {csv_path}")
    code = report.exit_code
    if code == 1:
        sys.stderr.write(f"error: none of the {len(report.errors)} image file(s) could be read: see the errors above\n")
    if code:
        raise typer.Exit(code)


def _print_table(report, top_k: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ..inference.report import format_macs
    from ._output import stdout_console

    table = Table(title="predictions")
    table.add_column("path", overflow="fold", ratio=3)
    table.add_column("label", overflow="fold", ratio=2)
    for col in ("confidence", "exit", "MACs"):
        table.add_column(col, justify="left" if col == "exit" else "right", no_wrap=True)
    if top_k > 1:
        table.add_column(f"top {top_k}", ratio=2)
    for p in report.predictions:
        row = [escape(p.path), escape(p.label), f"{p.confidence:.3f}", f"{p.exit}/{p.num_exits}", format_macs(p.macs)]
        if top_k > 1:
            row.append(", ".join(f"{escape(t['label'])} {t['probability']:.3f}" for t in p.top_k))
        table.add_row(*row)
    for e in report.errors:
        row = [escape(e["path"]), f"[red]error: {escape(e['error'])}[/red]", "", "", ""] + ([""] if top_k > 1 else [])
        table.add_row(*row)
    stdout_console().print(table)


def register(app: typer.Typer) -> None:
    app.command("predict", help=HELP)(predict_command)

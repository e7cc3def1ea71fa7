"""`scan export`: the cascade as ONNX graphs plus manifest.json (thin: flags -> scan_cli.inference.export)."""

from __future__ import annotations

from typing import Optional

import typer

from ..errors import UsageError
from ._options import JSON, RUN

HELP = """Export a run's cascade to ONNX for deployment: one graph per piece (stem + section 1 + exit 1,
then each section with its exit, the last with the backbone's head), each taking the previous
piece's features and returning the next features and its exit's logits, with a dynamic batch axis;
plus manifest.json (pieces in order, input preprocessing, classes, thresholds, score, fallback, MACs
per exit), plain JSON that needs no Python package to read.

Exits that never fire (threshold null) are exported without their head unless --all-exits is given
(needed to use other thresholds later); --fallback ensemble runs keep every head. --format
onnx-full also writes full.onnx, one graph with every exit's logits, for serving systems that cannot
loop. Every graph passes the ONNX checker and is compared with PyTorch before the export is kept.

--quantize int8 (default --out RUN/onnx-int8) quantizes every piece (ONNX Runtime static
quantization: QDQ, per-channel int8 weights, activation ranges from the run's validation images)
and searches the thresholds again on the int8 pieces' own validation outputs, for the run's
calibration target or for --target-acc (the same search and promise as 'scan calibrate'); it prints
per exit the float32 vs int8 validation accuracy. As above, exits that never fire under the int8
thresholds are exported without their head unless --all-exits is given.

Run the export with `scan predict --run OUT` (ONNX Runtime), or with the loop in the README's
"Deploying" section (onnxruntime + numpy + Pillow only). Needs the extras: pip install 'scan-cli[onnx]'."""


def export_command(
    run: Optional[str] = RUN,
    fmt: str = typer.Option("onnx", "--format", help="onnx (one graph per piece) or onnx-full (also full.onnx with every exit)."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder to write (new, empty, or an earlier export, which is replaced); default: RUN/onnx."),
    all_exits: bool = typer.Option(False, "--all-exits", help="Keep the heads of exits that never fire (to use other thresholds later)."),
    plain: bool = typer.Option(False, "--plain", help="Also write plain.onnx: the backbone alone, for comparisons."),
    opset: int = typer.Option(20, "--opset", help="ONNX opset (18 or newer)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: static int8 quantization of every piece (QDQ, per-channel weights, ranges from validation images), thresholds searched again on the int8 outputs for the run's calibration target or --target-acc."),
    target_acc: Optional[float] = typer.Option(None, "--target-acc", help="With --quantize int8: search the int8 thresholds for this accuracy on new data (fraction, e.g. 0.9) instead of the run's calibration target."),
    as_json: bool = JSON,
):
    from ..inference.export import FORMATS, export_run
    from ._output import info, print_json

    if fmt not in FORMATS:
        raise UsageError(f"--format '{fmt}': use one of {', '.join(FORMATS)}")
    from ..inference.quantize import check_precision

    if check_precision(quantize):
        if fmt != "onnx" or plain:
            raise UsageError("--quantize int8 writes the pieces only: drop --format onnx-full and --plain")
        from ..inference.quantize import quantize_export

        manifest, folder = quantize_export(run, out, target_acc=target_acc, all_exits=all_exits, log=info)
        if as_json:
            print_json(manifest)
        for line in quantization_lines(manifest):
            info(line)
        info(f"wrote {len(manifest['pieces'])} int8 piece(s) and manifest.json to {folder}")
        return
    if target_acc is not None:
        raise UsageError("--target-acc searches the int8 thresholds (with --quantize int8); a float export uses the "
                         "run's calibration: run 'scan calibrate --target-acc' first")
    manifest, folder = export_run(run, out, fmt=fmt, all_exits=all_exits, plain=plain, opset=opset, log=info)
    if as_json:
        print_json(manifest)
    else:
        _print_pieces(manifest)
    info(f"wrote {len(manifest['pieces'])} piece(s){' and full.onnx' if 'full' in manifest else ''} "
         f"and manifest.json to {folder}")


def quantization_lines(manifest: dict) -> list:
    """Per exit float vs int8 validation accuracy, and the recalibrated operating point."""
    q = manifest["quantization"]
    K = manifest["num_exits"]
    fmt = lambda t: "never" if t is None else f"{t:.4g}"  # noqa: E731
    lines = [f"exit {e['exit']}/{K}: validation accuracy float32 {e['float_val_accuracy']:.4f}, int8 "
             f"{e['int8_val_accuracy']:.4f} (max logit change {e['max_abs_logit_diff']:.3g})" for e in q["exits"]]
    op = q["operating_point"]
    floats = q.get("float_thresholds")
    floats = f" (float32: {', '.join(fmt(t) for t in floats)})" if floats else " (the run is not calibrated)"
    lines.append(f"int8 thresholds {', '.join(fmt(t) for t in manifest['thresholds'][:-1])}{floats}, searched again on the int8 outputs for "
                 f"{', '.join(f'{k} {v}' for k, v in q['settings'].items() if v is not None)}: validation accuracy "
                 f"{op['val_accuracy']:.4f}, counted speed-up {op['speedup']:.2f}x")
    promise = (op.get("target") or {}).get("promise")
    if promise:
        lines.append(f"promise: {promise['statement']}")
    dropped = [p["exit"] for p in manifest["pieces"][:-1] if p["logits"] is None]
    if dropped:
        lines.append(f"exit{'s' if len(dropped) > 1 else ''} {', '.join(map(str, dropped))} never fire{'s' if len(dropped) == 1 else ''} "
                     "under the int8 thresholds: exported without the head (--all-exits keeps every head)")
    return lines


def _print_pieces(manifest: dict) -> None:
    from rich.table import Table

    from ..inference.report import format_macs
    from ._output import stdout_console

    K = manifest["num_exits"]
    table = Table(title=f"{manifest['backbone']['id']}: ONNX cascade, opset {manifest['producer']['opset']}")
    for col in ("file", "exit", "threshold", "outputs", "MACs", "vs torch"):
        table.add_column(col, justify="right" if col in ("MACs", "vs torch") else "left", no_wrap=col != "outputs")
    for p in manifest["pieces"]:
        t = p["threshold"]
        threshold = ("always" if p["exit"] == K else "never, no head" if p["logits"] is None else
                     "never" if t is None else f"{t:.4g}")
        table.add_row(p["file"], f"{p['exit']}/{K}", threshold, ", ".join(p["outputs"]),
                      format_macs(p["macs_cumulative"]), f"{p['max_abs_diff_vs_torch']:.1e}")
    for key in ("full", "plain"):
        if key in manifest:
            extra = manifest[key]
            table.add_row(extra["file"], "", "", ", ".join(extra["outputs"]), "", f"{extra['max_abs_diff_vs_torch']:.1e}")
    stdout_console().print(table)


def register(app: typer.Typer) -> None:
    app.command("export", help=HELP)(export_command)

"""`scan calibrate` and `scan evaluate`: thresholds on validation data, honest numbers on test data."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..devices import check_device
from ..errors import UsageError
from ..policy import check_fallback, check_score
from ._options import DEVICE, JSON, RUN


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_command)
    app.command("evaluate")(evaluate_command)


def calibrate_command(
    target_acc: Optional[float] = typer.Option(None, "--target-acc", help="Expected accuracy on new data >= this (absolute, e.g. 0.76)."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Allow at most this accuracy drop below the best exit or the ensemble, whichever is more accurate on validation (e.g. 0.005)."),
    budget: Optional[float] = typer.Option(None, "--budget", help="Spend at most this fraction of the backbone's MACs; maximise accuracy."),
    confidence: Optional[float] = typer.Option(None, "--confidence", help="Certify the target with this probability (distribution-free bound)."),
    score: Optional[str] = typer.Option(None, "--score", help="max_softmax (default) | margin | neg_entropy"),
    fallback: Optional[str] = typer.Option(None, "--fallback", help="Answer of images no shallow exit takes: last (default) | ensemble (paper)."),
    split: str = typer.Option("val", "--split", help="Only 'val' is accepted: the test split must stay unseen."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Draw the accuracy-cost curve to this PNG."),
    data: Optional[str] = typer.Option(None, "--data", help="Recalibrate on other labelled data with the model's classes (all of it; nothing is held out)."),
    run: Optional[str] = RUN,
    device: str = DEVICE,
    dry_run: bool = typer.Option(False, "--dry-run", help="Search and report, but write nothing (no thresholds, no cache)."),
    as_json: bool = JSON,
):
    """Choose per-exit thresholds: cheapest cascade that keeps the accuracy promise on validation data."""
    from ..calibration.choose import check_goal
    from ..calibration.run import calibrate_run
    from ..runs import resolve_run
    from ._output import info, print_json

    check_goal(target_acc, max_drop, budget, confidence)  # every flag before the run, the data or torch
    check_score(score)
    check_fallback(fallback)
    check_device(device)
    if split != "val":
        raise UsageError(f"calibration uses the validation split only, never '{split}': test data must stay unseen")
    if plot is not None:
        from ..calibration.plot import check_plot_path

        check_plot_path(plot)
    run_dir = resolve_run(run)
    doc = calibrate_run(run_dir, target_acc=target_acc, max_drop=max_drop, budget=budget, confidence=confidence,
                        score=score, fallback=fallback, split=split, save=not dry_run, plot=plot, device=device,
                        data=data)
    used = doc.get("data") or {}
    info(f"data {used.get('source')}: " + ("the validation 'scan fit' held out" if used.get("held_out_by_fit", True)
                                          else "all of it, nothing held out") + f" (digest {used.get('digest')})")
    if as_json:
        print_json(doc)
    else:
        _print_calibration(doc)
    if not dry_run:
        info(f"thresholds written to {run_dir / 'model.safetensors'}")
    if plot is not None:
        info(f"accuracy-cost curve drawn to {plot}")


# How each kind of promise fared on data calibration never saw (bench/bench_promise.py).
PROMISE_RECORD = {
    "expected": "a mean over new data: short of it by <= 0.5 point on average over the re-splits of bench/results/promise.md",
    "certified": "held in >= 90% of the re-splits of bench/results/promise.md at --confidence 0.9",
    "validation": "on validation only",
}


def _print_calibration(doc: dict) -> None:
    from rich.table import Table

    from ._output import stdout_console

    console = stdout_console()
    K = len(doc["thresholds"])
    used = doc.get("data") or {}
    what = "validation images" if used.get("held_out_by_fit", True) else f"images of {used.get('source')}"
    table = Table(title=f"calibrated on {doc['n_val']} {what} ({doc['score']}, fallback {doc['fallback']})")
    for col in ("exit", "threshold", "share of images", "cumulative GMACs"):
        table.add_column(col, justify="right")
    for k in range(K):
        t = doc["thresholds"][k]
        table.add_row(f"{k + 1}/{K}", "always" if t is None else ("never" if t == float("inf") else f"{t:.4f}"),
                      f"{100 * doc['exit_shares'][k]:.1f}%", f"{doc['exit_macs'][k] / 1e9:.4f}")
    console.print(table)
    lo, hi = doc.get("val_accuracy_interval") or (doc["val_accuracy"], doc["val_accuracy"])
    console.print(f"validation accuracy {100 * doc['val_accuracy']:.2f}%, expected {doc['expected_macs'] / 1e9:.4f} GMACs "
                  f"per image vs {doc['backbone_macs'] / 1e9:.4f} for the backbone: {doc['speedup']:.2f}x fewer MACs", highlight=False)
    target = doc.get("target") or {}
    if target.get("reference"):
        console.print(f"--max-drop measured against {target['reference']}, the most accurate answer on validation "
                      f"({100 * target['reference_accuracy']:.2f}%; {100 * target.get('reference_accuracy_corrected', target['reference_accuracy']):.2f}% "
                      "after the bootstrap correction for picking the best on the same images)", highlight=False)
    promise = target.get("promise")
    if promise:
        console.print(f"promise: {promise['statement']} ({PROMISE_RECORD[promise['kind']]})", highlight=False)
    if not doc.get("guarantee"):
        console.print(f"this cascade on new images: {100 * lo:.1f}-{100 * hi:.1f}% (95% interval from {doc['n_val']} "
                      "validation images); --confidence 0.9 certifies a bound instead", highlight=False)
    pareto = doc.get("pareto") or []
    if pareto:
        front = Table(title="operating points (validation)")
        for col in ("accuracy", "GMACs", "speed-up", "thresholds"):
            front.add_column(col, justify="right")
        for p in pareto:
            ts = ", ".join("-" if t is None else ("never" if t == float("inf") else f"{t:.3f}") for t in p["thresholds"])
            front.add_row(f"{100 * p['accuracy']:.2f}%", f"{p['cost'] / 1e9:.4f}", f"{p['speedup']:.2f}x", ts)
        console.print(front)


def evaluate_command(
    run: Optional[str] = RUN,
    split: str = typer.Option("test", "--split", help="test (default) | val | train | all"),
    data: Optional[str] = typer.Option(None, "--data", help="Other labelled data with the model's classes."),
    device: str = DEVICE,
    as_json: bool = JSON,
):
    """Accuracy of every exit, the ensemble and the calibrated cascade on held-out data."""
    from ..calibration.run import evaluate_run
    from ..data import EVAL_SPLITS
    from ..runs import resolve_run
    from ._output import print_json, stdout_console

    if split not in EVAL_SPLITS:
        raise UsageError(f"--split must be one of {', '.join(EVAL_SPLITS)}")
    check_device(device)
    doc = evaluate_run(resolve_run(run), split=split, data=data, device=device)
    if as_json:
        print_json(doc)
        return
    from rich.table import Table

    K = len(doc["exits"])
    table = Table(title=f"{doc['split']} split, {doc['n']} images: accuracy of each exit alone, and where the cascade answered")
    table.add_column("")
    for k in range(K):
        table.add_column(f"exit {k + 1}/{K}", justify="right")
    table.add_column("ensemble", justify="right")
    table.add_column("cascade", justify="right")
    cascade = doc["cascade"]
    table.add_row("accuracy", *[f"{100 * e['accuracy']:.2f}%" for e in doc["exits"]],
                  f"{100 * doc['ensemble']['accuracy']:.2f}%", f"{100 * cascade['accuracy']:.2f}%" if cascade else "not calibrated")
    if cascade:
        table.add_row("answered here", *[f"{100 * s:.1f}%" for s in cascade["exit_shares"]], "",
                      f"{cascade['speedup']:.2f}x fewer MACs")
    console = stdout_console()
    console.print(table)
    if not cascade:
        console.print("run 'scan calibrate' to evaluate the early-exit cascade", highlight=False)

"""Early-exit prediction on image files: what `scan predict` runs.

The images go through the run's own eval preprocessing, in batches decoded ahead of the model and
assembled as uint8 without copies, normalised on the device once per batch (``file_batches``; any
other transform: a DataLoader over ``images.ImageFiles``); each batch goes through
``ScanModel.early_exit``, which drops an image from the batch as soon as an exit fires, so the
rest of the network is really skipped for it. Files that cannot be decoded become entries of
``errors``; they never stop a run.

Exit numbering: ``exit_index`` is 0-based (0 .. K-1) as everywhere in the code; ``exit`` is the
1-based number people read ("2/4" is exit 2, ``exit_index`` 1).

Nothing here imports torch at module level and nothing prints: the CLI formats the report, and
notes for people (e.g. "this run is not calibrated") go to the ``scan_cli`` logger (stderr).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import UsageError

log = logging.getLogger(__name__)

NEVER = ("none", "inf", "+inf", "never", "-")
FALLBACKS = ("last", "ensemble")


# -- which thresholds ------------------------------------------------------------------------------
@dataclass
class ExitPolicy:
    """The exit rule one prediction call uses."""

    thresholds: list  # K-1 entries, one per shallow exit; None = that exit never fires
    score: str = "max_softmax"
    fallback: str = "last"
    source: str = "calibration"  # where the thresholds came from, for the summary
    drift_reference: Optional[dict] = None  # what calibration saw under these thresholds (calibration/drift.py)

    def to_dict(self) -> dict:
        return {"thresholds": list(self.thresholds), "score": self.score, "fallback": self.fallback,
                "source": self.source}


def parse_thresholds(text: str, num_exits: int) -> list:
    """'0.9,0.8,none' -> [0.9, 0.8, None]: one value per shallow exit (K-1 of them).

    ``none``/``inf``/``never`` mean the exit never fires. A K-th value is accepted only when it
    is one of those (the last exit always answers)."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) == num_exits and parts[-1].lower() in NEVER:
        parts = parts[:-1]
    if len(parts) != num_exits - 1:
        raise UsageError(
            f"--thresholds needs {num_exits - 1} comma-separated values (one per shallow exit of this "
            f"{num_exits}-exit model), got {len(parts)}: e.g. --thresholds {','.join(['0.9'] * (num_exits - 1))}"
        )
    values = []
    for p in parts:
        if p.lower() in NEVER:
            values.append(None)
            continue
        try:
            v = float(p)
        except ValueError:
            raise UsageError(f"--thresholds: '{p}' is not a number: use numbers, or 'none' for an exit that never fires") from None
        if math.isnan(v):
            raise UsageError("--thresholds: nan is not a threshold: use a number or 'none'")
        values.append(None if v == math.inf else v)
    return values


def _shallow(thresholds, num_exits: int) -> list:
    """A calibration's K entries (the last None) -> the K-1 shallow ones, inf -> None."""
    values = list(thresholds or [])[: num_exits - 1]
    values += [None] * (num_exits - 1 - len(values))
    out = []
    for v in values:
        v = None if v is None else float(v)
        out.append(None if v is None or v == math.inf else v)
    return out


def check_flags(*, batch_size: int = 64, top_k: int = 1, channels_last: Optional[str] = "auto",
                score: Optional[str] = None, fallback: Optional[str] = None, target_acc: Optional[float] = None,
                thresholds: Optional[str] = None) -> None:
    """Usage errors that need no run, no model and no image: checked before anything else."""
    from .scoring import SCORES

    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: give a positive number")
    if top_k < 1:
        raise UsageError(f"--top-k {top_k}: give a positive number")
    if (channels_last or "auto").lower() not in ("auto", "on", "off"):
        raise UsageError(f"--channels-last '{channels_last}': use auto, on or off")
    if thresholds is not None and target_acc is not None:
        raise UsageError("--thresholds and --target-acc both choose the thresholds: pass only one")
    if score is not None and score not in SCORES:
        raise UsageError(f"unknown score '{score}': use one of {', '.join(SCORES)}")
    if fallback is not None and fallback not in FALLBACKS:
        raise UsageError(f"unknown fallback '{fallback}': use one of {', '.join(FALLBACKS)}")
    if target_acc is not None and not 0.0 < target_acc <= 1.0:
        raise UsageError(f"--target-acc {target_acc} is not an accuracy: give a fraction in (0, 1], e.g. 0.95")


def exit_policy(info, run_dir: Path, num_exits: int, *, thresholds: Optional[str] = None,
                target_acc: Optional[float] = None, score: Optional[str] = None,
                fallback: Optional[str] = None, device: Optional[str] = None) -> ExitPolicy:
    """The thresholds for one call: explicit ``thresholds`` > a fresh ``target_acc`` calibration
    (not saved) > the artifact's calibration > none (every image answered by the last exit).

    Thresholds keep their promise only for the score and fallback they were searched for: another
    ``--fallback`` recalibrates for it (same target, validation data, not saved); another
    ``--score`` is refused."""
    from .calibration.run import calibrate_run

    check_flags(score=score, fallback=fallback, target_acc=target_acc, thresholds=thresholds)
    cal = info.calibration or None
    if thresholds is not None:
        return ExitPolicy(parse_thresholds(thresholds, num_exits),
                          score or (cal or {}).get("score") or "max_softmax",
                          fallback or (cal or {}).get("fallback") or "last", source="--thresholds")
    if target_acc is not None:
        kwargs = {k: v for k, v in (("score", score), ("fallback", fallback)) if v is not None}
        result = calibrate_run(run_dir, target_acc=target_acc, save=False, device=device or "auto", **kwargs)
        return ExitPolicy(_shallow(result["thresholds"], num_exits), result.get("score") or score or "max_softmax",
                          result.get("fallback") or fallback or "last", source=f"--target-acc {target_acc:g}",
                          drift_reference=result.get("drift_reference"))
    if cal is None or not cal.get("thresholds"):
        log.warning(
            "this run is not calibrated: every image goes to the last exit (no early exit). "
            "Run 'scan calibrate', or pass --target-acc or --thresholds"
        )
        return ExitPolicy([None] * (num_exits - 1), score or "max_softmax", fallback or "last", source="none (not calibrated)")
    cal_score = cal.get("score") or "max_softmax"
    if score is not None and score != cal_score:
        raise UsageError(
            f"the run's thresholds were calibrated for score '{cal_score}', not '{score}': "
            "pass --target-acc or --thresholds together with --score"
        )
    cal_fallback = cal.get("fallback") or "last"
    if fallback is not None and fallback != cal_fallback:
        settings = {k: v for k, v in (cal.get("settings") or {}).items() if v is not None}
        if not any(k in settings for k in ("target_acc", "max_drop", "budget")):
            raise UsageError(f"the run's thresholds were calibrated for --fallback {cal_fallback}: pass --target-acc or "
                             f"--thresholds together with --fallback {fallback}")
        log.info(f"the run's thresholds were calibrated for --fallback {cal_fallback}: recalibrating for --fallback "
                 f"{fallback} with the same target on the validation data (not saved)")
        result = calibrate_run(run_dir, save=False, score=cal_score, fallback=fallback, device=device or "auto", **settings)
        return ExitPolicy(_shallow(result["thresholds"], num_exits), cal_score, fallback,
                          source=f"recalibrated for --fallback {fallback}", drift_reference=result.get("drift_reference"))
    return ExitPolicy(_shallow(cal["thresholds"], num_exits), cal_score, cal_fallback, source="calibration",
                      drift_reference=cal.get("drift_reference"))


# -- results ---------------------------------------------------------------------------------------
@dataclass
class Prediction:
    path: str
    class_index: int
    label: str
    confidence: float  # softmax probability of `label` in the answering logits
    score: float  # the exit rule's score at the answering exit (equals confidence for max_softmax)
    exit_index: int  # 0-based
    num_exits: int
    macs: float  # cumulative MACs spent on this image (backbone up to its exit + heads on the way)
    top_k: list = field(default_factory=list)  # [{"label", "probability"}], best first

    @property
    def exit(self) -> int:
        return self.exit_index + 1

    def to_dict(self) -> dict:
        return {"path": self.path, "label": self.label, "class_index": self.class_index,
                "confidence": self.confidence, "score": self.score, "exit": self.exit,
                "exit_index": self.exit_index, "num_exits": self.num_exits, "macs": self.macs,
                "top_k": self.top_k}


@dataclass
class PredictionReport:
    predictions: list  # Prediction, in input order
    errors: list  # {"path", "error"}, in input order
    summary: dict
    drift: Optional[dict] = None  # the drift check (calibration/drift.py), {"status": "off"} with --drift off

    def to_dict(self) -> dict:
        doc = {"predictions": [p.to_dict() for p in self.predictions], "errors": list(self.errors),
               "summary": self.summary}
        if self.drift is not None:
            doc["drift"] = self.drift
        return doc

    @property
    def exit_code(self) -> int:
        """0 all images predicted, 3 some failed (at least one predicted), 1 none predicted."""
        if not self.errors:
            return 0
        return 3 if self.predictions else 1


def _workers_for(workers: Optional[int], num_images: int, batch_size: int) -> int:
    """--workers, or by default min(4, CPUs - 1) decoding processes; none (a background thread
    decodes one batch ahead) when every image fits in one batch, where a worker could overlap
    nothing and only adds its start-up time, or when the process has 2 CPUs or fewer: there a
    decoding process takes a core from the model and ships every decoded batch across processes
    (resnet50 @ 224 from files, batch 64, 2 cores: 7.1 s with one process, 4.1 s with the thread)."""
    from .data.loader import default_num_workers, usable_cpus

    if workers is not None:
        return workers
    if num_images <= batch_size or usable_cpus() <= 2:
        return 0
    return default_num_workers()


def predict_paths(model, paths: list, transform, policy: ExitPolicy, *, classes: list, costs: list,
                  backbone_macs: float, batch_size: int = 64, workers: int = 0, device=None,
                  top_k: int = 1, progress: bool = True, channels_last: bool = False,
                  compare_plain: bool = False) -> PredictionReport:
    """Early-exit predictions for image files. ``costs[k]`` is the cumulative MACs of exit k.
    ``channels_last`` converts the model (in place) and each batch to the NHWC layout.
    ``compare_plain`` keeps the decoded batches and times the cascade against the plain backbone on
    them afterwards (model only, interleaved): the realised speed-up of this very call."""
    import torch
    from torch.utils.data import DataLoader

    from .data.transforms import batch_preprocessing
    from .file_batches import to_model_input, uint8_batches
    from .images import ImageFiles, collate_images, draft_size
    from .progress import track

    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: give a positive number")
    if workers < 0:
        raise UsageError(f"--workers {workers}: give 0 (decode in this process) or more")
    if top_k < 1:
        raise UsageError(f"--top-k {top_k}: give a positive number")
    device = device if device is not None else torch.device("cpu")
    K = model.num_exits
    k_top = min(top_k, len(classes))
    model.eval()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=torch.channels_last)
    pin = device.type == "cuda"
    split = batch_preprocessing(transform)
    if split is not None:  # uint8 batches decoded ahead, normalised on the device once per batch
        pil_steps, size, mean, std = split
        loader = uint8_batches(paths, pil_steps, size, batch_size=batch_size, workers=workers, pin=pin,
                               draft=draft_size(transform))
        mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        prepare = lambda images: to_model_input(images, mean, std, device, layout)  # noqa: E731
    else:
        loader = DataLoader(ImageFiles(paths, transform), batch_size=batch_size, shuffle=False, num_workers=workers,
                            collate_fn=collate_images, pin_memory=pin)
        prepare = lambda images: images.to(device, non_blocking=True).contiguous(memory_format=layout)  # noqa: E731
    preds: dict[int, Prediction] = {}
    errors: dict[int, str] = {}
    kept = []  # decoded batches, for --compare-plain
    model_seconds = 0.0
    start = time.perf_counter()
    with torch.inference_mode():
        total = -(-len(paths) // batch_size)
        batches = track(loader, description="predict", total=total) if progress else loader
        for indices, images, batch_errors in batches:
            for index, error in batch_errors:
                errors[index] = error
            if images is None:
                continue
            x = prepare(images)
            if compare_plain:
                kept.append(x)
            t_model = time.perf_counter()
            out = model.early_exit(x, policy.thresholds, policy.score, policy.fallback)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            model_seconds += time.perf_counter() - t_model
            probs = torch.softmax(out.logits.float(), dim=-1)
            top_p, top_i = probs.topk(k_top, dim=-1)
            exit_idx = out.exit_index.tolist()
            scores = out.confidence.tolist()
            top_p, top_i = top_p.cpu().tolist(), top_i.cpu().tolist()
            for row, index in enumerate(indices):
                e = exit_idx[row]
                c = top_i[row][0]
                preds[index] = Prediction(
                    path=str(paths[index]), class_index=c, label=str(classes[c]), confidence=top_p[row][0],
                    score=scores[row], exit_index=e, num_exits=K, macs=float(costs[e]),
                    top_k=[{"label": str(classes[j]), "probability": p} for j, p in zip(top_i[row], top_p[row])],
                )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    predictions = [preds[i] for i in sorted(preds)]
    error_list = [{"path": str(paths[i]), "error": errors[i]} for i in sorted(errors)]
    summary = summarize(predictions, len(error_list), K, costs, backbone_macs, seconds)
    summary.update(policy=policy.to_dict(), device=str(device), batch_size=batch_size, workers=workers,
                   channels_last=bool(channels_last), layout="NHWC" if channels_last else "NCHW",
                   threads=torch.get_num_threads(), model_seconds=model_seconds)
    if compare_plain and kept:
        from .profiling import compare_with_plain

        summary["comparison"] = compare_with_plain(model, kept, policy.thresholds, score=policy.score,
                                                   fallback=policy.fallback)
    return PredictionReport(predictions, error_list, summary)


def summarize(predictions: list, num_errors: int, num_exits: int, costs: list, backbone_macs: float,
              seconds: float) -> dict:
    n = len(predictions)
    counts = [0] * num_exits
    for p in predictions:
        counts[p.exit_index] += 1
    avg = sum(costs[k] * c for k, c in enumerate(counts)) / n if n else 0.0
    return {
        "images": n + num_errors,
        "predicted": n,
        "errors": num_errors,
        "exit_counts": counts,
        "exit_shares": [c / n if n else 0.0 for c in counts],
        "exit_macs": [float(c) for c in costs],
        "avg_macs": avg,
        "backbone_macs": float(backbone_macs),
        "macs_ratio": avg / backbone_macs if backbone_macs and n else None,  # < 1: cheaper than the plain backbone
        "counted_speedup": backbone_macs / avg if avg else None,
        "seconds": seconds,  # wall-clock of decoding + inference (model loading and profiling excluded)
        "images_per_second": n / seconds if seconds > 0 else None,
    }


# -- the whole command -----------------------------------------------------------------------------
def load_for_prediction(run: Optional[str], device=None):
    """(run_dir, model on device, info, transform, CascadeCosts, backbone_macs) for a run folder."""
    from .artifact import load
    from .data import eval_transform
    from .profiling import cascade_costs
    from .runs import CACHE_DIR, model_path, resolve_run

    run_dir = resolve_run(run)
    model, info = load(model_path(run_dir), device=device or "cpu")
    transform = eval_transform(info.data_config, info.input_size)
    costs = cascade_costs(model, info.input_size, cache_dir=run_dir / CACHE_DIR)
    return run_dir, model, info, transform, costs, float(costs.backbone_macs)


def predict(inputs: list, *, run: Optional[str] = None, thresholds: Optional[str] = None,
            target_acc: Optional[float] = None, score: Optional[str] = None, fallback: Optional[str] = None,
            batch_size: int = 64, workers: Optional[int] = None, device: Optional[str] = None,
            top_k: int = 1, progress: bool = True, channels_last: Optional[str] = "auto",
            compare_plain: bool = False, drift: bool = True) -> PredictionReport:
    """`scan predict`: check the flags, find the run and the images, choose the thresholds, predict.

    Everything that can be wrong without a model (flags, the run folder, the images) is reported
    before torch or the model is loaded."""
    from .artifact import read_info
    from .devices import keep_freed_memory, resolve_device
    from .images import find_images
    from .runs import model_path, resolve_run

    check_flags(batch_size=batch_size, top_k=top_k, channels_last=channels_last, score=score, fallback=fallback,
                target_acc=target_acc, thresholds=thresholds)
    from .images import max_image_pixels

    max_image_pixels()  # a bad SCAN_MAX_IMAGE_PIXELS is a usage error, not one error row per image
    run_dir = resolve_run(run)
    info = read_info(model_path(run_dir))
    num_exits = len(info.split_points) + 1
    if thresholds is not None:
        parse_thresholds(thresholds, num_exits)
    paths = find_images(list(inputs))
    dev = resolve_device(device)
    keep_freed_memory(dev)
    policy = exit_policy(info, run_dir, num_exits, thresholds=thresholds, target_acc=target_acc,
                         score=score, fallback=fallback, device=str(dev))
    run_dir, model, info, transform, costs, backbone_macs = load_for_prediction(str(run_dir), dev)
    from .devices import use_channels_last

    report = predict_paths(model, paths, transform, policy, classes=info.classes,
                           costs=costs.for_policy(policy.thresholds, policy.fallback), backbone_macs=backbone_macs,
                           batch_size=batch_size, workers=_workers_for(workers, len(paths), batch_size), device=dev,
                           top_k=top_k, progress=progress, channels_last=use_channels_last(channels_last, model),
                           compare_plain=compare_plain)
    report.summary["run"] = str(run_dir)
    from .calibration.drift import check_predictions

    report.drift = check_predictions(report.predictions, policy, enabled=drift)
    return report


def format_macs(macs: float) -> str:
    """1.82G, 7.4M, 950.0K (multiply-accumulates, not FLOPs)."""
    if macs >= 1e9:
        return f"{macs / 1e9:.2f}G"
    if macs >= 1e6:
        return f"{macs / 1e6:.1f}M"
    return f"{macs / 1e3:.1f}K"


def summary_lines(summary: dict) -> list:
    """The people-facing summary (stderr)."""
    n, K = summary["predicted"], len(summary["exit_counts"])
    how = (f"batch {summary.get('batch_size')}, {summary.get('layout', '?')}, {summary.get('device', '?')}, "
           f"{summary.get('threads', '?')} threads")
    lines = [f"predicted {n} of {summary['images']} images, {summary['errors']} error(s), in {summary['seconds']:.2f} s"
             + (f" ({summary['images_per_second']:.1f} images/s, whole job from files: {how})" if summary["images_per_second"] else "")]
    if n:
        shares = "  ".join(f"{k + 1}/{K}: {s * 100:.1f}%" for k, s in enumerate(summary["exit_shares"]))
        lines.append(f"exits  {shares}")
        lines.append(
            f"average {format_macs(summary['avg_macs'])} MACs per image vs {format_macs(summary['backbone_macs'])} MACs "
            f"for the plain backbone: counted speed-up {summary['counted_speedup']:.2f}x"
        )
        cmp = summary.get("comparison")
        if cmp and cmp.get("realised_speedup"):
            from .profiling import speed_sentence

            lines.append(speed_sentence(cmp["realised_speedup"], summary["counted_speedup"], cmp["images_per_second"],
                                        f"{cmp['what']}: {cmp['images']} images, {how}"))
        else:
            lines.append("realised speed-up: not measured (--compare-plain times the plain model on the same images)")
    policy = summary.get("policy")
    if policy:
        ts = ", ".join("never" if t is None else f"{t:.4g}" for t in policy["thresholds"])
        lines.append(f"thresholds {ts} (score {policy['score']}, fallback {policy['fallback']}; from {policy['source']})")
    return lines


def write_csv(report: PredictionReport, path: Path, top_k: int = 1) -> None:
    """One row per input image (failed ones carry only path and error), written atomically."""
    import csv

    from .artifact import atomic_write

    k = max(1, min(top_k, max((len(p.top_k) for p in report.predictions), default=1)))
    cols = ["path", "label", "class_index", "confidence", "exit", "exit_index", "num_exits", "macs"]
    if k > 1:
        for i in range(1, k + 1):
            cols += [f"top{i}_label", f"top{i}_probability"]
    cols.append("error")
    rows = []
    for p in report.predictions:
        row = {"path": p.path, "label": p.label, "class_index": p.class_index, "confidence": f"{p.confidence:.6f}",
               "exit": p.exit, "exit_index": p.exit_index, "num_exits": p.num_exits, "macs": f"{p.macs:.0f}", "error": ""}
        if k > 1:
            for i, t in enumerate(p.top_k[:k], 1):
                row[f"top{i}_label"] = t["label"]
                row[f"top{i}_probability"] = f"{t['probability']:.6f}"
        rows.append(row)
    for e in report.errors:
        rows.append({"path": e["path"], "error": e["error"]})

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=cols, restval="")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(Path(path), write)

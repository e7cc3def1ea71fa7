"""What one `scan predict` call will do, decided before any model runs, for both engines: the flags
checked, the exit policy chosen (explicit thresholds, a fresh calibration, or the run's own), and
how many processes decode the images."""

from __future__ import annotations

import logging
from typing import Optional

from ..devices import check_device
from ..errors import UsageError
from ..policy import (
    DEFAULT_FALLBACK,
    DEFAULT_SCORE,
    Calibration,
    ExitPolicy,
    check_fallback,
    check_score,
    parse_thresholds,
)

log = logging.getLogger("scan_cli.inference")


def check_flags(*, batch_size: int = 64, top_k: int = 1, channels_last: Optional[str] = "auto",
                score: Optional[str] = None, fallback: Optional[str] = None, target_acc: Optional[float] = None,
                thresholds: Optional[str] = None, workers: Optional[int] = None, device: Optional[str] = None) -> None:
    """Usage errors that need no run, no model and no image: checked before anything else."""

    check_device(device)
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: give a positive number")
    if top_k < 1:
        raise UsageError(f"--top-k {top_k}: give a positive number")
    if workers is not None and workers < 0:
        raise UsageError(f"--workers {workers}: give 0 (decode in this process) or more")
    if (channels_last or "auto").lower() not in ("auto", "on", "off"):
        raise UsageError(f"--channels-last '{channels_last}': use auto, on or off")
    if thresholds is not None and target_acc is not None:
        raise UsageError("--thresholds and --target-acc both choose the thresholds: pass only one")
    check_score(score)
    check_fallback(fallback)
    if target_acc is not None and not 0.0 < target_acc <= 1.0:
        raise UsageError(f"--target-acc {target_acc} is not an accuracy: give a fraction in (0, 1], e.g. 0.95")


def exit_policy(calibration: Optional[Calibration], num_exits: int, *, thresholds: Optional[str] = None,
                target_acc: Optional[float] = None, score: Optional[str] = None, fallback: Optional[str] = None,
                recalibrate=None) -> ExitPolicy:
    """The thresholds for one call: explicit ``thresholds`` > a fresh ``target_acc`` calibration
    (not saved) > the stored ``calibration`` > none (every image answered by the last exit).

    ``recalibrate(**settings) -> calibration record`` searches thresholds on the run's validation
    data without saving them (None where there is no run to search on, e.g. an export folder).
    Thresholds keep their promise only for the score and fallback they were searched for: another
    ``--fallback`` recalibrates for it (same target); another ``--score`` is refused."""
    check_flags(score=score, fallback=fallback, target_acc=target_acc, thresholds=thresholds)
    cal = calibration
    if thresholds is not None:
        return ExitPolicy(parse_thresholds(thresholds, num_exits), score or (cal.score if cal else DEFAULT_SCORE),
                          fallback or (cal.fallback if cal else DEFAULT_FALLBACK), source="--thresholds")
    if target_acc is not None:
        kwargs = {k: v for k, v in (("score", score), ("fallback", fallback)) if v is not None}
        fresh = Calibration.from_metadata(recalibrate(target_acc=target_acc, **kwargs), num_exits)
        return fresh.policy(source=f"--target-acc {target_acc:g}")
    if cal is None:
        log.warning(
            "this run is not calibrated: every image goes to the last exit (no early exit). "
            "Run 'scan calibrate', or pass --target-acc or --thresholds"
        )
        return ExitPolicy([None] * (num_exits - 1), score or DEFAULT_SCORE, fallback or DEFAULT_FALLBACK,
                          source="none (not calibrated)")
    if score is not None and score != cal.score:
        raise UsageError(
            f"the run's thresholds were calibrated for score '{cal.score}', not '{score}': "
            "pass --target-acc or --thresholds together with --score"
        )
    if fallback is not None and fallback != cal.fallback:
        if not cal.searched or recalibrate is None:
            raise UsageError(f"the run's thresholds were calibrated for --fallback {cal.fallback}: pass --target-acc or "
                             f"--thresholds together with --fallback {fallback}")
        log.info(f"the run's thresholds were calibrated for --fallback {cal.fallback}: recalibrating for --fallback "
                 f"{fallback} with the same target on the validation data (not saved)")
        fresh = Calibration.from_metadata(recalibrate(score=cal.score, fallback=fallback, **cal.settings), num_exits)
        return fresh.policy(source=f"recalibrated for --fallback {fallback}")
    return cal.policy()


def workers_for(workers: Optional[int], num_images: int, batch_size: int) -> int:
    """--workers, or by default min(4, CPUs - 1) decoding processes; none (a background thread
    decodes one batch ahead) when every image fits in one batch, where a worker could overlap
    nothing and only adds its start-up time, or when the process has 2 CPUs or fewer: there a
    decoding process takes a core from the model and ships every decoded batch across processes
    (resnet50 @ 224 from files, batch 64, 2 cores: 7.1 s with one process, 4.1 s with the thread)."""
    from ..data.loader import default_num_workers, usable_cpus

    if workers is not None:
        return workers
    if num_images <= batch_size or usable_cpus() <= 2:
        return 0
    return default_num_workers()

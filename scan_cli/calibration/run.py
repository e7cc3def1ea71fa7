"""Calibrating and evaluating a run: data -> cached exit outputs -> threshold search -> artifact.

The search itself lives in the rest of this package (pure numpy); this module wires it to a run
folder. Calibration only ever sees the validation split, which ``scan fit`` held out of training
(``data.run_split`` rebuilds it from what the run recorded). torch is imported inside functions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from ..devices import keep_freed_memory, resolve_device
from ..errors import UsageError
from ..policy import DEFAULT_FALLBACK, DEFAULT_SCORE, Calibration, check_fallback, check_score, numeric
from ..runs import Run


def split_outputs(run: Run, split: str, device="cpu", data: Optional[str] = None, batch_size: int = 128,
                  write: bool = True, used: Optional[dict] = None):
    """numpy ([n, K, C] logits, [n] labels, skipped) of ``split``, cached per artifact and data digest
    (``data.split_digest``) when the run's own data is used, never written with write=False. Validation
    is named by the membership fit recorded, so its model and data are only loaded on a cache miss (a
    cached run needs no torch); any other split by what its examples are now (the data is listed and
    hashed first; a streamed split, which has no stable keys, is not cached). ``skipped`` (a
    ``SkippedImages``) counts the split's images left out as undecodable, also when the outputs come
    from the cache; they are named in a warning and the count goes into the report. ``used``: a dict
    that receives which data the outputs are of (``source``: absolute root or id, ``digest``)."""
    from ..data.dataset import SkippedImages
    from ..data.splits import is_own_data, run_recipe, split_digest
    from ..exit_outputs import read_cached_outputs

    skipped = SkippedImages()
    recipe = run_recipe(run.folder, run.info)
    own = is_own_data(recipe, data)
    used = {} if used is None else used
    if own:
        used["source"] = (recipe.get("data_split") or {}).get("root") or recipe.get("data")
    if own and split == "val":
        used["digest"] = split_digest(recipe, split)
        cached = read_cached_outputs(run, split, used["digest"], skipped)
        if cached is not None:
            _warn_skipped(split, skipped, len(cached[1]))
            return cached[0], cached[1], skipped
    from ..data import make_loader, run_split
    from ..data.membership import data_digest
    from ..exit_outputs import cached_exit_outputs, collect_exit_outputs

    dataset, splits = run_split(run.folder, run.info, split, None if own else data)
    cache = own and (split == "val" or not splits.streaming)
    if cache:
        content = None if split == "val" else data_digest(dataset, splits.root)
        used["digest"] = split_digest(recipe, split, splits, content=content)
        cached = None if split == "val" else read_cached_outputs(run, split, used["digest"], skipped)
        if cached is not None:
            _warn_skipped(split, skipped, len(cached[1]))
            return cached[0], cached[1], skipped
    device = resolve_device(device)
    keep_freed_memory(device)
    model, _ = run.load(device, write=write)
    make = lambda: make_loader(dataset, batch_size=batch_size, shuffle=False, skipped=skipped)  # noqa: E731
    if cache:
        logits, labels = cached_exit_outputs(run, split, used["digest"], make, model, device=device, skipped=skipped,
                                             write=write)
    elif own:  # a streamed split other than validation: no stable keys to name a cache by
        used["digest"] = None
        logits, labels = collect_exit_outputs(model, make(), device=device, progress=f"{split} exits")
        logits, labels = logits.numpy(), labels.numpy()
    else:
        used["source"], used["digest"] = splits.root, data_digest(dataset, splits.root)
        logits, labels = collect_exit_outputs(model, make(), device=device, progress=f"{split} exits")
        logits, labels = logits.numpy(), labels.numpy()
    _warn_skipped(split, skipped, len(labels))
    return logits, labels, skipped


def answer_references(logits, labels) -> dict:
    """name -> [n] bool correctness of every answer the model offers alone: each exit and the
    ensemble (mean of all exits' logits); ``--max-drop`` is measured against the best of them."""
    K = logits.shape[1]
    right = logits.argmax(-1) == labels[:, None]
    refs = {f"exit {k + 1}/{K}": right[:, k] for k in range(K)}
    refs["ensemble"] = logits.mean(1).argmax(-1) == labels
    return refs


def _warn_skipped(split: str, skipped, used: int) -> None:
    if skipped:
        import logging

        name = {"val": "validation"}.get(split, split)
        logging.getLogger("scan_cli").warning(f"{name} split: {skipped.summary()}; {used} images used")


def costs_of(run: Run, write: bool = True):
    """The run's ``CascadeCosts`` (cached per artifact unless write=False: the model is only built on a miss)."""
    from ..profiling import CascadeCosts, run_macs

    report = run_macs(run, run.info.input_size, write=write)
    return CascadeCosts([float(c) for c in report.cumulative], float(report.backbone_macs),
                        [float(h) for h in report.shallow_heads])


def calibrate_outputs(logits, labels, costs, *, target_acc=None, max_drop=None, budget=None, confidence=None,
                      score: str = DEFAULT_SCORE, fallback: str = DEFAULT_FALLBACK, seed: int = 0,
                      mode: Optional[str] = None):
    """The threshold search on validation outputs (numpy [n, K, C] logits, [n] labels) with ``costs``
    (a ``CascadeCosts``): (the calibration record, the ``CalibrationResult``). ``calibrate_run`` runs it on
    the model's outputs, ``inference/quantize.py`` on the int8 pieces' own."""
    import numpy as np

    from ..exit_outputs import exit_correctness, exit_order_warning
    from .cascade import CascadeData
    from .choose import calibrate
    from .drift import reference_from_logits

    cumulative, backbone_macs = costs.cumulative, costs.backbone_macs
    t0 = time.perf_counter()
    scores, correct = exit_correctness(logits, labels, score, fallback)
    # with fallback last an exit can be switched off (it then runs nothing); the ensemble needs every head
    data = CascadeData(scores=scores, correct=correct, costs=np.asarray(cumulative, dtype=float),
                       heads=None if fallback == "ensemble" else costs.heads)
    result = calibrate(data, target_acc=target_acc, max_drop=max_drop, budget=budget,
                       confidence=confidence, seed=seed, backbone_cost=backbone_macs,
                       references=answer_references(logits, labels), score=score)
    doc = result.to_dict()
    doc.update({"score": score, "fallback": fallback, "split": "val", "n_val": int(len(labels)),
                "backbone_macs": backbone_macs, "exit_macs": costs.for_policy(result.thresholds, fallback),
                "head_macs": list(costs.heads),
                "search_seconds": time.perf_counter() - t0,
                "settings": {"target_acc": target_acc, "max_drop": max_drop, "budget": budget, "confidence": confidence}})
    doc["expected_macs"] = doc.get("expected_cost")
    # what predict's drift check compares with (exits and answering scores under these thresholds)
    doc["drift_reference"] = reference_from_logits(logits, result.thresholds, score, fallback)
    warning = exit_order_warning(logits, labels, mode=mode)  # mode: how the run trained, for the advice
    if warning:
        import logging

        logging.getLogger("scan_cli").warning(warning)
        doc["warnings"] = [warning]
    return doc, result


def calibrate_run(run_dir, *, target_acc=None, max_drop=None, budget=None, confidence=None, score=None,
                  fallback=None, split: str = "val", save: bool = True, plot: Optional[Path] = None,
                  device: str = "cpu", seed: int = 0, data: Optional[str] = None) -> dict:
    """Choose per-exit thresholds on the run's validation split; write them into the artifact (and,
    with save=False, nothing at all: no cache either). ``data``: other labelled data with the model's
    classes to calibrate on instead, all of it (nothing is held out: the model never trained on it)."""
    from .. import artifact
    from .choose import check_goal
    from .plot import plot_front

    if split != "val":
        raise UsageError(f"calibration uses the validation split only, never '{split}': test data must stay unseen")
    check_goal(target_acc, max_drop, budget, confidence)
    run = Run.of(run_dir)
    if data is not None:
        from ..data.splits import is_own_data, run_recipe

        if is_own_data(run_recipe(run.folder, run.info), data):
            data = None  # the run's own data: its validation split, never the images it trained on
    previous = Calibration.from_metadata(run.info.calibration, run.num_exits)
    score = score or (previous.score if previous else DEFAULT_SCORE)
    fallback = fallback or (previous.fallback if previous else DEFAULT_FALLBACK)
    check_score(score)
    check_fallback(fallback)
    used: dict = {}
    logits, labels, skipped = split_outputs(run, "val" if data is None else "all", device=device, data=data,
                                            write=save, used=used)
    doc, result = calibrate_outputs(logits, labels, costs_of(run, write=save), target_acc=target_acc,
                                    max_drop=max_drop, budget=budget, confidence=confidence, score=score,
                                    fallback=fallback, seed=seed, mode=(run.info.recipe or {}).get("mode"))
    doc["data"] = {"source": used.get("source"), "digest": used.get("digest"), "held_out_by_fit": data is None}
    doc["skipped_images"] = skipped.count
    if plot is not None:
        plot_front(result, Path(plot))
    if save:
        run.metadata_changed(artifact.update_metadata(run.model_file, calibration=doc))
    return doc


def evaluate_run(run_dir, *, split: str = "test", data: Optional[str] = None, device: str = "cpu") -> dict:
    """Per-exit accuracy, ensemble, and the calibrated cascade on held-out data."""
    import numpy as np

    from ..data import EVAL_SPLITS, run_recipe
    from ..exit_outputs import exit_accuracies, exit_correctness
    from .cascade import CascadeData, summarize

    if split not in EVAL_SPLITS:
        raise UsageError(f"--split must be one of {', '.join(EVAL_SPLITS)}")
    run = Run.of(run_dir)
    logits, labels, skipped = split_outputs(run, split, device=device, data=data)
    doc = {"run": str(run.folder), "split": split, "data": data or run_recipe(run.folder, run.info).get("data"), "n": int(len(labels)),
           "skipped_images": skipped.count}
    accs = exit_accuracies(logits, labels)
    K = logits.shape[1]
    doc["exits"] = [{"exit": k + 1, "accuracy": accs["exits"][k]} for k in range(K)]
    doc["ensemble"] = {"accuracy": accs["ensemble"]}
    costs = costs_of(run)
    cumulative, backbone_macs = costs.cumulative, costs.backbone_macs
    for k in range(K):
        doc["exits"][k]["macs_cumulative"] = cumulative[k]
    doc["backbone_macs"] = backbone_macs
    cal = Calibration.from_metadata(run.info.calibration, K)
    if cal:
        scores, correct = exit_correctness(logits, labels, cal.score, cal.fallback)
        data_ = CascadeData(scores=scores, correct=correct, costs=np.asarray(cumulative, dtype=float),
                            heads=None if cal.fallback == "ensemble" else costs.heads)
        summary = summarize(data_, numeric(cal.thresholds, K))
        doc["cascade"] = {
            "thresholds": cal.record["thresholds"], "accuracy": summary["accuracy"], "exit_shares": list(summary["exit_shares"]),
            "expected_macs": summary["expected_cost"], "speedup": backbone_macs / summary["expected_cost"],
            "val_accuracy": cal.get("val_accuracy"), "target": cal.get("settings"),
        }
    else:
        doc["cascade"] = None
    return doc

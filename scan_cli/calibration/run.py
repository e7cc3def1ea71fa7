"""Calibrating and evaluating a run: data -> cached exit outputs -> threshold search -> artifact.

The search itself lives in the rest of this package (pure numpy); this module wires it to a run
folder. Calibration only ever sees the validation split, which ``scan fit`` held out of training
(``data.run_split`` rebuilds it from what the run recorded). torch is imported inside functions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from ..errors import UsageError


def split_outputs(run_dir: Path, model, info, split: str, device="cpu", data: Optional[str] = None, batch_size: int = 128):
    """([n, K, C] logits, labels, skipped) of ``split``, cached per artifact when the run's own data
    is used; ``skipped`` counts the split's images left out as undecodable (each is named in a
    warning, and the count goes into the command's report)."""
    import logging

    from ..data import SkippedImages, make_loader, run_split
    from ..exit_outputs import cached_exit_outputs, collect_exit_outputs

    dataset, _ = run_split(run_dir, info, split, data)
    skipped = SkippedImages()
    make = lambda: make_loader(dataset, batch_size=batch_size, shuffle=False, skipped=skipped)  # noqa: E731
    if data is None:
        logits, labels = cached_exit_outputs(run_dir, split, make, model, device=device, skipped=skipped)
    else:
        logits, labels = collect_exit_outputs(model, make(), device=device, progress=f"{split} exits")
    if skipped:
        name = {"val": "validation"}.get(split, split)
        logging.getLogger("scan_cli").warning(f"{name} split: {skipped.summary()}; {int(labels.numel())} images used")
    return logits, labels, skipped


def costs_of(run_dir: Path, model, info):
    from ..profiling import cascade_costs
    from ..runs import CACHE_DIR

    return cascade_costs(model, info.input_size, cache_dir=Path(run_dir) / CACHE_DIR)


def calibrate_run(run_dir, *, target_acc=None, max_drop=None, budget=None, confidence=None, score=None,
                  fallback=None, split: str = "val", save: bool = True, plot: Optional[Path] = None,
                  device: str = "cpu", seed: int = 0) -> dict:
    """Choose per-exit thresholds on the run's validation split; write them into the artifact."""
    import numpy as np

    from .. import artifact
    from ..exit_outputs import exit_correctness
    from ..runs import model_path
    from .cascade import CascadeData
    from .choose import calibrate
    from .plot import plot_front

    if split != "val":
        raise UsageError(f"calibration uses the validation split only, never '{split}': test data must stay unseen")
    if sum(x is not None for x in (target_acc, max_drop, budget)) != 1:
        raise UsageError("give exactly one of --target-acc, --max-drop, --budget")
    run_dir = Path(run_dir)
    model, info = artifact.load(model_path(run_dir), device=device)
    previous = info.calibration or {}
    score = score or previous.get("score", "max_softmax")
    fallback = fallback or previous.get("fallback", "last")
    if fallback not in ("last", "ensemble"):
        raise UsageError("--fallback must be 'last' or 'ensemble'")
    logits, labels, skipped = split_outputs(run_dir, model, info, "val", device=device)
    cumulative, backbone_macs = costs_of(run_dir, model, info)
    t0 = time.perf_counter()
    scores, correct = exit_correctness(logits, labels, score, fallback)
    data = CascadeData(scores=scores, correct=correct, costs=np.asarray(cumulative, dtype=float))
    result = calibrate(data, target_acc=target_acc, max_drop=max_drop, budget=budget,
                       confidence=confidence, seed=seed, backbone_cost=backbone_macs)
    doc = result.to_dict()
    doc.update({"score": score, "fallback": fallback, "split": "val", "n_val": int(labels.numel()),
                "skipped_images": skipped.count,
                "backbone_macs": backbone_macs, "exit_macs": list(cumulative),
                "search_seconds": time.perf_counter() - t0,
                "settings": {"target_acc": target_acc, "max_drop": max_drop, "budget": budget, "confidence": confidence}})
    doc["expected_macs"] = doc.get("expected_cost")
    if plot is not None:
        plot_front(result, Path(plot))
    if save:
        artifact.update_metadata(model_path(run_dir), calibration=doc)
    return doc


def evaluate_run(run_dir, *, split: str = "test", data: Optional[str] = None, device: str = "cpu") -> dict:
    """Per-exit accuracy, ensemble, and the calibrated cascade on held-out data."""
    import numpy as np

    from .. import artifact
    from ..data import EVAL_SPLITS, run_recipe
    from ..exit_outputs import exit_correctness
    from ..runs import model_path
    from ..training import exit_accuracies
    from .cascade import CascadeData, summarize

    if split not in EVAL_SPLITS:
        raise UsageError(f"--split must be one of {', '.join(EVAL_SPLITS)}")
    run_dir = Path(run_dir)
    model, info = artifact.load(model_path(run_dir), device=device)
    logits, labels, skipped = split_outputs(run_dir, model, info, split, device=device, data=data)
    doc = {"run": str(run_dir), "split": split, "data": data or run_recipe(run_dir, info).get("data"), "n": int(labels.numel()),
           "skipped_images": skipped.count}
    accs = exit_accuracies(logits, labels)
    K = logits.shape[1]
    doc["exits"] = [{"exit": k + 1, "accuracy": accs["exits"][k]} for k in range(K)]
    doc["ensemble"] = {"accuracy": accs["ensemble"]}
    cumulative, backbone_macs = costs_of(run_dir, model, info)
    for k in range(K):
        doc["exits"][k]["macs_cumulative"] = cumulative[k]
    doc["backbone_macs"] = backbone_macs
    cal = info.calibration
    if cal:
        scores, correct = exit_correctness(logits, labels, cal.get("score", "max_softmax"), cal.get("fallback", "last"))
        data_ = CascadeData(scores=scores, correct=correct, costs=np.asarray(cumulative, dtype=float))
        thresholds = [np.inf if t is None else t for t in cal["thresholds"][:K - 1]]
        summary = summarize(data_, thresholds)
        doc["cascade"] = {
            "thresholds": cal["thresholds"], "accuracy": summary["accuracy"], "exit_shares": list(summary["exit_shares"]),
            "expected_macs": summary["expected_cost"], "speedup": backbone_macs / summary["expected_cost"],
            "val_accuracy": cal.get("val_accuracy"), "target": cal.get("settings"),
        }
    else:
        doc["cascade"] = None
    return doc

"""Every exit's outputs over a dataset: logits and labels for fit's validation metrics and for
calibrate/evaluate (cached per artifact in the run folder), their per-exit correctness for the
threshold search, per-exit accuracy, and the warning when an earlier exit beats the last one."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from . import files
from .data.loader import loader_length
from .progress import track
from .runs import Run
from .scoring import confidence


def collect_exit_outputs(model, loader, device="cpu", progress: Optional[str] = None):
    """All exits' logits for every item of ``loader``: (logits [n, K, C] float32, labels [n] long)."""
    import torch


    model.eval()
    all_logits, all_labels = [], []
    with torch.no_grad():
        for images, labels in track(loader, description=progress or "exits", total=loader_length(loader)):
            outs = model(images.to(device, non_blocking=True))
            all_logits.append(torch.stack([o.float() for o in outs], dim=1).cpu())
            all_labels.append(labels.cpu())
    return torch.cat(all_logits), torch.cat(all_labels)


def read_cached_outputs(run, split: str, digest: str, skipped=None):
    """numpy (logits [n, K, C], labels [n]) cached for this artifact, or None (reads no torch).
    skipped: a `data.SkippedImages` that receives the images left out when the cache was written.
    (Cache v3: named by the data's digest too, ``data.split_digest``.)"""
    path = Run.of(run).outputs_cache(split, digest)
    if not path.is_file():
        return None
    import json

    from safetensors import safe_open
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="numpy") as f:
            recorded = json.loads((f.metadata() or {}).get("skipped") or "{}")
    except Exception:  # a damaged cache is recomputed
        return None
    if skipped is not None:
        skipped.update(recorded)
    return tensors["logits"], tensors["labels"]


def cached_exit_outputs(run, split: str, digest: str, make_loader, model, device="cpu", skipped=None,
                        write: bool = True):
    """Exit logits for a split (numpy), computed once per artifact and data digest and stored in
    run_dir/cache/ (not with write=False: ``--dry-run`` writes nothing).
    skipped: a `data.SkippedImages` that receives the images the loader left out as undecodable
    (recorded in the cache, so a later read reports them too)."""
    run = Run.of(run)
    cached = read_cached_outputs(run, split, digest, skipped)
    if cached is not None:
        return cached
    import json

    from safetensors.torch import save_file

    path = run.outputs_cache(split, digest)
    loader = make_loader()
    logits, labels = collect_exit_outputs(model, loader, device=device, progress=f"{split} exits")
    found = getattr(loader, "skipped", None)
    meta = {"split": split, "digest": digest, "skipped": json.dumps(found.to_dict() if found is not None else {})}
    if write:
        files.atomic_write(path, lambda tmp: save_file({"logits": logits.contiguous(), "labels": labels.contiguous()},
                                                 str(tmp), metadata=meta))
    if skipped is not None and found is not None and found is not skipped:
        skipped.update(found.to_dict())
    return logits.numpy(), labels.numpy()


def exit_correctness(logits, labels, score: str = "max_softmax", fallback: str = "last"):
    """numpy (scores [n, K], correct [n, K]) for the calibration search, from numpy or torch outputs.

    Column K-1 of ``correct`` is the answer an image gets when it reaches the end: the last
    exit's prediction, or the mean of all exits' logits with fallback='ensemble'."""
    import numpy as np


    logits = logits.numpy() if hasattr(logits, "numpy") else np.asarray(logits)
    labels = labels.numpy() if hasattr(labels, "numpy") else np.asarray(labels)
    n, K, _ = logits.shape
    scores = np.stack([confidence(logits[:, k], score) for k in range(K)], axis=1)
    preds = logits.argmax(axis=-1)
    if fallback == "ensemble":
        preds[:, K - 1] = logits.mean(axis=1).argmax(axis=-1)
    return scores, preds == labels[:, None]


def exit_accuracies(logits, labels) -> dict:
    """Per-exit accuracy and the ensemble (mean logits), from [n, K, C] logits (numpy or torch)."""
    import numpy as np

    logits = logits.numpy() if hasattr(logits, "numpy") else np.asarray(logits)
    labels = labels.numpy() if hasattr(labels, "numpy") else np.asarray(labels)
    per_exit = (logits.argmax(-1) == labels[:, None]).mean(0).tolist()
    ensemble = float((logits.mean(1).argmax(-1) == labels).mean())
    return {"exits": per_exit, "ensemble": ensemble, "n": int(len(labels))}


def exits_beating_last(logits, labels, z: float = 2.0) -> list[dict]:
    """Shallow exits more accurate than the last one by more than noise: a paired sign test on the
    images where exactly one of the two is right (b: only exit k, c: only the last), flagged when
    b - c > z * sqrt(b + c)."""
    import numpy as np

    logits = logits.numpy() if hasattr(logits, "numpy") else np.asarray(logits)
    labels = labels.numpy() if hasattr(labels, "numpy") else np.asarray(labels)
    right = logits.argmax(-1) == labels[:, None]
    last = right[:, -1]
    out = []
    for k in range(logits.shape[1] - 1):
        b = int((right[:, k] & ~last).sum())
        c = int((~right[:, k] & last).sum())
        if b + c and b - c > z * math.sqrt(b + c):
            out.append({"exit": k + 1, "accuracy": float(right[:, k].mean()),
                        "last_accuracy": float(last.mean()), "only_this": b, "only_last": c})
    return out


def exit_order_warning(logits, labels, split: str = "validation", mode: Optional[str] = None) -> Optional[str]:
    """One line for people when an earlier exit beats the last one beyond noise, else None. ``mode``
    (the run's --mode) keeps it from advising the way the run was already trained."""
    found = exits_beating_last(logits, labels)
    if not found:
        return None
    K = logits.shape[1]
    best = max(found, key=lambda f: f["accuracy"])
    return (f"exit {best['exit']}/{K} is more accurate than the last exit on {split} data "
            f"({100 * best['accuracy']:.1f} % vs {100 * best['last_accuracy']:.1f} %; {best['only_this']} images only it "
            f"gets right, {best['only_last']} only the last): the deepest exit is the weakest here (--max-drop is "
            "measured against the best exit, so calibration still holds). For a better deepest exit try more --epochs, "
            "the default loss (--loss scan), or "
            + ("training backbone and exits together (--mode joint)" if mode == "heads" else
               "training on a trained backbone (--weights FILE --mode heads)"))

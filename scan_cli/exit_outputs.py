"""Every exit's outputs over a dataset: logits and labels for fit's validation metrics and for
calibrate/evaluate (cached per artifact in the run folder), and their per-exit correctness for the
threshold search."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .data.loader import loader_length
from .runs import CACHE_DIR


def collect_exit_outputs(model, loader, device="cpu", progress: Optional[str] = None):
    """All exits' logits for every item of ``loader``: (logits [n, K, C] float32, labels [n] long)."""
    import torch

    from .progress import track

    model.eval()
    all_logits, all_labels = [], []
    with torch.no_grad():
        for images, labels in track(loader, description=progress or "exits", total=loader_length(loader)):
            outs = model(images.to(device, non_blocking=True))
            all_logits.append(torch.stack([o.float() for o in outs], dim=1).cpu())
            all_labels.append(labels.cpu())
    return torch.cat(all_logits), torch.cat(all_labels)


def cached_exit_outputs(run_dir: Path, split: str, make_loader, model, device="cpu", skipped=None):
    """Exit logits for a split, computed once per artifact and stored in run_dir/cache/.

    skipped: a `data.SkippedImages` that receives the images the loader left out as undecodable
    (also when the outputs come from the cache, which records them). Caches written before
    undecodable images were left out (when they were replaced by the next image) are not read."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from .artifact import artifact_fingerprint, atomic_write
    from .runs import model_path

    fingerprint = artifact_fingerprint(model_path(run_dir))
    cache = Path(run_dir) / CACHE_DIR / f"{split}-outputs-v2-{fingerprint}.safetensors"
    if cache.is_file():
        tensors = load_file(str(cache))
        if skipped is not None:
            with safe_open(str(cache), framework="pt") as f:
                skipped.update(json.loads((f.metadata() or {}).get("skipped", "{}")))
        return tensors["logits"], tensors["labels"]
    loader = make_loader()
    logits, labels = collect_exit_outputs(model, loader, device=device, progress=f"{split} exits")
    found = getattr(loader, "skipped", None)
    meta = {"artifact": fingerprint, "split": split, "skipped": json.dumps(found.to_dict() if found is not None else {})}
    atomic_write(cache, lambda tmp: save_file({"logits": logits.contiguous(), "labels": labels.contiguous()},
                                              str(tmp), metadata=meta))
    if skipped is not None and found is not None and found is not skipped:
        skipped.update(found.to_dict())
    return logits, labels


def exit_correctness(logits, labels, score: str = "max_softmax", fallback: str = "last"):
    """numpy (scores [n, K], correct [n, K]) for the calibration search.

    Column K-1 of ``correct`` is the answer an image gets when it reaches the end: the last
    exit's prediction, or the mean of all exits' logits with fallback='ensemble'."""
    import torch

    from .scoring import confidence

    n, K, _ = logits.shape
    scores = torch.stack([confidence(logits[:, k], score) for k in range(K)], dim=1)
    preds = logits.argmax(dim=-1)
    if fallback == "ensemble":
        preds[:, K - 1] = logits.mean(dim=1).argmax(dim=-1)
    correct = preds == labels[:, None]
    return scores.numpy(), correct.numpy()

"""Confidence scores an exit is judged by (higher always means more confident), and the early-exit
loop both engines (PyTorch and ONNX Runtime) run over a batch: ``run_cascade``."""

from __future__ import annotations

from .errors import UsageError
from .policy import SCORES, fires


def run_cascade(h, active, outputs, piece, num_exits: int, thresholds: list, score: str, fallback: str):
    """Real early exit over one batch, for tensors or arrays alike; the one loop both engines run.

    ``piece(k, h, want_logits) -> (h, logits or None)`` runs piece k (stem and section 0 for k = 0) on
    the rows still in ``h`` and, when asked (or when its graph always computes them), exit k's logits.
    ``active`` holds the batch positions of those rows; ``outputs`` = (logits [N, C], exit [N] filled
    with K-1, score [N]) is written at the answered rows' positions. After each exit the rows that fired
    leave ``h``, so the later pieces run only on the rest; an exit that never fires computes no head
    unless the ensemble fallback needs its logits."""
    out_logits, out_exit, out_conf = outputs
    K = num_exits
    running = None
    for k in range(K):
        last = k == K - 1
        can_fire = not last and k < len(thresholds) and fires(thresholds[k])
        h, logits = piece(k, h, last or can_fire or fallback == "ensemble")
        if logits is not None and fallback == "ensemble":
            running = logits if running is None else running + logits
        if last:
            answer_the_rest(logits, running, K, fallback, score, active, out_logits, out_conf)
            break
        if not can_fire or logits is None:
            continue
        active, h, running = answer_confident(k, logits, confidence(logits, score), thresholds[k], active, h,
                                              running, out_logits, out_exit, out_conf)
        if len(active) == 0:
            break
    return out_logits, out_exit, out_conf


def answer_confident(k: int, logits, conf, threshold, active, h, running, out_logits, out_exit, out_conf):
    """The exit rule for one exit over a batch (torch tensors or numpy arrays alike): rows whose
    score is >= ``threshold`` are answered here (their logits, exit and score written at their
    original positions ``active``); the rest go on. Returns the remaining (active, h, running)."""
    fire = conf >= threshold
    if fire.any():
        idx = active[fire]
        out_logits[idx] = logits[fire]
        out_exit[idx] = k
        out_conf[idx] = conf[fire]
        keep = ~fire
        active, h = active[keep], h[keep]  # only the remaining rows run the next section
        if running is not None:
            running = running[keep]
    return active, h, running


def answer_the_rest(logits, running, num_exits: int, fallback: str, score: str, active, out_logits, out_conf) -> None:
    """The last exit answers every row still active: its own logits, or with ``fallback='ensemble'``
    the mean of every exit's logits (``running`` is their sum)."""
    final = running / num_exits if fallback == "ensemble" else logits
    out_logits[active] = final
    out_conf[active] = confidence(final, score)


def confidence(logits, kind: str = "max_softmax"):
    """Per-row confidence of [N, C] logits (a torch tensor, or a numpy array: then in numpy, so
    calibrating from cached outputs needs no torch).

    max_softmax: the top class probability (the paper's rule).
    margin: top-1 minus top-2 probability.
    neg_entropy: minus the entropy of the softmax, so that higher is more confident.
    """
    if type(logits).__module__ == "numpy":
        return _confidence_numpy(logits, kind)
    import torch

    probs = torch.softmax(logits.float(), dim=-1)
    if kind == "max_softmax":
        return probs.max(dim=-1).values
    if kind == "margin":
        top2 = probs.topk(min(2, probs.shape[-1]), dim=-1).values
        return top2[:, 0] - (top2[:, 1] if top2.shape[1] > 1 else 0.0)
    if kind == "neg_entropy":
        return (probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1)

    raise UsageError(f"unknown score '{kind}': use one of {', '.join(SCORES)}")


def softmax_numpy(logits):
    import numpy as np

    z = np.asarray(logits, dtype=np.float32)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _confidence_numpy(logits, kind: str):
    """The same scores in numpy (cached outputs, the ONNX Runtime engine): no torch needed."""
    import numpy as np

    probs = softmax_numpy(logits)
    if kind == "max_softmax":
        return probs.max(axis=-1)
    if kind == "margin":
        if probs.shape[-1] < 2:
            return probs[:, 0]
        top2 = np.partition(probs, -2, axis=-1)[:, -2:]
        return top2[:, 1] - top2[:, 0]
    if kind == "neg_entropy":
        return (probs * np.log(np.maximum(probs, np.float32(1e-12)))).sum(axis=-1)

    raise UsageError(f"unknown score '{kind}': use one of {', '.join(SCORES)}")

"""Confidence scores an exit is judged by. Higher always means more confident."""

from __future__ import annotations

SCORES = ("max_softmax", "margin", "neg_entropy")


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
    from .errors import UsageError

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
    from .errors import UsageError

    raise UsageError(f"unknown score '{kind}': use one of {', '.join(SCORES)}")

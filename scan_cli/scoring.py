"""Confidence scores an exit is judged by. Higher always means more confident."""

from __future__ import annotations

SCORES = ("max_softmax", "margin", "neg_entropy")


def confidence(logits, kind: str = "max_softmax"):
    """Per-row confidence of a [N, C] logits tensor.

    max_softmax: the top class probability (the paper's rule).
    margin: top-1 minus top-2 probability.
    neg_entropy: minus the entropy of the softmax, so that higher is more confident.
    """
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

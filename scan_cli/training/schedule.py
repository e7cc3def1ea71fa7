"""The learning-rate schedule: warm-up, then cosine or multistep, as a pure function of the
(fractional) epoch, so that resuming needs no scheduler state."""

from __future__ import annotations

import math

from .recipes import Recipe


def lr_at(recipe: Recipe, epoch: int, step_fraction: float = 0.0) -> float:
    """Learning rate for (fractional) epoch; a pure function, so resume needs no scheduler state."""
    e = epoch + step_fraction
    warmup = recipe.warmup_epochs or 0.0
    if warmup and e < warmup:
        return recipe.lr * max(e, 1e-3) / warmup
    if recipe.schedule == "cosine":
        span = max(1e-9, recipe.epochs - warmup)
        return 0.5 * recipe.lr * (1 + math.cos(math.pi * (e - warmup) / span))
    if recipe.schedule == "multistep":
        return recipe.lr * recipe.gamma ** sum(1 for m in recipe.milestones if epoch >= m)
    return recipe.lr



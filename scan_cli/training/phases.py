"""Training phases (issue 22): joint SCAN for ``epochs``, then ``heads_epochs`` heads-only epochs on
the frozen backbone.

Joint training gives the best backbone (its deepest exit beats the plain network), but its shallow
heads were fitted to features that kept moving; heads-only on a trained backbone fits them to the
final features. The heads phase gets both: the backbone's weights and BatchNorm statistics stay
exactly as joint training left them, and only the exit heads (attention, bottleneck, linear) learn,
with the recipe's loss (distillation included) at the heads-only learning rate, cosine to zero.

The optimiser is the joint one (same parameter list, so a checkpoint maps onto it in either phase);
frozen parameters get no gradient, so SGD and AdamW skip them (no weight decay, no momentum). Its
state is cleared when the heads phase starts: the heads start a fresh descent on the fixed features
instead of carrying the joint phase's momentum. Everything is a function of the epoch, so resuming
in either phase reproduces an uninterrupted run.
"""

from __future__ import annotations

import math

from ..errors import ScanError
from .recipes import Recipe
from .schedule import lr_at


def total_epochs(recipe: Recipe) -> int:
    """Every epoch the run trains: the joint (backbone) epochs and the heads-only ones."""
    return recipe.epochs + (recipe.heads_epochs or 0)


def in_heads_phase(recipe: Recipe, epoch: int) -> bool:
    return epoch >= recipe.epochs and bool(recipe.heads_epochs)


def lr_for(recipe: Recipe, epoch: int, step_fraction: float = 0.0) -> float:
    """The joint schedule for the joint epochs; the heads phase: heads_lr, cosine to zero, no warm-up
    (the heads are already trained; a warm-up would waste a short phase)."""
    if not in_heads_phase(recipe, epoch):
        return lr_at(recipe, epoch, step_fraction)
    e = epoch - recipe.epochs + step_fraction
    return 0.5 * recipe.heads_lr * (1 + math.cos(math.pi * e / recipe.heads_epochs))


def freeze_backbone(model, retrain_classifier: bool) -> None:
    """Backbone parameters stop learning; the last exit's classifier learns if asked."""
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    if retrain_classifier:
        for p in model.backbone.classifier().parameters():
            p.requires_grad_(True)


def enter_heads_phase(model, optimizer, epoch: int, recipe: Recipe, wrap):
    """Freeze the backbone for the heads phase; returns the model to train (``wrap``: DDP again, as
    DDP only reduces the parameters that required gradients when it was built). The optimiser's
    state is cleared only at the phase's first epoch: a run resumed later in the phase has loaded
    the heads phase's own state from its checkpoint."""
    freeze_backbone(model, retrain_classifier=recipe.heads_last)
    if epoch == recipe.epochs:
        optimizer.state.clear()
    return wrap(model)


def as_trained(recipe: Recipe) -> Recipe:
    """A run from before the heads phase existed (no heads_epochs in its checkpoint) resumes without one."""
    from dataclasses import replace

    return replace(recipe, heads_epochs=0) if recipe.heads_epochs is None else recipe


def check_resume(history: list, recipe: Recipe) -> None:
    """A run that reached its heads phase cannot grow more joint epochs (the backbone is final)."""
    done_heads = [h["epoch"] for h in history if h.get("phase") == "heads"]
    if done_heads and min(done_heads) <= recipe.epochs:
        raise ScanError(f"this run is in its heads-only phase since epoch {min(done_heads)}: its joint epochs "
                        "cannot be extended (start a new run with more --epochs)")

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


def deepest_only_modules(model, img_size: int) -> list:
    """The backbone's modules that only the deepest exit uses: everything a forward up to the last
    split does not run (the last section's blocks, the final norm, the classifier). Found by running
    that forward on one blank image with hooks, so it holds for any backbone, plugins' included."""
    import torch

    seen, hooks = set(), []
    for m in model.backbone.modules():
        hooks.append(m.register_forward_hook(lambda mod, _in, _out: seen.add(id(mod))))
    was_training = model.training
    param = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            h = model.stem(torch.zeros(1, 3, img_size, img_size, device=param.device, dtype=param.dtype))
            for k in range(model.num_exits - 1):
                h = model.section(k, h)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return [m for m in model.backbone.modules()
            if id(m) not in seen and any(True for _ in m.parameters(recurse=False))]


def param_groups(model, recipe: Recipe, mode: str, img_size: int) -> list:
    """The optimiser's parameter groups: one, or in joint training with ``last_lr_scale`` != 1 two,
    the section past the last split (it feeds the deepest exit only) learning at that multiple."""
    params = [p for p in model.parameters() if p.requires_grad]
    if mode != "joint" or recipe.last_lr_scale in (None, 1.0):
        return [{"params": params}]
    last = {id(p) for m in deepest_only_modules(model, img_size) for p in m.parameters(recurse=False)}
    return [{"params": [p for p in params if id(p) not in last]},
            {"params": [p for p in params if id(p) in last], "lr_scale": recipe.last_lr_scale}]


def set_heads_phase_modes(model, last_section: list) -> None:
    """Train mode for the heads (and ``last_section``), eval mode for the frozen backbone, whose BN
    statistics must stay as joint training left them."""
    model.train()
    model.backbone.eval()
    for m in last_section:
        m.train()


def enter_heads_phase(model, optimizer, epoch: int, recipe: Recipe, wrap, img_size: int):
    """Freeze the backbone for the heads phase; returns the model to train (``wrap``: DDP again, as
    DDP only reduces the parameters that required gradients when it was built) and the modules that
    keep learning with the heads (``heads_last``: the section after the last split, which feeds the
    deepest exit only, so the shallow exits' features stay exactly as they were). The optimiser's
    state is cleared only at the phase's first epoch: a run resumed later in the phase has loaded
    the heads phase's own state from its checkpoint."""
    last_section = deepest_only_modules(model, img_size) if recipe.heads_last else []
    freeze_backbone(model, retrain_classifier=False)
    for m in last_section:
        for p in m.parameters(recurse=False):
            p.requires_grad_(True)
    if epoch == recipe.epochs:
        optimizer.state.clear()
    for group in optimizer.param_groups:  # the heads phase has one rate (heads_lr) for all that learns
        group["lr_scale"] = 1.0
    return wrap(model), last_section


def as_trained(recipe: Recipe, trained: Recipe) -> Recipe:
    """The recipe a resumed run continues with: what ``recipe`` leaves unset is what the run trained
    with (``trained``, from its checkpoint), and a run from before the heads phase or the last
    section's rate existed (no heads_epochs or last_lr_scale there) resumes as it trained: without them."""
    from dataclasses import replace

    def kept(key, before):
        mine, theirs = getattr(recipe, key), getattr(trained, key)
        return mine if mine is not None else (theirs if theirs is not None else before)

    return replace(recipe, heads_epochs=kept("heads_epochs", 0), last_lr_scale=kept("last_lr_scale", 1.0))


def check_resume(history: list, recipe: Recipe) -> None:
    """A run that reached its heads phase cannot grow more joint epochs (the backbone is final)."""
    done_heads = [h["epoch"] for h in history if h.get("phase") == "heads"]
    if done_heads and min(done_heads) <= recipe.epochs:
        raise ScanError(f"this run is in its heads-only phase since epoch {min(done_heads)}: its joint epochs "
                        "cannot be extended (start a new run with more --epochs)")

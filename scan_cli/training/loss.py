"""The SCAN loss: cross-entropy on every exit, distillation from the deepest exit (or the ensemble)
into the shallow ones, and the feature hint; its weights come from the recipe's loss preset."""

from __future__ import annotations

from .recipes import Recipe, loss_settings


def kd_weight(recipe: Recipe, progress: float) -> float:
    """lambda at ``progress`` (fraction of training done): ramped up linearly over the first
    ``kd_ramp`` of training, while the deepest exit is still a weak teacher."""
    if not recipe.kd:
        return 0.0
    settings = loss_settings(recipe)
    lam, ramp = settings["kd_lambda"], settings["kd_ramp"]
    return lam * min(1.0, max(0.0, progress) / ramp) if ramp > 0 else lam


def scan_loss(logits, features, labels, recipe: Recipe, progress: float = 1.0):
    """L = w_K CE(z_K) + sum_{i<K} w_i [(1-l) CE(z_i) + l T^2 KL_T(t || z_i)] + h sum_{i<K} mse(f_i, f_K).

    The teacher ``t`` is detached: the deepest exit's logits (the paper), or with
    ``kd_teacher = "ensemble"`` the mean of every exit's logits, which then also teaches the
    deepest exit (its term becomes (1-l) CE + l T^2 KL too). ``l`` is ``kd_weight`` at ``progress``,
    ``w_i`` the exit weights and ``w_K`` ``last_weight``, ``h`` the hint weight (values the recipe
    leaves unset come from the loss preset, ``recipes.loss_settings``). The feature hint is a mean
    squared error, so it does not grow with the batch size as the paper's summed version does."""
    import torch
    import torch.nn.functional as F

    settings = loss_settings(recipe, len(logits) - 1)
    ce = lambda z: F.cross_entropy(z, labels, label_smoothing=recipe.label_smoothing)  # noqa: E731
    lam = kd_weight(recipe, progress)
    T = settings["temperature"]
    ensemble = settings["kd_teacher"] == "ensemble"
    teacher = (torch.stack(logits).mean(0) if ensemble else logits[-1]).detach()

    def term(z):
        out = (1 - lam) * ce(z)
        if lam > 0:
            # KL rather than the paper's soft cross-entropy: same gradient, without the teacher's
            # entropy as a constant offset in the reported loss
            kd = F.kl_div(F.log_softmax(z / T, dim=-1), F.log_softmax(teacher / T, dim=-1),
                          reduction="batchmean", log_target=True)
            out = out + lam * T * T * kd
        return out

    last = ce(logits[-1])
    parts = {"ce_last": float(last.detach())}
    total = settings["last_weight"] * (term(logits[-1]) if ensemble else last)
    for w, z in zip(settings["exit_weights"], logits[:-1]):
        total = total + w * term(z)
    if recipe.feature_hint and features is not None and settings["hint_weight"] > 0:
        target = features[-1].detach()
        for f in features[:-1]:
            if f.shape != target.shape:
                raise ScanError(f"feature hint: an exit head gives {tuple(f.shape[1:])} features, the last exit "
                                f"{tuple(target.shape[1:])}: set feature_hint = false in the recipe (--no-hint)")
            total = total + settings["hint_weight"] * F.mse_loss(f, target)
    return total, parts



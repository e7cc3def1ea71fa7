"""Shapes from a dry-run forward: feature_info is not trusted (plugins swap stems, ViTs use tokens)."""

from __future__ import annotations

from .contract import SplitPoint, default_splits


def trace_shapes(staged, input_size: int, device="cpu") -> dict:
    """Run one image through every unit; return {unit: (channels, height, width)} of the exit maps,
    plus '__final__' (the map after the last unit and post) and '__pre_logits__' (pooled width)."""
    import torch

    shapes = {}
    was_training = staged.training
    staged.eval()
    with torch.no_grad():
        x = torch.zeros(1, 3, input_size, input_size, device=device)
        h = staged.forward_stem(x)
        for name in staged.unit_names:
            h = staged.forward_unit(name, h)
            fmap = staged.to_feature_map(h)
            shapes[name] = tuple(int(s) for s in fmap.shape[1:])
        post = staged.forward_post(h)
        fmap = staged.to_feature_map(post)
        shapes["__final__"] = tuple(int(s) for s in fmap.shape[1:])
        shapes["__pre_logits__"] = int(staged.forward_head(post, pre_logits=True).shape[-1])
    staged.train(was_training)
    return shapes


def derive_split_points(staged, input_size: int, modules=None, device="cpu") -> list[SplitPoint]:
    """Split points (default ones unless ``modules`` is given) with channels/reduction measured."""
    shapes = trace_shapes(staged, input_size, device=device)
    if modules is None:
        modules = default_splits(staged.unit_names, getattr(staged, "unit_depths", None))
    return [
        SplitPoint(m, shapes[m][0], max(1, round(input_size / shapes[m][1]))) for m in modules
    ]

"""Shapes from a dry-run forward: feature_info is not trusted (plugins swap stems, ViTs use tokens).

``cached_shapes`` keeps a dry run's result in a run's ``cache/`` keyed by what it depends on (the
backbone's module tree and tensor shapes, the versions of the packages its classes come from, the
provider and its version, the input size): loading the run again builds the same backbone and
reuses it instead of running one more forward."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Optional

from .contract import SplitPoint, default_splits

SHAPES_SCHEMA = 1


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


def shapes_key(staged, input_size: int, provider: str) -> str:
    """What a dry run's shapes depend on: the module tree (its repr: layers, strides, paddings), every
    tensor's name and shape, the input size, the provider and its version, and the versions of the
    packages whose classes make up the backbone (torch, timm, scan, a plugin's)."""
    packages = sorted({type(m).__module__.split(".")[0] for m in staged.modules()} | {"torch"})
    versions = [[name, str(getattr(sys.modules.get(name), "__version__", ""))] for name in packages]
    digest = hashlib.sha256(repr(staged).encode())
    for name, t in list(staged.named_parameters()) + list(staged.named_buffers()):
        digest.update(f"{name}:{tuple(t.shape)}".encode())
    digest.update(json.dumps([int(input_size), provider, versions]).encode())
    return digest.hexdigest()[:16]


def cached_shapes(staged, input_size: int, cache: Optional[Path], provider: str, trace=None) -> dict:
    """``trace(staged, input_size)`` (default ``trace_shapes``), or its result stored in ``cache``
    under the same ``shapes_key``; a missing, damaged or other-key cache is traced again and
    rewritten (a read-only run folder: traced every time)."""
    trace = trace or trace_shapes
    if cache is None:
        return trace(staged, input_size)
    key = shapes_key(staged, input_size, provider)
    shapes = _read_shapes(Path(cache), key, staged.unit_names)
    if shapes is None:
        shapes = trace(staged, input_size)
        _write_shapes(Path(cache), key, shapes)
    return shapes


def _read_shapes(path: Path, key: str, unit_names) -> Optional[dict]:
    """The stored shapes when ``path`` holds them for ``key``, complete and well formed; else None."""
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or doc.get("schema") != SHAPES_SCHEMA or doc.get("key") != key:
            return None
        raw = doc["shapes"]
        shapes = {name: _dims(raw[name]) for name in list(unit_names) + ["__final__"]}
        pre = raw["__pre_logits__"]
        if not _count(pre):
            return None
        shapes["__pre_logits__"] = pre
        return shapes
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _dims(value) -> tuple:
    if not isinstance(value, list) or len(value) != 3 or not all(_count(v) for v in value):
        raise ValueError("not [channels, height, width]")
    return tuple(value)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _write_shapes(path: Path, key: str, shapes: dict) -> None:
    from .. import files

    doc = {"schema": SHAPES_SCHEMA, "key": key,
           "shapes": {k: (list(v) if isinstance(v, tuple) else v) for k, v in shapes.items()}}
    try:
        files.atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
    except OSError:
        pass  # a read-only run folder: the next load traces again

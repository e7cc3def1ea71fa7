"""A ``ScanModel`` with random weights on a backbone id, before any training (``scan profile ID``,
the latency benchmark): the registry's default split points and a head preset."""

from __future__ import annotations

from typing import Optional


def build_bare_model(backbone_id: str, input_size: Optional[int] = None, heads: str = "slim",
                     num_classes: Optional[int] = None, registry=None):
    """A ``ScanModel`` with random weights on a backbone id (before training): the default split
    points and the ``heads`` preset. ``num_classes``: default the model's own (timm: 1000)."""
    from .model import HeadConfig, build_scan_model
    from .registry import default_registry

    spec = (registry or default_registry()).get(backbone_id)
    head = HeadConfig.preset(heads)
    size = int(input_size or spec.input_size)
    model = build_scan_model(spec, num_classes=num_classes, head=head, input_size=size)  # checks the declaration
    model.backbone_id = spec.id
    return model.eval(), size

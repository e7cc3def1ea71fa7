"""The backbone plugin contract, version 1.

A provider package exposes, through the ``scan_cli.backbones`` entry-point group, a ``Provider``
(or a zero-argument callable returning one). The provider lists ``BackboneSpec`` records: plain data
that can be read without importing torch. Building a spec returns a ``StagedBackbone``: a network
that can run section by section, so that inference really stops at an exit.

This module imports torch only inside functions; ``StagedBackbone`` is created on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

CONTRACT_VERSION = 1
ENTRY_POINT_GROUP = "scan_cli.backbones"


@dataclass(frozen=True)
class SplitPoint:
    """A place where an exit can be attached: the output of ``module`` (a path in the backbone)."""

    module: str
    channels: int
    reduction: int  # input size / feature-map size (the patch size for ViTs)

    def to_dict(self) -> dict:
        return {"module": self.module, "channels": self.channels, "reduction": self.reduction}


@dataclass(frozen=True)
class BackboneSpec:
    """What a provider declares about one backbone; validated on discovery, checked by a real forward."""

    id: str
    split_points: tuple[SplitPoint, ...]  # default exits, in execution order (the last stage excluded)
    build: Callable[..., Any]  # build(num_classes=None, pretrained=False, **kwargs) -> StagedBackbone
    family: str = ""
    description: str = ""
    input_size: int = 224  # default square input side
    provider: str = ""  # filled in by the registry

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "provider": self.provider,
            "family": self.family,
            "input_size": self.input_size,
            "description": self.description,
            "split_points": [s.to_dict() for s in self.split_points],
        }


@dataclass
class Provider:
    """A set of backbones. ``resolve`` may build specs on demand for ids not in ``backbones``."""

    name: str
    backbones: Iterable[BackboneSpec] = ()
    resolve: Optional[Callable[[str], Optional[BackboneSpec]]] = None
    contract_version: int = CONTRACT_VERSION
    description: str = ""
    patterns: tuple[str, ...] = field(default=())  # id patterns resolve() accepts, for listings


def validate_spec(spec: BackboneSpec) -> None:
    """Raise ValueError when a spec's declared split points cannot be right (no forward needed)."""
    if not isinstance(spec.id, str) or not spec.id:
        raise ValueError("backbone id must be a non-empty string")
    if not callable(spec.build):
        raise ValueError(f"{spec.id}: build must be callable")
    if not spec.split_points:
        raise ValueError(f"{spec.id}: declares no split points")
    seen = set()
    last_reduction = 0
    for sp in spec.split_points:
        if not isinstance(sp, SplitPoint):
            raise ValueError(f"{spec.id}: split points must be SplitPoint records")
        if not sp.module or sp.module in seen:
            raise ValueError(f"{spec.id}: split point module '{sp.module}' is empty or repeated")
        if not (isinstance(sp.channels, int) and sp.channels > 0):
            raise ValueError(f"{spec.id}: split point {sp.module} has invalid channels {sp.channels!r}")
        if not (isinstance(sp.reduction, int) and sp.reduction > 0):
            raise ValueError(f"{spec.id}: split point {sp.module} has invalid reduction {sp.reduction!r}")
        if sp.reduction < last_reduction:
            raise ValueError(f"{spec.id}: split points are not in execution order at {sp.module}")
        seen.add(sp.module)
        last_reduction = sp.reduction


def default_splits(unit_names: list[str], unit_depths: list[int], quantiles=(0.25, 0.5, 0.75)) -> list[str]:
    """Default exits: after each stage for stage-structured backbones (<= len(quantiles)+1 units,
    as the paper splits ResNets), else the units whose cumulative depth is closest to 1/4, 2/4, 3/4.

    The last unit is never a split: its output feeds the backbone's own head."""
    n, q = len(unit_names), len(quantiles)
    if n <= q + 1:
        return list(unit_names[:-1])
    total = sum(unit_depths)
    cumulative, running = [], 0
    for d in unit_depths:
        running += d
        cumulative.append(running)
    chosen: list[int] = []
    for j, frac in enumerate(quantiles):
        low = chosen[-1] + 1 if chosen else 0
        high = n - 2 - (q - 1 - j)  # leave room for the splits still to place
        chosen.append(min(range(low, high + 1), key=lambda i: (abs(cumulative[i] - frac * total), i)))
    return [unit_names[i] for i in chosen]


def _staged_backbone_class():
    import torch.nn as nn

    class StagedBackbone(nn.Module):
        """A classifier that runs as stem -> units (in order) -> post -> head.

        Subclasses (or the adapters in ``scan_cli.backbones``) set ``unit_names`` and implement
        ``forward_stem``, ``forward_post`` and ``forward_head``. Split points are unit names.
        """

        unit_names: list[str]
        unit_depths: list[int]
        data_config: dict
        num_classes: int

        def forward_stem(self, x):
            raise NotImplementedError

        def forward_unit(self, name: str, x):
            return self.get_submodule(name)(x)

        def forward_post(self, x):
            """Whatever the backbone does between its last unit and the head (final norm/conv)."""
            return x

        def forward_head(self, x, pre_logits: bool = False):
            raise NotImplementedError

        def classify(self, pre_logits):
            """Logits from the pooled features that ``forward_head(x, pre_logits=True)`` returned."""
            raise NotImplementedError

        def classifier(self):
            """The module holding the final classifier's weights (retrained for a new class set)."""
            return self.model.get_classifier()

        def to_feature_map(self, x):
            """An exit head reads [B, C, H, W] maps; token backbones reshape here."""
            return x

        def reset_classifier(self, num_classes: int) -> None:
            raise NotImplementedError

        def forward(self, x):
            x = self.forward_stem(x)
            for name in self.unit_names:
                x = self.forward_unit(name, x)
            return self.forward_head(self.forward_post(x))

    return StagedBackbone


_STAGED = None


def __getattr__(name):  # lazy: importing the contract must not import torch
    global _STAGED
    if name == "StagedBackbone":
        if _STAGED is None:
            _STAGED = _staged_backbone_class()
        return _STAGED
    raise AttributeError(name)

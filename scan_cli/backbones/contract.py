"""The backbone plugin contract, version 1 (docs/plugins.md is the guide).

A provider package exposes, through the ``scan_cli.backbones`` entry-point group, a ``Provider``
(or a zero-argument callable returning one). The provider lists ``BackboneSpec`` records: plain data
that can be read without importing torch. Building a spec returns a ``StagedBackbone``: a network
that can run section by section, so that inference really stops at an exit.

Importing this module does not import torch (listing backbones stays cheap); ``StagedBackbone`` is
created on first access, which imports torch.

Version policy: within contract version 1, changes are additive only (new optional fields with
defaults, new ``StagedBackbone`` methods with default implementations). A change that could break a
working plugin gets a new version; a scan_cli release accepts every version in
``SUPPORTED_CONTRACT_VERSIONS`` and disables a provider targeting another one with a message that
says whether to upgrade scan-cli or the plugin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

CONTRACT_VERSION = 1  # the version this scan_cli writes and documents
SUPPORTED_CONTRACT_VERSIONS = (1,)  # the versions a provider may target
ENTRY_POINT_GROUP = "scan_cli.backbones"


@dataclass(frozen=True)
class SplitPoint:
    """A place where an exit can be attached: after the unit named ``module``.

    ``module`` is one of the built backbone's ``unit_names`` (not the last one). ``channels`` and
    ``reduction`` (input side / feature-map side, e.g. 4 for a 56x56 map of a 224 input; the patch
    size for ViTs) describe that unit's output at the spec's ``input_size``. Both are checked against
    a dry-run forward whenever a model is built."""

    module: str
    channels: int
    reduction: int

    def to_dict(self) -> dict:
        return {"module": self.module, "channels": self.channels, "reduction": self.reduction}


@dataclass(frozen=True)
class BackboneSpec:
    """What a provider declares about one backbone; validated on discovery, checked by a real forward."""

    id: str
    split_points: tuple[SplitPoint, ...]  # default exits, in execution order (the last unit excluded)
    # build(num_classes=None, pretrained=False) -> StagedBackbone. scan passes exactly these two
    # keywords, nothing else and nothing read from a model file. num_classes=None: keep your default
    # classifier. pretrained=True without weights: raise scan_cli.errors.ScanError("<id> has no
    # pretrained weights: ...") and the user sees that line.
    build: Callable[..., Any]
    family: str = ""
    description: str = ""
    input_size: int = 224  # the square input side (an int, e.g. 224) the split points are declared at
    provider: str = ""  # filled in by the registry
    # optional: every unit of the built backbone (its unit_names, in order), when known without
    # building it; lets `scan fit` refuse a wrong --splits before torch is imported. Checked
    # against the built backbone whenever a model is built.
    unit_names: tuple[str, ...] = ()

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
    """A set of backbones.

    ``backbones`` are listed by ``scan backbones``. ``resolve(id)`` may build a spec on demand for an
    id that no provider lists; it returns ``None`` for ids it does not handle (it must not raise for
    them). ``patterns`` are shell-style globs (``fnmatch.fnmatchcase``: ``*``, ``?``, ``[abc]``,
    case-sensitive); when given, ``resolve`` is only asked about ids matching one of them, and
    listings show them. ``name`` should equal the entry-point name (the registry uses the latter).
    """

    name: str
    backbones: Iterable[BackboneSpec] = ()
    resolve: Optional[Callable[[str], Optional[BackboneSpec]]] = None
    contract_version: int = CONTRACT_VERSION
    description: str = ""
    patterns: tuple[str, ...] = field(default=())


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def validate_spec(spec: BackboneSpec) -> None:
    """Raise ValueError when a spec cannot be right (no forward needed); the message names the fix."""
    if not isinstance(spec, BackboneSpec):
        raise ValueError(f"gives {type(spec).__name__}, not scan_cli.contract.BackboneSpec")
    if not isinstance(spec.id, str) or not spec.id:
        raise ValueError("backbone id must be a non-empty string")
    if not callable(spec.build):
        raise ValueError(f"{spec.id}: build must be callable (build(num_classes=None, pretrained=False))")
    if not _positive_int(spec.input_size):
        raise ValueError(f"{spec.id}: input_size must be an int (the square side, e.g. 224), got {spec.input_size!r}")
    if not isinstance(spec.split_points, (tuple, list)) or not spec.split_points:
        raise ValueError(f"{spec.id}: declares no split points (a tuple of SplitPoint)")
    seen = set()
    last_reduction = 0
    for sp in spec.split_points:
        if not isinstance(sp, SplitPoint):
            raise ValueError(f"{spec.id}: split points must be SplitPoint records, got {type(sp).__name__}")
        if not isinstance(sp.module, str) or not sp.module or sp.module in seen:
            raise ValueError(f"{spec.id}: split point module {sp.module!r} is empty or repeated")
        if not _positive_int(sp.channels):
            raise ValueError(f"{spec.id}: split point {sp.module} has invalid channels {sp.channels!r} (a positive int)")
        if not _positive_int(sp.reduction):
            raise ValueError(f"{spec.id}: split point {sp.module} has invalid reduction {sp.reduction!r} (a positive int)")
        if sp.reduction < last_reduction:
            raise ValueError(f"{spec.id}: split points are not in execution order at {sp.module} "
                             f"(its reduction {sp.reduction} is below the previous {last_reduction})")
        seen.add(sp.module)
        last_reduction = sp.reduction
    units = spec.unit_names
    if units:
        if not isinstance(units, (tuple, list)) or not all(isinstance(u, str) and u for u in units) \
                or len(set(units)) != len(units):
            raise ValueError(f"{spec.id}: unit_names must be distinct non-empty strings, got {units!r}")
        wrong = [sp.module for sp in spec.split_points if sp.module not in units[:-1]]
        if wrong:
            raise ValueError(f"{spec.id}: split point(s) {', '.join(wrong)} are not among unit_names "
                             f"before the last unit ({', '.join(units)})")


def default_splits(unit_names: list[str], unit_depths: Optional[list[int]] = None,
                   quantiles=(0.25, 0.5, 0.75)) -> list[str]:
    """Default exits: after each stage for stage-structured backbones (<= len(quantiles)+1 units,
    as the paper splits ResNets), else the units whose cumulative depth is closest to 1/4, 2/4, 3/4.

    ``unit_depths`` (blocks per unit; default 1 each) is only read here. The last unit is never a
    split: its output feeds the backbone's own head."""
    n, q = len(unit_names), len(quantiles)
    unit_depths = list(unit_depths) if unit_depths else [1] * n
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

        Set ``unit_names`` (the names exits can follow, in execution order: labels that are stored in
        model files, so keep them stable between releases), ``data_config`` (timm-style: input_size
        [3, H, W], mean, std, interpolation, crop_pct) and ``num_classes``; optionally
        ``unit_depths`` (blocks per unit, read only by ``default_splits`` / ``derive_split_points``).
        Implement ``forward_stem``, ``forward_head``, ``classify``, ``reset_classifier``; override
        the others where the defaults do not fit. Keep a wrapped network in ``self.model``: the
        contract test then compares the staged forward with ``self.model(x)``.
        """

        unit_names: list[str]
        data_config: dict
        num_classes: int

        def forward_stem(self, x):
            raise NotImplementedError

        def forward_unit(self, name: str, x):
            """Run one unit. Default: ``self.get_submodule(name)(x)``, i.e. ``name`` is a dotted path
            from this module (``model.layer1`` for a wrapped network); override to use shorter names."""
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
            """The module holding the final classifier's weights (retrained for a new class set).
            Default: ``self.model.get_classifier()`` (timm models)."""
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

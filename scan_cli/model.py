"""The SCAN model: a staged backbone plus an attention module and a shallow classifier per split.

``forward`` computes every exit (training, calibration); ``early_exit`` runs section by section and
drops each image from the batch as soon as its exit fires, so the rest of the network is really
skipped for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UsageError
from .scoring import run_cascade


@dataclass
class HeadConfig:
    """Exit-head shape.

    ``attention_at``: ``input`` (the paper) gates the split's own features, at full resolution and
    with all their channels; ``reduced`` gates the head's features once its 1x1 and strided convs
    have brought them to ``width`` channels at the last stage's resolution, where the mask and its
    element-wise work cost almost nothing (on CPU the paper's position made the attention the
    slowest part of an exit: memory-bound passes over the largest feature map). ``narrow``: the width also stays at or below the split's channels (a
    64-channel split gets no 128-channel head). ``attention_reduction=1`` is the paper's full-width
    attention. Both new keys default to the old behaviour, so earlier model files load unchanged."""

    width: Optional[int] = None  # bottleneck channels; None = min(128, max(16, features // 4)) (the paper's 128 on ResNets)
    attention: bool = True
    attention_reduction: int = 8  # attention runs at channels // reduction
    attention_at: str = "input"  # input (the paper) | reduced
    narrow: bool = False  # width <= the split's channels as well

    PRESETS = {"slim": dict(width=None, attention=True, attention_reduction=8, attention_at="reduced", narrow=True),
               "paper": dict(width=128, attention=True, attention_reduction=1, attention_at="input", narrow=False)}

    @classmethod
    def preset(cls, name: str, **overrides) -> "HeadConfig":
        if name not in cls.PRESETS:
            raise UsageError(f"unknown head preset '{name}': use one of {', '.join(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})

    def width_for(self, split_channels: int, features: int) -> int:
        width = self.width or min(128, max(16, features // 4))
        return min(width, max(16, split_channels)) if self.narrow else width

    def to_dict(self) -> dict:
        return asdict(self)


class Attention(nn.Module):
    """conv3x3/2 -> BN -> ReLU -> deconv4x4/2 -> BN -> sigmoid; the mask gates the features it is given
    (the split's output in the paper's position, the head's reduced features in the `reduced` one)."""

    def __init__(self, channels: int, reduction: int = 1):
        super().__init__()
        mid = max(8, channels // reduction) if reduction > 1 else channels
        self.down = nn.Sequential(nn.Conv2d(channels, mid, 3, 2, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.up = nn.Sequential(nn.ConvTranspose2d(mid, channels, 4, 2, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        mask = self.up(self.down(x))
        if mask.shape[-2:] != x.shape[-2:]:  # odd sizes: the deconv gives 2 * ceil(H / 2) = H + 1, crop back
            mask = mask[..., : x.shape[-2], : x.shape[-1]]
        return x * torch.sigmoid(mask)


class ExitHead(nn.Module):
    """1x1 reduce -> strided conv down to the last stage's resolution -> [attention] -> 1x1 expand ->
    pool -> linear. ``attention`` (the ``reduced`` position) gates the reduced features."""

    def __init__(self, in_channels: int, width: int, stride: int, out_channels: int, num_classes: int,
                 attention: Optional[nn.Module] = None):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, stride, stride, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        )
        if attention is not None:  # registered only when used: earlier model files have no such key
            self.attention = attention
        self.fc = nn.Linear(out_channels, num_classes)

    def forward(self, x, return_feature: bool = False):
        attention = getattr(self, "attention", None)
        for i, layer in enumerate(self.body):
            if i == 6 and attention is not None:
                x = attention(x)
            x = layer(x)
        feature = F.adaptive_avg_pool2d(x, 1).flatten(1)
        logits = self.fc(feature)
        return (logits, feature) if return_feature else logits


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def scale_grad(x, scale: float):
    if scale == 0.0:
        return x.detach()
    return _ScaleGrad.apply(x, float(scale))


class EarlyExitOutput(NamedTuple):
    logits: torch.Tensor  # [B, C] the logits each image was answered with
    exit_index: torch.Tensor  # [B] long, the exit that answered
    confidence: torch.Tensor  # [B] score of the answering exit


class ScanModel(nn.Module):
    def __init__(self, backbone, split_modules: list[str], num_classes: int, head: HeadConfig, shapes: dict):
        """``shapes`` comes from ``backbones.shapes.trace_shapes`` (a dry-run forward); kept as
        ``self.shapes`` so that nothing runs a second dry run for them."""
        super().__init__()
        unknown = [m for m in split_modules if m not in backbone.unit_names]
        if unknown:
            raise UsageError(
                f"split point(s) {', '.join(unknown)} are not units of this backbone: choose from {', '.join(backbone.unit_names[:-1])}"
            )
        order = [backbone.unit_names.index(m) for m in split_modules]
        if order != sorted(set(order)) or order[-1] == len(backbone.unit_names) - 1:
            raise UsageError("split points must be distinct, in execution order, and before the last unit")
        self.backbone = backbone
        self.split_modules = list(split_modules)
        self.head_config = head
        self.num_classes = num_classes
        self.shapes = dict(shapes)
        # sections: units up to and including each split, then the rest of the backbone
        bounds = [-1] + order + [len(backbone.unit_names) - 1]
        self.sections = [backbone.unit_names[a + 1: b + 1] for a, b in zip(bounds[:-1], bounds[1:])]
        final_c, final_h, _ = shapes["__final__"]
        expand = shapes["__pre_logits__"]
        if head.attention_at not in ("input", "reduced"):
            raise UsageError(f"attention_at={head.attention_at!r}: use input or reduced")
        at_input = head.attention and head.attention_at == "input"
        self.attentions = nn.ModuleList()
        self.heads = nn.ModuleList()
        for m in split_modules:
            c, h, _ = shapes[m]
            width = head.width_for(c, expand)
            stride = max(1, round(h / final_h))
            self.attentions.append(Attention(c, head.attention_reduction) if at_input else nn.Identity())
            inner = Attention(width, head.attention_reduction) if head.attention and not at_input else None
            self.heads.append(ExitHead(c, width, stride, expand, num_classes, attention=inner))

    @property
    def num_exits(self) -> int:
        return len(self.split_modules) + 1

    # -- pieces (also used by the profiler) ---------------------------------------------------
    def stem(self, x):
        return self.backbone.forward_stem(x)

    def section(self, k: int, h):
        for name in self.sections[k]:
            h = self.backbone.forward_unit(name, h)
        return h

    def exit_logits(self, k: int, h, return_feature: bool = False, grad_scale: float = 1.0):
        if k < len(self.heads):
            fmap = self.backbone.to_feature_map(h)
            if grad_scale != 1.0:  # training only: how much of this exit's gradient reaches the backbone
                fmap = scale_grad(fmap, grad_scale)
            fmap = self.attentions[k](fmap)
            return self.heads[k](fmap, return_feature=return_feature)
        post = self.backbone.forward_post(h)
        if not return_feature:
            return self.backbone.forward_head(post)
        feature = self.backbone.forward_head(post, pre_logits=True)
        return self.backbone.classify(feature), feature

    # -- full forward: every exit ---------------------------------------------------------------
    def forward(self, x, return_features: bool = False, exit_grad_scale: float = 1.0):
        """Every exit's logits. ``exit_grad_scale`` scales the gradient that shallow exits send
        into the backbone (1 = the paper, 0 = the backbone learns from the last exit only)."""
        h = self.stem(x)
        logits, features = [], []
        for k in range(self.num_exits):
            h = self.section(k, h)
            out = self.exit_logits(k, h, return_feature=return_features, grad_scale=exit_grad_scale)
            if return_features:
                logits.append(out[0])
                features.append(out[1])
            else:
                logits.append(out)
        return (logits, features) if return_features else logits

    # -- real early exit ---------------------------------------------------------------------------
    @torch.no_grad()
    def early_exit(self, x, thresholds: list[Optional[float]], score: str = "max_softmax",
                   fallback: str = "last") -> EarlyExitOutput:
        """Answer each image at the first exit whose confidence >= its threshold.

        Images that fire leave the batch; only the rest run the next section. ``thresholds`` has
        one entry per shallow exit (a K-th entry, if given, is ignored: the last exit always
        answers); ``None`` or ``inf`` means the exit never fires. ``fallback='ensemble'`` answers
        images that reach the end with the mean of all exits' logits (the paper's choice).

        An exit that never fires runs nothing (no attention, no head) unless the ensemble fallback
        needs its logits, so ``thresholds`` all ``None`` costs exactly the plain backbone."""
        batch = x.shape[0]
        outputs = (x.new_empty((batch, self.num_classes), dtype=torch.float32),
                   torch.full((batch,), self.num_exits - 1, dtype=torch.long, device=x.device),
                   x.new_empty((batch,), dtype=torch.float32))

        def piece(k, h, want_logits):
            h = self.section(k, self.stem(h) if k == 0 else h)
            return h, (self.exit_logits(k, h).float() if want_logits else None)

        out_logits, out_exit, out_conf = run_cascade(x, torch.arange(batch, device=x.device), outputs, piece,
                                                     self.num_exits, thresholds, score, fallback)
        return EarlyExitOutput(out_logits, out_exit, out_conf)


def build_scan_model(spec, *, num_classes: Optional[int], head: HeadConfig, split_modules: Optional[list[str]] = None,
                     pretrained: bool = False, input_size: Optional[int] = None, shapes_cache=None):
    """Build the backbone from its spec (``build(num_classes, pretrained)``, nothing else), measure
    shapes with a dry run, refuse a declaration the dry run contradicts (naming the provider), attach
    the exits. ``num_classes=None`` keeps the backbone's own class count. ``shapes_cache``: a run's
    cache file for the dry run's shapes (``backbones.shapes.cached_shapes``)."""
    from .backbones.verify import build_backbone, measure, verify_declaration, verify_splits

    backbone = build_backbone(spec, num_classes=num_classes, pretrained=pretrained)
    size = input_size or spec.input_size
    shapes = measure(spec, backbone, size, cache=shapes_cache)
    verify_declaration(spec, backbone, shapes, size)
    modules = split_modules or [s.module for s in spec.split_points]
    verify_splits(spec, backbone, modules)
    classes = int(backbone.num_classes) if num_classes is None else num_classes
    return ScanModel(backbone, modules, classes, head, shapes)


def build_bare_model(backbone_id: str, input_size: Optional[int] = None, heads: str = "slim",
                     num_classes: Optional[int] = None, registry=None):
    """A ``ScanModel`` with random weights on a backbone id (before training): the default split
    points and the ``heads`` preset. ``num_classes``: default the model's own (timm: 1000)."""
    from .backbones.registry import default_registry

    spec = (registry or default_registry()).get(backbone_id)
    head = HeadConfig.preset(heads)
    size = int(input_size or spec.input_size)
    model = build_scan_model(spec, num_classes=num_classes, head=head, input_size=size)  # checks the declaration
    model.backbone_id = spec.id
    return model.eval(), size

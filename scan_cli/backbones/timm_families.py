"""Built-in provider: timm's ResNet, EfficientNet/MobileNetV3, ConvNeXt, RegNet and ViT families.

Each family says how its timm model runs section by section (stem, units, post, head). Popular ids
are declared below as data (checked against a real forward by the contract tests); any other timm
model of a supported family is resolved on demand from a dry-run forward.
"""

from __future__ import annotations

import math
from pathlib import Path

from .. import files
from ..errors import ScanError
from .contract import BackboneSpec, Provider, SplitPoint

# timm model class name -> family name
FAMILY_OF_CLASS = {
    "ResNet": "resnet",
    "EfficientNet": "efficientnet",
    "MobileNetV3": "efficientnet",
    "ConvNeXt": "convnext",
    "RegNet": "regnet",
    "VisionTransformer": "vit",
}

PATTERNS = ("resnet*", "resnext*", "seresnet*", "wide_resnet*", "efficientnet*", "mobilenetv3*",
            "convnext*", "regnet*", "vit_*", "test_resnet", "test_efficientnet", "test_convnext", "test_vit")

# id -> (family, input size, default split points (module, channels, reduction)).
# Generated from timm 1.0 with a dry-run forward; `scan backbones check ID` re-verifies any of them.
DECLARED = {
    "resnet18": ("resnet", 224, [("layer1", 64, 4), ("layer2", 128, 8), ("layer3", 256, 16)]),
    "resnet34": ("resnet", 224, [("layer1", 64, 4), ("layer2", 128, 8), ("layer3", 256, 16)]),
    "resnet50": ("resnet", 224, [("layer1", 256, 4), ("layer2", 512, 8), ("layer3", 1024, 16)]),
    "resnet101": ("resnet", 224, [("layer1", 256, 4), ("layer2", 512, 8), ("layer3", 1024, 16)]),
    "resnet152": ("resnet", 224, [("layer1", 256, 4), ("layer2", 512, 8), ("layer3", 1024, 16)]),
    "resnext50_32x4d": ("resnet", 224, [("layer1", 256, 4), ("layer2", 512, 8), ("layer3", 1024, 16)]),
    "seresnet50": ("resnet", 224, [("layer1", 256, 4), ("layer2", 512, 8), ("layer3", 1024, 16)]),
    "wide_resnet50_2": ("resnet", 224, [("layer1", 256, 4), ("layer2", 512, 8), ("layer3", 1024, 16)]),
    "test_resnet": ("resnet", 160, [("layer1", 32, 4), ("layer2", 48, 8), ("layer3", 192, 16)]),
    "efficientnet_b0": ("efficientnet", 224, [("blocks.1", 24, 4), ("blocks.3", 80, 16), ("blocks.4", 112, 16)]),
    "efficientnet_b3": ("efficientnet", 288, [("blocks.1", 32, 4), ("blocks.3", 96, 16), ("blocks.4", 136, 16)]),
    "mobilenetv3_large_100": ("efficientnet", 224, [("blocks.1", 24, 4), ("blocks.2", 40, 8), ("blocks.4", 112, 16)]),
    "mobilenetv3_small_100": ("efficientnet", 224, [("blocks.1", 24, 8), ("blocks.2", 40, 16), ("blocks.3", 48, 16)]),
    "test_efficientnet": ("efficientnet", 160, [("blocks.0", 16, 2), ("blocks.1", 24, 4), ("blocks.3", 48, 16)]),
    "convnext_tiny": ("convnext", 224, [("stages.0", 96, 4), ("stages.1", 192, 8), ("stages.2", 384, 16)]),
    "convnext_small": ("convnext", 224, [("stages.0", 96, 4), ("stages.1", 192, 8), ("stages.2", 384, 16)]),
    "convnext_base": ("convnext", 224, [("stages.0", 128, 4), ("stages.1", 256, 8), ("stages.2", 512, 16)]),
    "test_convnext": ("convnext", 160, [("stages.0", 24, 4), ("stages.1", 32, 8), ("stages.2", 48, 16)]),
    "regnetx_002": ("regnet", 224, [("s1", 24, 4), ("s2", 56, 8), ("s3", 152, 16)]),
    "regnety_008": ("regnet", 224, [("s1", 64, 4), ("s2", 128, 8), ("s3", 320, 16)]),
    "regnety_016": ("regnet", 224, [("s1", 48, 4), ("s2", 120, 8), ("s3", 336, 16)]),
    "regnety_040": ("regnet", 224, [("s1", 128, 4), ("s2", 192, 8), ("s3", 512, 16)]),
    "vit_tiny_patch16_224": ("vit", 224, [("blocks.2", 192, 16), ("blocks.5", 192, 16), ("blocks.8", 192, 16)]),
    "vit_small_patch16_224": ("vit", 224, [("blocks.2", 384, 16), ("blocks.5", 384, 16), ("blocks.8", 384, 16)]),
    "vit_base_patch16_224": ("vit", 224, [("blocks.2", 768, 16), ("blocks.5", 768, 16), ("blocks.8", 768, 16)]),
    "test_vit": ("vit", 160, [("blocks.0", 64, 16), ("blocks.2", 64, 16), ("blocks.3", 64, 16)]),
}

# units per model (the adapter's unit_names): the family's count unless listed in UNIT_COUNTS
FAMILY_UNIT_COUNT = {"resnet": 4, "regnet": 4, "convnext": 4, "efficientnet": 7, "vit": 12}
UNIT_COUNTS = {"mobilenetv3_small_100": 6, "test_efficientnet": 5, "test_vit": 6}


def family_units(family: str, count: int) -> list[str]:
    """The unit names of a timm model of ``family`` with ``count`` units, as the adapter runs them."""
    if family in ("resnet", "regnet"):
        return [f"{'layer' if family == 'resnet' else 's'}{i}" for i in range(1, count + 1)]
    prefix = {"efficientnet": "blocks", "convnext": "stages", "vit": "blocks"}[family]
    return [f"{prefix}.{i}" for i in range(count)]


def _adapter_class():
    """Build the adapter class on first use (it subclasses torch.nn.Module)."""
    from .contract import StagedBackbone

    class TimmStaged(StagedBackbone):
        """Runs a timm model stem -> units -> post -> head, per its family."""

        def __init__(self, model, family: str):
            super().__init__()
            self.model = model
            self.family = family
            m = model
            if family == "resnet":
                self.unit_names = family_units(family, 4)
                self.unit_depths = [len(getattr(m, n)) for n in self.unit_names]
            elif family == "efficientnet":
                self.unit_names = family_units(family, len(m.blocks))
                self.unit_depths = [len(b) for b in m.blocks]
            elif family == "convnext":
                self.unit_names = family_units(family, len(m.stages))
                self.unit_depths = [len(s.blocks) for s in m.stages]
            elif family == "regnet":
                self.unit_names = family_units(family, 4)
                self.unit_depths = [len(list(getattr(m, n).children())) for n in self.unit_names]
            elif family == "vit":
                self.unit_names = family_units(family, len(m.blocks))
                self.unit_depths = [1] * len(m.blocks)
            else:
                raise ValueError(f"unknown timm family {family}")

        @property
        def num_classes(self) -> int:
            return self.model.num_classes

        @property
        def data_config(self) -> dict:
            from .heavy import load_timm

            load_timm()
            import timm.data

            cfg = timm.data.resolve_model_data_config(self.model)
            return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}

        def forward_unit(self, name, x):
            return self.model.get_submodule(name)(x)

        def forward_stem(self, x):
            m, f = self.model, self.family
            if f == "resnet":
                return m.maxpool(m.act1(m.bn1(m.conv1(x))))
            if f == "efficientnet":
                return m.bn1(m.conv_stem(x))
            if f in ("convnext", "regnet"):
                return m.stem(x)
            # vit
            return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

        def forward_post(self, x):
            m, f = self.model, self.family
            if f == "efficientnet" and hasattr(m, "bn2"):  # EfficientNet; MobileNetV3 does this in its head
                return m.bn2(m.conv_head(x))
            if f == "convnext":
                return m.norm_pre(x)
            if f == "regnet":
                return m.final_conv(x)
            if f == "vit":
                return m.norm(x)
            return x

        def forward_head(self, x, pre_logits: bool = False):
            return self.model.forward_head(x, pre_logits=pre_logits)

        def classify(self, pre_logits):
            return self.model.get_classifier()(pre_logits)

        def to_feature_map(self, x):
            if self.family != "vit":
                return x
            tokens = x[:, self.model.num_prefix_tokens:]
            n = tokens.shape[1]
            gh, gw = self.model.patch_embed.grid_size
            if gh * gw != n:  # another input size than the model was built for
                gh = gw = math.isqrt(int(n))
            return tokens.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)

        def reset_classifier(self, num_classes: int) -> None:
            self.model.reset_classifier(num_classes)

    return TimmStaged


_ADAPTER = None


def adapter_class():
    global _ADAPTER
    if _ADAPTER is None:
        _ADAPTER = _adapter_class()
    return _ADAPTER


def wrap_timm_model(model):
    """Wrap an already-built timm model of a supported family."""
    family = FAMILY_OF_CLASS.get(type(model).__name__)
    if family is None:
        raise ScanError(
            f"timm model class {type(model).__name__} is not supported by the built-in provider: "
            f"supported classes are {', '.join(sorted(FAMILY_OF_CLASS))} (or add a provider plugin)"
        )
    return adapter_class()(model, family)


def build_timm(model_id: str, num_classes=None, pretrained: bool = False, **kwargs):
    """Create ``model_id`` with timm and wrap it for staged execution."""
    from .heavy import load_timm

    timm = load_timm()

    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = timm.create_model(model_id, pretrained=pretrained, **kwargs)
    return wrap_timm_model(model)


def _builder(model_id: str):
    def build(num_classes=None, pretrained: bool = False):  # the contract's two arguments, nothing else
        return build_timm(model_id, num_classes=num_classes, pretrained=pretrained)

    return build


def _spec(model_id: str, family: str, input_size: int, splits) -> BackboneSpec:
    return BackboneSpec(
        id=model_id,
        family=family,
        input_size=input_size,
        split_points=tuple(SplitPoint(*s) for s in splits),
        build=_builder(model_id),
        description=f"timm {model_id}",
        unit_names=tuple(family_units(family, UNIT_COUNTS.get(model_id, FAMILY_UNIT_COUNT[family]))),
    )


def resolve(model_id: str):
    """A spec for any timm model of a supported family, from a dry-run forward on the meta device."""
    known = known_timm_models()
    if known is not None and model_id not in known:
        return None  # reported as unknown without importing timm (about 5 s)
    from .heavy import load_timm

    timm = load_timm()

    remember_timm_models(timm)
    if not timm.is_model(model_id):
        return None
    from .shapes import derive_split_points

    with _meta_device():
        model = timm.create_model(model_id, pretrained=False)
    family = FAMILY_OF_CLASS.get(type(model).__name__)
    if family is None:
        return None
    staged = adapter_class()(model, family)
    size = int(staged.data_config["input_size"][-1])
    splits = derive_split_points(staged, size, device="meta")
    return BackboneSpec(id=model_id, family=family, input_size=size, split_points=tuple(splits),
                        build=_builder(model_id), description=f"timm {model_id} (split points derived)",
                        unit_names=tuple(staged.unit_names))


def pretrained_cached(model_id: str):
    """Whether timm's pretrained weights for ``model_id`` are in the Hugging Face cache, without
    importing timm: True when some ``timm/<id>[.<tag>]`` repo holds weights there (timm picks the
    tag: it checks again), False when none does for a declared id (all hosted as ``timm/<id>.<tag>``),
    None when it cannot tell (weights of other ids may live elsewhere)."""
    from huggingface_hub import constants

    name, _, tag = model_id.partition(".")
    root = Path(constants.HF_HUB_CACHE)
    pattern = f"models--timm--{model_id}" if tag else f"models--timm--{name}.*"
    for repo in root.glob(pattern) if root.is_dir() else ():
        if any((snap / f).is_file() for snap in (repo / "snapshots").glob("*")
               for f in ("model.safetensors", "pytorch_model.bin")):
            return True
    return False if name in DECLARED else None


def _model_list_path():
    import os
    from importlib import metadata
    from pathlib import Path

    try:
        version = metadata.version("timm")
    except metadata.PackageNotFoundError:
        return None
    root = os.environ.get("SCAN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "scan-cli")
    return Path(root) / f"timm-{version}-models.json"


def known_timm_models():
    """timm's model names, as recorded for the installed timm version, or None when not recorded yet."""
    import json

    path = _model_list_path()
    try:
        return set(json.loads(path.read_text())) if path is not None else None
    except (OSError, ValueError):
        return None


def remember_timm_models(timm) -> None:
    """Record timm's model names (once per timm version), so later unknown ids fail fast."""
    import json

    path = _model_list_path()
    if path is None or path.exists():
        return
    try:
    
        names = json.dumps(sorted(timm.list_models()))
        files.atomic_write(path, lambda tmp: open(tmp, "w").write(names))
    except OSError:  # a read-only home: just slower next time
        pass


def _meta_device():
    import torch

    return torch.device("meta")


provider = Provider(
    name="timm",
    description="timm ResNet/ResNeXt/SE-ResNet/Wide-ResNet, EfficientNet/MobileNetV3, ConvNeXt, RegNet, ViT",
    backbones=[_spec(k, *v) for k, v in DECLARED.items()],
    resolve=resolve,
    patterns=PATTERNS,
)

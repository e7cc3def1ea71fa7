"""A hand-written third-party plugin for tests, with knobs to break it the ways plugin authors do.

``install(monkeypatch, provider)`` puts a provider behind a real entry point (module
``fake_tinynet``) and makes it the default registry, next to the built-ins.
"""

from __future__ import annotations

import sys
import types
from functools import cache
from importlib import metadata

from scan_cli.contract import BackboneSpec, Provider, SplitPoint

# stage -> (channels, reduction) of the real network (stem at stride 1, each stage halves)
TRUE_SHAPES = {"stage1": (8, 2), "stage2": (16, 4), "stage3": (32, 8)}


@cache
def tinynet_class():
    import torch.nn as nn

    from scan_cli.contract import StagedBackbone

    def block(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    class TinyNet(StagedBackbone):
        def __init__(self, num_classes=10, widths=(8, 16, 32, 48), prefix="stage"):
            super().__init__()
            self.stem = block(3, 8, 1)
            chans = (8,) + tuple(widths)
            self.unit_names = [f"{prefix}{i}" for i in range(1, len(widths) + 1)]
            self.unit_depths = [1] * len(widths)
            for i, name in enumerate(self.unit_names):
                setattr(self, name, block(chans[i], chans[i + 1], 2))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(widths[-1], num_classes)
            self.data_config = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3,
                                "interpolation": "bilinear", "crop_pct": 1.0}

        @property
        def num_classes(self):
            return self.fc.out_features

        def forward_stem(self, x):
            return self.stem(x)

        def forward_head(self, x, pre_logits=False):
            x = self.pool(x).flatten(1)
            return x if pre_logits else self.fc(x)

        def classify(self, pre_logits):
            return self.fc(pre_logits)

        def classifier(self):
            return self.fc

        def reset_classifier(self, num_classes):
            self.fc = nn.Linear(self.fc.in_features, num_classes)

    return TinyNet


def build_tinynet(num_classes=None, pretrained=False):
    if pretrained:
        raise ValueError("tinynet has no pretrained weights")
    return tinynet_class()(num_classes or 10)


def builder(**knobs):
    """A build function for a TinyNet changed by ``knobs`` (widths, prefix)."""

    def build(num_classes=None, pretrained=False):
        return tinynet_class()(num_classes or 10, **knobs)

    return build


def spec(id_="tinynet", splits=None, build=build_tinynet, input_size=32):
    """A spec whose split points default to the true shapes; pass ``splits`` to lie."""
    if splits is None:
        splits = [(m, c, r) for m, (c, r) in TRUE_SHAPES.items()]
    return BackboneSpec(id=id_, split_points=tuple(SplitPoint(*s) for s in splits), build=build,
                        family="tinynet", input_size=input_size, description="a test CNN")


def provider(*specs, name="tinyplug"):
    return Provider(name=name, backbones=list(specs) or [spec()], description="test plugin")


class FakeEntryPoint:
    """An entry point of an installed distribution (name and version), without installing one."""

    group = "scan_cli.backbones"

    def __init__(self, name, module, dist_name="scan-tinyplug", version="0.3.0"):
        self.name, self.value = name, f"{module}:provider"
        self.module = module
        self.dist = types.SimpleNamespace(name=dist_name, version=version, metadata={"Name": dist_name})

    def load(self):
        import importlib

        return importlib.import_module(self.module).provider


def use_registry(monkeypatch, extra_eps=()):
    """Make a fresh registry of the installed providers plus ``extra_eps`` the default one."""
    from scan_cli.backbones import registry as registry_mod

    reg = registry_mod.Registry(list(metadata.entry_points(group="scan_cli.backbones")) + list(extra_eps))
    monkeypatch.setattr(registry_mod, "default_registry", lambda: reg)
    return reg


def install(monkeypatch, prov, name="tinyplug", module="fake_tinyplug", dist_name="scan-tinyplug", version="0.3.0"):
    """Make ``prov`` an installed plugin (entry point ``name`` of package ``dist_name``) and return
    the default registry. Call again with another provider to upgrade it."""
    mod = types.ModuleType(module)
    mod.provider = prov
    monkeypatch.setitem(sys.modules, module, mod)
    return use_registry(monkeypatch, [FakeEntryPoint(name, module, dist_name, version)])


def uninstall(monkeypatch):
    """The plugin is gone: only what is really installed remains."""
    return use_registry(monkeypatch)

"""torchvision backbones for scan (contract version 1): ResNets (stage-structured) and MobileNetV2
(17 inverted-residual blocks, exits at the ends of its resolution stages). Importing this module does
not import torch; the adapter classes are created when a model is built."""

from functools import cache

from scan_cli.contract import BackboneSpec, Provider, SplitPoint

_RESNETS = {
    "tv_resnet18": ("resnet18", 1),
    "tv_resnet34": ("resnet34", 1),
    "tv_resnet50": ("resnet50", 4),
}


@cache
def _resnet_class():
    from scan_cli.contract import StagedBackbone

    class TorchvisionResNet(StagedBackbone):
        def __init__(self, model):
            super().__init__()
            self.model = model
            self.unit_names = ["layer1", "layer2", "layer3", "layer4"]
            self.unit_depths = [len(getattr(model, n)) for n in self.unit_names]

        @property
        def num_classes(self):
            return self.model.fc.out_features

        @property
        def data_config(self):
            return {"input_size": [3, 224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                    "interpolation": "bilinear", "crop_pct": 0.875}

        def forward_stem(self, x):
            m = self.model
            return m.maxpool(m.relu(m.bn1(m.conv1(x))))

        def forward_unit(self, name, x):
            return getattr(self.model, name)(x)

        def forward_head(self, x, pre_logits=False):
            x = self.model.avgpool(x).flatten(1)
            return x if pre_logits else self.model.fc(x)

        def classify(self, pre_logits):
            return self.model.fc(pre_logits)

        def classifier(self):
            return self.model.fc

        def reset_classifier(self, num_classes):
            import torch.nn as nn

            self.model.fc = nn.Linear(self.model.fc.in_features, num_classes)

    return TorchvisionResNet


def _build(arch):
    def build(num_classes=None, pretrained=False):
        import torchvision

        weights = "DEFAULT" if pretrained else None
        model = getattr(torchvision.models, arch)(weights=weights)
        staged = _resnet_class()(model)
        if num_classes is not None and num_classes != staged.num_classes:
            staged.reset_classifier(num_classes)
        return staged

    return build


def _spec(id_, arch, expansion):
    splits = tuple(SplitPoint(f"layer{i}", 64 * 2 ** (i - 1) * expansion, 2 ** (i + 1)) for i in (1, 2, 3))
    return BackboneSpec(id=id_, family="torchvision-resnet", input_size=224, split_points=splits,
                        build=_build(arch), description=f"torchvision {arch}")


@cache
def _mobilenet_class():
    from scan_cli.contract import StagedBackbone

    class TorchvisionMobileNetV2(StagedBackbone):
        """features.0 is the stem, features.1 .. features.17 the units, features.18 (1x1 conv to
        1280 channels) runs in forward_post, then pool and classifier (Dropout, Linear)."""

        def __init__(self, model):
            super().__init__()
            self.model = model
            self.unit_names = [f"features.{i}" for i in range(1, len(model.features) - 1)]
            self.unit_depths = [1] * len(self.unit_names)

        @property
        def num_classes(self):
            return self.model.classifier[-1].out_features

        @property
        def data_config(self):
            return {"input_size": [3, 224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                    "interpolation": "bilinear", "crop_pct": 0.875}

        def forward_stem(self, x):
            return self.model.features[0](x)

        def forward_unit(self, name, x):
            return self.model.get_submodule(name)(x)

        def forward_post(self, x):
            return self.model.features[-1](x)

        def forward_head(self, x, pre_logits=False):
            import torch.nn.functional as F

            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
            return x if pre_logits else self.model.classifier(x)

        def classify(self, pre_logits):
            return self.model.classifier(pre_logits)

        def classifier(self):
            return self.model.classifier

        def reset_classifier(self, num_classes):
            import torch.nn as nn

            self.model.classifier[-1] = nn.Linear(self.model.classifier[-1].in_features, num_classes)

    return TorchvisionMobileNetV2


def _build_mobilenet(num_classes=None, pretrained=False):
    import torchvision

    model = torchvision.models.mobilenet_v2(weights="DEFAULT" if pretrained else None)
    staged = _mobilenet_class()(model)
    if num_classes is not None and num_classes != staged.num_classes:
        staged.reset_classifier(num_classes)
    return staged


# exits where the resolution is about to halve: after 24ch @ 1/4, 32ch @ 1/8, 96ch @ 1/16
_MOBILENET = BackboneSpec(
    id="tv_mobilenet_v2", family="torchvision-mobilenet", input_size=224, build=_build_mobilenet,
    split_points=(SplitPoint("features.3", 24, 4), SplitPoint("features.6", 32, 8), SplitPoint("features.13", 96, 16)),
    description="torchvision mobilenet_v2",
)

provider = Provider(
    name="torchvision",
    description="torchvision ResNets and MobileNetV2",
    backbones=[_spec(k, *v) for k, v in _RESNETS.items()] + [_MOBILENET],
)

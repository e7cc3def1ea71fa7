"""torchvision backbones for scan (contract version 1). Imports torch only when a model is built."""

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
    def build(num_classes=None, pretrained=False, **kwargs):
        import torchvision

        weights = "DEFAULT" if pretrained else None
        model = getattr(torchvision.models, arch)(weights=weights, **kwargs)
        staged = _resnet_class()(model)
        if num_classes is not None and num_classes != staged.num_classes:
            staged.reset_classifier(num_classes)
        return staged

    return build


def _spec(id_, arch, expansion):
    splits = tuple(SplitPoint(f"layer{i}", 64 * 2 ** (i - 1) * expansion, 2 ** (i + 1)) for i in (1, 2, 3))
    return BackboneSpec(id=id_, family="torchvision-resnet", input_size=224, split_points=splits,
                        build=_build(arch), description=f"torchvision {arch}")


provider = Provider(
    name="torchvision",
    description="torchvision ResNets",
    backbones=[_spec(k, *v) for k, v in _RESNETS.items()],
)

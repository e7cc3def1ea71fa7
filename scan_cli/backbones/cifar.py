"""Built-in provider: the paper's CIFAR ResNets (3x3 stride-1 stem, no max-pool) for small images.

Built from timm's ResNet class with the stem swapped, so they share the ResNet adapter. timm's
``feature_info`` still describes the ImageNet stem, which is why shapes come from a dry run.
"""

from __future__ import annotations

from ..errors import ScanError
from .contract import BackboneSpec, Provider, SplitPoint

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

# id -> (block, layers, description)
ARCHS = {
    "resnet10_cifar": ("basic", (1, 1, 1, 1), "CIFAR ResNet-10 (one BasicBlock per stage), the fast CPU demo backbone"),
    "resnet18_cifar": ("basic", (2, 2, 2, 2), "CIFAR ResNet-18 as in the SCAN paper"),
    "resnet34_cifar": ("basic", (3, 4, 6, 3), "CIFAR ResNet-34"),
    "resnet50_cifar": ("bottleneck", (3, 4, 6, 3), "CIFAR ResNet-50 as in the SCAN paper"),
}


def build_cifar_resnet(arch: str, num_classes=None, pretrained: bool = False, **kwargs):
    import torch.nn as nn

    from .heavy import load_timm
    from .timm_families import adapter_class

    load_timm()  # without torch._dynamo
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    if pretrained:
        raise ScanError(f"{arch} has no pretrained weights: drop --pretrained or pass --weights FILE")
    block_kind, layers, _ = ARCHS[arch]
    block = BasicBlock if block_kind == "basic" else Bottleneck
    model = ResNet(block=block, layers=layers, num_classes=num_classes or 10, **kwargs)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.pretrained_cfg = {
        "input_size": (3, 32, 32), "mean": CIFAR_MEAN, "std": CIFAR_STD,
        "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center", "num_classes": model.num_classes,
    }
    return adapter_class()(model, "resnet")


def _spec(arch: str) -> BackboneSpec:
    block_kind, _, description = ARCHS[arch]
    expansion = 4 if block_kind == "bottleneck" else 1
    splits = tuple(SplitPoint(f"layer{i + 1}", c * expansion, r) for i, (c, r) in enumerate(((64, 1), (128, 2), (256, 4))))

    def build(num_classes=None, pretrained: bool = False):  # the contract's two arguments, nothing else
        return build_cifar_resnet(arch, num_classes=num_classes, pretrained=pretrained)

    # units declared, so `fit --splits` is checked before torch (verified against every build)
    return BackboneSpec(id=arch, family="resnet_cifar", input_size=32, split_points=splits,
                        build=build, description=description, unit_names=tuple(f"layer{i}" for i in range(1, 5)))


provider = Provider(
    name="cifar",
    description="the SCAN paper's CIFAR ResNets (3x3 stride-1 stem, no max-pool)",
    backbones=[_spec(a) for a in ARCHS],
)

"""Built-in provider: the paper's CIFAR ResNets (3x3 stride-1 stem, no max-pool) for small images.

The network is timm's ResNet with the stem swapped, as a torch-only copy of the pieces these four
use (``ResNet``, ``BasicBlock``, ``Bottleneck``, ``SelectAdaptivePool2d``: the same module names,
tensors, operations and representation), so that a CIFAR run is built, trained and predicted with
neither timm nor torchvision imported (about 0.6 s of ``scan predict``'s start on 2 cores, issue 21).
A build draws the random numbers timm's build drew, in its order (the ImageNet stem included, then
replaced), so a seed gives the weights it gave when these were built from timm's classes, and
timm's ``model.safetensors`` files load unchanged; tests/test_cifar_resnet.py checks all of it
against timm itself. They share the timm ResNet adapter (``timm_families``).
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


def build_cifar_resnet(arch: str, num_classes=None, pretrained: bool = False):
    import torch.nn as nn

    from .timm_families import adapter_class

    if pretrained:
        raise ScanError(f"{arch} has no pretrained weights: drop --pretrained or pass --weights FILE")
    block_kind, layers, _ = ARCHS[arch]
    resnet = resnet_classes()
    block = resnet.BasicBlock if block_kind == "basic" else resnet.Bottleneck
    model = resnet.ResNet(block=block, layers=layers, num_classes=num_classes or 10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.pretrained_cfg = {
        "input_size": (3, 32, 32), "mean": CIFAR_MEAN, "std": CIFAR_STD,
        "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center", "num_classes": model.num_classes,
    }
    return adapter_class()(model, "resnet")


_RESNET = None


def resnet_classes():
    """The classes (made on first use: they subclass torch.nn.Module), as a namespace."""
    global _RESNET
    if _RESNET is None:
        _RESNET = _resnet_classes()
    return _RESNET


def _resnet_classes():
    """timm 1.0's ``timm.models.resnet`` with its defaults (no dilation, anti-aliasing, attention,
    drop-block or drop-path; a 1x1 projection shortcut; average pooling), nothing else."""
    import types

    import torch.nn as nn

    class SelectAdaptivePool2d(nn.Module):
        """Average pooling to 1 x 1, flattened (timm.layers' with ``pool_type='avg', flatten=True``)."""

        def __init__(self):
            super().__init__()
            self.pool_type = "avg"
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.flatten = nn.Flatten(1)

        def forward(self, x):
            return self.flatten(self.pool(x))

        def __repr__(self):
            return f"{type(self).__name__}(pool_type={self.pool_type}, flatten={self.flatten})"

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, dilation=1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.drop_block = nn.Identity()
            self.act1 = nn.ReLU(inplace=True)
            self.aa = nn.Identity()
            self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, dilation=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.se = None
            self.act2 = nn.ReLU(inplace=True)
            self.downsample = downsample
            self.stride, self.dilation, self.drop_path = stride, 1, None

        def zero_init_last(self) -> None:
            nn.init.zeros_(self.bn2.weight)

        def forward(self, x):
            shortcut = x
            x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
            x = self.bn2(self.conv2(x))
            if self.downsample is not None:
                shortcut = self.downsample(shortcut)
            x += shortcut
            return self.act2(x)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
            super().__init__()
            outplanes = planes * self.expansion
            self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.act1 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, dilation=1, groups=1,
                                   bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.drop_block = nn.Identity()
            self.act2 = nn.ReLU(inplace=True)
            self.aa = nn.Identity()
            self.conv3 = nn.Conv2d(planes, outplanes, kernel_size=1, bias=False)
            self.bn3 = nn.BatchNorm2d(outplanes)
            self.se = None
            self.act3 = nn.ReLU(inplace=True)
            self.downsample = downsample
            self.stride, self.dilation, self.drop_path = stride, 1, None

        def zero_init_last(self) -> None:
            nn.init.zeros_(self.bn3.weight)

        def forward(self, x):
            shortcut = x
            x = self.act1(self.bn1(self.conv1(x)))
            x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
            x = self.bn3(self.conv3(x))
            if self.downsample is not None:
                shortcut = self.downsample(shortcut)
            x += shortcut
            return self.act3(x)

    class ResNet(nn.Module):
        def __init__(self, block, layers, num_classes: int = 1000):
            super().__init__()
            self.num_classes, self.in_chans, self.drop_rate, self.grad_checkpointing = num_classes, 3, 0.0, False
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)  # ImageNet stem
            self.bn1 = nn.BatchNorm2d(64)
            self.act1 = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            inplanes = 64
            for i, (planes, count) in enumerate(zip((64, 128, 256, 512), layers)):
                stride = 1 if i == 0 else 2
                downsample = None
                if stride != 1 or inplanes != planes * block.expansion:  # built before its block, as timm does
                    downsample = nn.Sequential(nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride,
                                                         padding=0, dilation=1, bias=False),
                                               nn.BatchNorm2d(planes * block.expansion))
                blocks = []
                for j in range(count):
                    blocks.append(block(inplanes, planes, stride if j == 0 else 1, downsample if j == 0 else None))
                    inplanes = planes * block.expansion
                self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.num_features = self.head_hidden_size = 512 * block.expansion
            self.global_pool, self.fc = self._classifier(num_classes)
            for m in self.modules():  # timm's init_weights
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

        def _classifier(self, num_classes: int):
            pool = SelectAdaptivePool2d()
            return pool, (nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity())

        def get_classifier(self):
            return self.fc

        def reset_classifier(self, num_classes: int) -> None:
            self.num_classes = num_classes
            self.global_pool, self.fc = self._classifier(num_classes)
            self.global_pool.train(self.training)
            self.fc.train(self.training)

        def forward_features(self, x):
            x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
            return self.layer4(self.layer3(self.layer2(self.layer1(x))))

        def forward_head(self, x, pre_logits: bool = False):
            x = self.global_pool(x)
            return x if pre_logits else self.fc(x)

        def forward(self, x):
            return self.forward_head(self.forward_features(x))

    return types.SimpleNamespace(ResNet=ResNet, BasicBlock=BasicBlock, Bottleneck=Bottleneck,
                                 SelectAdaptivePool2d=SelectAdaptivePool2d)


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

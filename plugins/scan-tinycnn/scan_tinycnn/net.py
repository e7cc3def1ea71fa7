"""The network (plain PyTorch) and its staged view for scan. Imported only when a model is built."""

import torch.nn as nn

from scan_cli.contract import StagedBackbone


def conv_bn(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyCNN(nn.Module):
    """An ordinary classifier, written without scan in mind: stem, four stages, pool, linear."""

    def __init__(self, widths=(16, 32, 64, 128), depths=(1, 1, 2, 1), num_classes=10):
        super().__init__()
        self.stem = conv_bn(3, widths[0])
        cin = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = [conv_bn(cin if j == 0 else width, width, stride=2 if (i > 0 and j == 0) else 1) for j in range(depth)]
            setattr(self, f"stage{i + 1}", nn.Sequential(*blocks))
            cin = width
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for i in range(1, 5):
            x = getattr(self, f"stage{i}")(x)
        return self.fc(self.pool(x).flatten(1))


class StagedTinyCNN(StagedBackbone):
    """TinyCNN run stage by stage. The network sits in ``self.model`` (so that the contract test
    compares this staged forward with ``self.model(x)``); unit names are ``stage1`` .. ``stage4``,
    looked up in ``self.model`` by ``forward_unit``."""

    def __init__(self, model: TinyCNN, depths):
        super().__init__()
        self.model = model
        self.unit_names = ["stage1", "stage2", "stage3", "stage4"]
        self.unit_depths = list(depths)  # optional: only default_splits() reads it
        self.data_config = {"input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                            "interpolation": "bilinear", "crop_pct": 1.0}

    @property
    def num_classes(self):
        return self.model.fc.out_features

    def forward_stem(self, x):
        return self.model.stem(x)

    def forward_unit(self, name, x):
        return getattr(self.model, name)(x)

    def forward_head(self, x, pre_logits=False):
        x = self.model.pool(x).flatten(1)
        return x if pre_logits else self.model.fc(x)

    def classify(self, pre_logits):
        return self.model.fc(pre_logits)

    def classifier(self):
        return self.model.fc

    def reset_classifier(self, num_classes):
        self.model.fc = nn.Linear(self.model.fc.in_features, num_classes)


def staged_tinycnn(widths, depths, num_classes=10):
    return StagedTinyCNN(TinyCNN(widths, depths, num_classes), depths)

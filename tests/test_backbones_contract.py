"""The contract test over every built-in family (tiny test_* models or small real configs)."""

import pytest

from scan_cli.testing import check_backbone
from scan_cli.contract import default_splits
from scan_cli.backbones.registry import default_registry

# one per family; small input sizes keep CPU time low while exercising the real code paths
CASES = [("test_resnet", 64), ("test_efficientnet", 64), ("test_convnext", 64), ("test_vit", 160),
         ("regnetx_002", 64), ("mobilenetv3_small_100", 64), ("resnet10_cifar", 32), ("resnet50_cifar", 32)]


@pytest.mark.parametrize("backbone_id, size", CASES)
def test_contract_holds(backbone_id, size):
    checks = check_backbone(default_registry().get(backbone_id), input_size=size)
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    assert not failed
    assert len(checks) >= 7


def test_every_declared_backbone_matches_timm_shapes_on_meta_device():
    """Cheap shape check of the whole declared table (no weights, no compute)."""
    import torch

    from scan_cli.backbones.shapes import derive_split_points

    for spec in default_registry().specs():
        if spec.provider != "timm":
            continue
        with torch.device("meta"):
            staged = spec.build(pretrained=False)
        got = derive_split_points(staged, spec.input_size, [s.module for s in spec.split_points], device="meta")
        assert tuple(got) == spec.split_points, spec.id
        assert spec.unit_names == tuple(staged.unit_names), spec.id  # what `scan fit` checks --splits against


def test_check_catches_a_wrong_declaration():
    from dataclasses import replace

    from scan_cli.contract import SplitPoint

    spec = default_registry().get("test_resnet")
    wrong = replace(spec, split_points=(SplitPoint("layer1", 999, 4),) + spec.split_points[1:])
    checks = {c.name: c for c in check_backbone(wrong, input_size=64)}
    assert not checks["declared shapes match a real forward"].ok


def test_default_splits_quarters():
    assert default_splits(["a", "b", "c", "d"], [3, 4, 23, 3]) == ["a", "b", "c"]  # stages, as the paper
    names = [f"blocks.{i}" for i in range(12)]
    assert default_splits(names, [1] * 12) == ["blocks.2", "blocks.5", "blocks.8"]
    assert len(default_splits(names[:5], [1] * 5)) == 3

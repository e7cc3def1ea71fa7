"""The example plugin, installed as its own distribution, goes through the same registry."""

import pytest

pytest.importorskip("scan_torchvision", reason="install plugins/scan-torchvision (the README's test line does)")


def test_plugin_is_discovered_with_its_distribution():
    from scan_cli.backbones.registry import Registry

    reg = Registry()
    status = {s.name: s for s in reg.statuses()}["torchvision"]
    assert status.ok and status.distribution == "scan-torchvision" and "tv_resnet18" in status.backbones
    assert reg.get("tv_resnet50").provider == "torchvision"


def test_plugin_backbone_passes_the_contract():
    from scan_cli.testing import check_backbone
    from scan_cli.backbones.registry import Registry

    checks = check_backbone(Registry().get("tv_resnet18"), input_size=64)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_artifact_records_the_plugin_package(tmp_path):
    import torch

    from scan_cli import artifact
    from scan_cli.model import HeadConfig, build_scan_model
    from scan_cli.backbones.registry import Registry

    reg = Registry()
    spec = reg.get("tv_resnet18")
    model = build_scan_model(spec, num_classes=2, head=HeadConfig(), input_size=64).eval()
    info = artifact.info_for(model, spec, reg, classes=["a", "b"], data_config={}, input_size=64)
    artifact.save(model, info, tmp_path / "m.safetensors")
    loaded, info2 = artifact.load(tmp_path / "m.safetensors", registry=Registry())
    assert info2.provider_distribution == "scan-torchvision"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)[-1], loaded(x)[-1])

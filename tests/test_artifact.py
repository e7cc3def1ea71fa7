"""Artifact: round trip, metadata, atomic updates, refusal of tampered or mismatched files."""

import json

import pytest
import torch

from scan_cli import artifact
from scan_cli.errors import ScanError
from scan_cli.model import HeadConfig, build_scan_model
from scan_cli.backbones.registry import default_registry


@pytest.fixture
def saved(tmp_path):
    reg = default_registry()
    spec = reg.get("test_resnet")
    torch.manual_seed(0)
    model = build_scan_model(spec, num_classes=3, head=HeadConfig(), input_size=64).eval()
    info = artifact.info_for(model, spec, reg, classes=["cat", "dog", "eel"],
                             data_config={"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.5] * 3},
                             input_size=64, recipe={"epochs": 1})
    path = tmp_path / "model.safetensors"
    artifact.save(model, info, path)
    return model, path


def test_round_trip_gives_identical_outputs(saved):
    model, path = saved
    loaded, info = artifact.load(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            assert torch.equal(a, b)
    assert info.classes == ["cat", "dog", "eel"]
    assert [s["module"] for s in info.split_points] == ["layer1", "layer2", "layer3"]
    assert info.recipe == {"epochs": 1}
    assert info.provider == "timm" and info.provider_distribution == "scan-cli"


def test_metadata_is_json_strings(saved):
    from safetensors import safe_open

    _, path = saved
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "scan-model" and meta["format_version"] == "1"
    assert json.loads(meta["split_points"])[0]["channels"] == 32
    assert json.loads(meta["data_config"])["input_size"] == [3, 64, 64]


def test_update_metadata_keeps_tensors(saved):
    model, path = saved
    artifact.update_metadata(path, calibration={"thresholds": [0.9, 0.8, 0.7, None]})
    loaded, info = artifact.load(path)
    assert info.calibration["thresholds"][0] == 0.9
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])
    assert not list(path.parent.glob(".*tmp*"))  # no temporary file left behind


def test_tampered_file_is_refused(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF  # break the header length
    path.write_bytes(bytes(data))
    with pytest.raises(ScanError, match="not a readable safetensors"):
        artifact.load(path)


def rewrite_metadata(path, **changes):
    """Save the artifact at ``path`` again with some metadata keys replaced (tensors unchanged)."""
    from safetensors.torch import load_file, save_file

    meta = artifact.read_info(path).to_metadata() | changes
    save_file(load_file(str(path)), str(path), metadata=meta)


def test_wrong_format_version_names_the_fix(saved):
    _, path = saved
    rewrite_metadata(path, format_version="99")
    with pytest.raises(ScanError, match="format 99"):
        artifact.load(path)


def test_mismatched_backbone_is_refused(saved):
    _, path = saved
    backbone = json.loads(artifact.read_info(path).to_metadata()["backbone"])
    rewrite_metadata(path, backbone=json.dumps(backbone | {"id": "test_efficientnet"}))
    with pytest.raises(ScanError, match="does not match|channels|no longer offers"):
        artifact.load(path)


def test_unknown_backbone_names_the_package(saved):
    _, path = saved
    rewrite_metadata(path, backbone=json.dumps({"id": "mystery_net", "provider": "foo", "distribution": "scan-foo",
                                                "version": "1.0"}))
    with pytest.raises(ScanError, match=r"pip install 'scan-foo==1\.0'"):
        artifact.load(path)


def test_not_a_scan_file(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(1)}, str(p))
    with pytest.raises(ScanError, match="not a scan model"):
        artifact.read_info(p)


@pytest.mark.parametrize("kwargs", [
    {"checkpoint_path": "/tmp/evil.pth"},
    {"pretrained_cfg_overlay": {"file": "/tmp/evil.pth"}, "pretrained": True},
    {"num_classes": 5, "features_only": True},
])
def test_build_kwargs_in_metadata_never_reach_the_model_builder(saved, monkeypatch, scan_log, kwargs):
    """Issue 11 item 8: a model file must not choose what code or files get loaded."""
    import timm

    _, path = saved
    backbone = json.loads(artifact.read_info(path).to_metadata()["backbone"])
    rewrite_metadata(path, backbone=json.dumps(backbone | {"build_kwargs": kwargs}))
    calls = []
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    model, info = artifact.load(path)
    assert calls and all(set(kw) <= {"num_classes", "pretrained"} for kw in calls), calls
    assert all(kw.get("pretrained") is False for kw in calls)
    # nothing of them is kept: not on the info, not in what a re-save would write
    assert not any(k == "build_kwargs" or v == kwargs for k, v in vars(info).items())
    assert all("build_kwargs" not in v and "evil" not in v and "features_only" not in v
               for v in info.to_metadata().values())
    assert any("build_kwargs" in m and "ignored" in m for m in scan_log)


def test_saved_metadata_has_no_build_kwargs(saved):
    from safetensors import safe_open

    _, path = saved
    with safe_open(str(path), "pt") as f:
        assert "build_kwargs" not in json.loads(f.metadata()["backbone"])


@pytest.mark.parametrize("head, needle", [
    ({"width": None, "attention": True, "attention_reduction": 8, "activation": "gelu"}, "'activation'"),
    ({"width": "128", "attention": True, "attention_reduction": 8}, "width"),
    ({"width": None, "attention": True, "attention_reduction": 0}, "attention_reduction"),
    ({"width": None, "attention": "yes", "attention_reduction": 8}, "attention"),
    ([1, 2], "head"),
])
def test_bad_head_settings_are_a_one_line_error(saved, head, needle):
    _, path = saved
    rewrite_metadata(path, head=json.dumps(head))
    with pytest.raises(ScanError) as exc:
        artifact.load(path)
    msg = str(exc.value)
    assert needle in msg and "\n" not in msg and str(path) in msg and ("retrain" in msg or "scan fit" in msg)


def test_ignored_build_kwargs_are_reported_once(saved, scan_log):
    _, path = saved
    backbone = json.loads(artifact.read_info(path).to_metadata()["backbone"])
    rewrite_metadata(path, backbone=json.dumps(backbone | {"build_kwargs": {"checkpoint_path": "x.pth"}}))
    artifact.read_info(path)
    artifact.load(path)
    assert len([m for m in scan_log if "build_kwargs" in m]) == 1


def test_a_backbone_now_given_by_another_provider_is_said(saved, scan_log):
    _, path = saved
    backbone = json.loads(artifact.read_info(path).to_metadata()["backbone"])
    rewrite_metadata(path, backbone=json.dumps(backbone | {"provider": "oldplug", "distribution": "scan-oldplug",
                                                           "version": "0.9"}))
    artifact.load(path)
    assert any("'oldplug'" in m and "scan-oldplug" in m and "now comes from provider 'timm'" in m for m in scan_log)

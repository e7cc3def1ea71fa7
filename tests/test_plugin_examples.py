"""Each example plugin package, installed as its own distribution (the README's test line installs
them), goes the whole way through the command line: listed, contract-checked, trained, predicting."""

import json

import pytest

from conftest import make_color_folder

EXAMPLES = [  # (module, provider = entry-point name, package, backbone)
    ("scan_torchvision", "torchvision", "scan-torchvision", "tv_resnet18"),
    ("scan_tinycnn", "tinycnn", "scan-tinycnn", "tinycnn"),
]


@pytest.mark.parametrize("module, provider, package, backbone", EXAMPLES, ids=[e[1] for e in EXAMPLES])
def test_example_plugin_end_to_end(module, provider, package, backbone, run_cli, tmp_path):
    pytest.importorskip(module, reason=f"pip install -e plugins/{package}")
    data = make_color_folder(tmp_path / "data", per_class=6, size=16)  # one training batch per epoch
    run = tmp_path / "run"

    code, out, err = run_cli("plugins", "--json")
    row = {r["name"]: r for r in json.loads(out)}[provider]
    assert code == 0 and row["ok"] and row["distribution"] == package and backbone in row["backbones"], err

    code, out, err = run_cli("backbones", "--json", "--filter", backbone)
    assert code == 0 and [(i["id"], i["provider"]) for i in json.loads(out)] == [(backbone, provider)], err

    code, out, err = run_cli("backbones", "check", backbone, "--img-size", "16", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"], [c for c in doc["checks"] if not c["ok"]]

    code, out, err = run_cli("fit", backbone, "--data", str(data), "--img-size", "16", "--epochs", "2",
                             "--batch-size", "8", "--workers", "0", "--out", str(run), "--json")
    summary = json.loads(out)
    assert code == 0 and summary["provider"] == provider and len(summary["history"]) == 2, err
    assert len(summary["val"]["exits"]) == 4

    code, out, err = run_cli("predict", str(data), "--run", str(run), "--batch-size", "8", "--workers", "0", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["errors"] == [], err
    assert len(doc["predictions"]) == 18
    assert {p["label"] for p in doc["predictions"]} <= {"blue", "green", "red"}
    assert all(1 <= p["exit"] <= 4 for p in doc["predictions"])

    from scan_cli.artifact import read_info

    info = read_info(run / "model.safetensors")
    assert (info.provider, info.provider_distribution) == (provider, package)

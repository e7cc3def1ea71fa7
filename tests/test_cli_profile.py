"""`scan profile`: JSON schema on stdout (progress on stderr), runs and bare backbones, expected cost
from calibration, and a latency/cascade smoke test that checks fields, never timings."""

import json

import pytest
import torch


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _run(run_cli, *args):
    code, out, err = run_cli("profile", *args)
    return code, out, err


@pytest.fixture
def make_run(tmp_path):
    """A saved resnet10_cifar run at 16 px on the digits data; optionally calibrated, with recipe.json."""
    from scan_cli import artifact
    from scan_cli.model import HeadConfig, build_scan_model
    from scan_cli.backbones.registry import default_registry
    from scan_cli.runs import mark_latest

    def make(calibration=None, recipe=True, name="run"):
        reg = default_registry()
        spec = reg.get("resnet10_cifar")
        torch.manual_seed(0)
        model = build_scan_model(spec, num_classes=10, head=HeadConfig(), input_size=16)
        info = artifact.info_for(model, spec, reg, classes=[str(i) for i in range(10)],
                                 data_config={"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3,
                                              "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"},
                                 input_size=16)
        info.calibration = calibration
        run = tmp_path / "runs" / name
        artifact.save(model, info, run / "model.safetensors")
        if recipe:
            (run / "recipe.json").write_text(json.dumps({"data": "digits", "img_size": 16, "seed": 0, "val_fraction": 0.1}))
        mark_latest(run)
        return run

    return make


CALIBRATION = {"thresholds": [0.5, 0.6, 0.7, None], "exit_shares": [0.4, 0.3, 0.2, 0.1],  # every exit on
               "score": "max_softmax", "fallback": "last"}


def test_bare_backbone_json_schema(run_cli):
    code, out, err = _run(run_cli, "test_resnet", "--img-size", "64", "--json", "--no-latency")
    assert code == 0, err
    doc = json.loads(out)  # stdout is exactly one JSON document
    assert "counting MACs" in err and "counting MACs" not in out
    assert doc["units"] == "MACs" and doc["input_size"] == 64 and doc["batch_size"] == 1
    assert doc["source"] == {"backbone": "test_resnet", "provider": "timm", "heads": "slim"}
    assert isinstance(doc["backbone_macs"], int) and doc["backbone_macs"] > 0
    assert doc["uncounted_ops"] == {}
    assert doc["not_counted_elementwise"]["aten::relu_"] > 0
    exits = doc["exits"]
    assert len(exits) == 4
    for e in exits:
        assert {"macs_cumulative", "head_macs", "attention_macs", "exit_macs", "params"} <= set(e)
        assert "latency_ms" not in e
    cum = [e["macs_cumulative"] for e in exits]
    assert cum == sorted(cum)
    assert cum[-1] == doc["backbone_macs"] + sum(e["exit_macs"] for e in exits[:-1])
    assert doc["expected"] is None and "calibration" in doc["expected_note"]
    assert "latency" not in doc


def test_flops_column_is_twice_the_macs(run_cli):
    code, out, _ = _run(run_cli, "test_resnet", "--img-size", "32", "--json", "--no-latency", "--flops")
    doc = json.loads(out)
    assert code == 0
    assert doc["backbone_flops"] == 2 * doc["backbone_macs"]
    assert all(e["flops_cumulative"] == 2 * e["macs_cumulative"] for e in doc["exits"])


def test_paper_heads_cost_more_than_slim(run_cli):
    slim = json.loads(_run(run_cli, "test_resnet", "--img-size", "64", "--json", "--no-latency")[1])
    paper = json.loads(_run(run_cli, "test_resnet", "--img-size", "64", "--json", "--no-latency", "--heads", "paper")[1])
    assert paper["backbone_macs"] == slim["backbone_macs"]
    assert paper["shallow_exit_macs"] > slim["shallow_exit_macs"]


def test_table_names_units_and_what_was_not_counted(run_cli):
    code, out, _ = _run(run_cli, "test_resnet", "--img-size", "32", "--no-latency")
    assert code == 0
    assert "MMACs" in out and "units: MACs" in out
    assert "uncounted operators: none" in out
    assert "not counted (elementwise, by convention)" in out


def test_latest_run_with_calibration_reports_expected_cost_and_caches(run_cli, make_run):
    run = make_run(calibration=CALIBRATION)
    code, out, err = _run(run_cli, "--json", "--no-latency")  # no --run: runs/latest
    assert code == 0, err
    doc = json.loads(out)
    assert doc["source"]["run"] == str(run.resolve())
    cum = [e["macs_cumulative"] for e in doc["exits"]]
    expected = sum(s * c for s, c in zip(CALIBRATION["exit_shares"], cum))
    assert doc["expected"]["macs"] == pytest.approx(expected)
    assert doc["expected"]["speedup"] == pytest.approx(doc["backbone_macs"] / expected)
    assert len(list((run / "cache").glob("macs-*-16.json"))) == 1
    code2, out2, _ = _run(run_cli, "--run", str(run), "--json", "--no-latency")
    assert code2 == 0 and json.loads(out2)["exits"] == doc["exits"]


def test_uncalibrated_run_says_so(run_cli, make_run):
    run = make_run(calibration=None)
    code, out, _ = _run(run_cli, "--run", str(run / "model.safetensors"), "--json", "--no-latency")
    doc = json.loads(out)
    assert code == 0
    assert doc["expected"] is None and "scan calibrate" in doc["expected_note"]


def test_latency_smoke_schema(run_cli):
    code, out, err = _run(run_cli, "test_resnet", "--img-size", "32", "--json", "--iters", "1", "--warmup", "0",
                          "--batch-size", "2", "--threads", "1", "--device", "cpu")
    assert code == 0, err
    doc = json.loads(out)
    lat = doc["latency"]
    assert lat["device"] == "cpu" and lat["threads"] == 1 and lat["batch_sizes"] == [1, 2]
    assert set(lat["backbone"]) == {"1", "2"}
    for e in doc["exits"]:
        assert set(e["latency_ms"]) == {"1", "2"} and set(e["latency_ratio"]) == {"1", "2"}
        assert {"p50_ms", "p95_ms", "n", "per_image_ms", "batch_size"} <= set(e["latency_ms"]["2"])


ALL_AT_EXIT_1 = {"thresholds": [0.0, None, None, None], "exit_shares": [1.0, 0.0, 0.0, 0.0],
                 "score": "max_softmax", "fallback": "last"}


def test_cascade_smoke_on_validation_images(run_cli, make_run):
    run = make_run(calibration=ALL_AT_EXIT_1)
    code, out, err = _run(run_cli, "--run", str(run), "--json", "--iters", "1", "--warmup", "0",
                          "--batch-size", "8", "--cascade-images", "12", "--threads", "1")
    assert code == 0, err
    cascade = json.loads(out)["cascade"]
    assert cascade["images"] == 12 and cascade["batch_size"] == 8
    assert {"measured_speedup", "counted_speedup", "cascade_s", "backbone_s", "observed_exit_shares"} <= set(cascade)
    assert cascade["observed_exit_shares"] == pytest.approx([1.0, 0.0, 0.0, 0.0])  # threshold 0 at exit 1


def test_cascade_without_recipe_is_explained(run_cli, make_run):
    run = make_run(calibration=CALIBRATION, recipe=False)
    code, out, err = _run(run_cli, "--run", str(run), "--json", "--iters", "1", "--warmup", "0", "--batch-size", "2")
    assert code == 0, err
    cascade = json.loads(out)["cascade"]
    assert cascade["measured"] is False and "recipe.json" in cascade["reason"]
    assert "cascade not timed" in err


def test_backbone_and_run_together_is_a_usage_error(run_cli, make_run):
    run = make_run()
    code, out, err = _run(run_cli, "test_resnet", "--run", str(run), "--no-latency")
    assert code == 2 and out == "" and "either" in err


def test_no_run_names_the_fix(run_cli):
    code, out, err = _run(run_cli, "--no-latency")
    assert code == 1 and out == "" and "scan fit" in err


def test_unknown_head_preset(run_cli):
    code, _, err = _run(run_cli, "test_resnet", "--heads", "huge", "--no-latency")
    assert code == 2 and "slim" in err


def test_head_preset_names_match_the_presets_built():
    """--heads is checked against recipes.HEAD_PRESETS before torch loads; model.HeadConfig builds them."""
    from scan_cli.model import HeadConfig
    from scan_cli.training.recipes import HEAD_PRESETS

    assert tuple(HeadConfig.PRESETS) == HEAD_PRESETS

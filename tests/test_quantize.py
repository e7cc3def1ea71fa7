"""`scan export --quantize int8` (inference/quantize.py): int8 pieces, thresholds searched again on their outputs."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from conftest import without_run_line

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime.quantization")


@pytest.fixture(scope="module")
def calibrated(trained_run, tmp_path_factory):
    from scan_cli.calibration.run import calibrate_run

    run = tmp_path_factory.mktemp("q") / "run"
    shutil.copytree(trained_run, run)
    calibrate_run(run, max_drop=0.2)
    return run


@pytest.mark.slow
def test_int8_export_searches_its_thresholds_on_its_own_outputs(run_cli, calibrated, tmp_path):
    from scan_cli.calibration.run import calibrate_outputs, costs_of
    from scan_cli.inference.onnx_engine import Cascade
    from scan_cli.inference.quantize import _validation
    from scan_cli.policy import Calibration
    from scan_cli.runs import Run

    out = tmp_path / "int8"
    code, stdout, err = run_cli("export", "--run", str(calibrated), "--quantize", "int8", "--out", str(out), "--json")
    assert code == 0, err
    manifest = json.loads(stdout)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["precision"] == "int8" and manifest["calibrated"] is True
    K = manifest["num_exits"]
    assert "validation accuracy float32" in err and "int8 thresholds" in err  # per exit, and the operating point
    # the pieces really are int8 (QDQ: QuantizeLinear / DequantizeLinear around int8 weights)
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / manifest["pieces"][0]["file"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # independently: the int8 and float cascades on the validation split, the same search on each
    run = Run.open(str(calibrated))
    cal = Calibration.from_metadata(run.info.calibration, K)
    int8, flt = Cascade(out), Cascade(run.onnx_cache([True] * (K - 1)))
    logits, flogits, labels = [], [], []
    for x, y in _validation(run):
        logits.append(np.stack(int8.exits(x), 1))
        flogits.append(np.stack(flt.exits(x), 1))
        labels.append(y)
    logits, flogits, labels = map(np.concatenate, (logits, flogits, labels))
    assert np.abs(logits - flogits).max() > 1e-3  # quantization changed the outputs (the check can fail)
    search = lambda z: Calibration.from_metadata(calibrate_outputs(  # noqa: E731
        z, labels, costs_of(run), max_drop=0.2, score=cal.score, fallback=cal.fallback)[0], K).thresholds
    assert manifest["thresholds"][:-1] == search(logits)
    assert [p["threshold"] for p in manifest["pieces"]] == manifest["thresholds"]
    if search(flogits) != search(logits):
        assert manifest["thresholds"][:-1] != list(cal.thresholds)
    assert any(t is not None for t in manifest["thresholds"][:-1])  # some exit fires: the cascade is tested
    # predict runs it as any export, and the run's cached int8 export answers the same
    from conftest import make_color_folder

    folder = make_color_folder(tmp_path / "images", per_class=5, size=20, seed=9)
    args = ["predict", str(folder), "--json", "--workers", "0"]
    code, stdout, err = run_cli(*args, "--run", str(out))
    assert code == 0, err
    doc = json.loads(stdout)
    assert len(doc["predictions"]) == 15 and doc["summary"]["policy"]["thresholds"] == manifest["thresholds"][:-1]
    code, stdout2, err = run_cli(*args, "--run", str(calibrated), "--engine", "onnxruntime", "--quantize", "int8")
    assert code == 0, err
    assert len(list((calibrated / "cache").glob("onnx-*-int8/manifest.json"))) == 1
    doc2 = json.loads(stdout2)
    assert [(p["label"], p["exit"]) for p in doc2["predictions"]] == [(p["label"], p["exit"]) for p in doc["predictions"]]


def test_quantize_flags_are_usage_errors(run_cli, tmp_path):
    for args in (["export", "--run", str(tmp_path), "--quantize", "int4"],
                 ["predict", str(tmp_path), "--run", str(tmp_path), "--quantize", "int8"]):
        code, _, err = run_cli(*args)
        err = without_run_line(err)
        assert code == 2 and err.count("\n") == 1, (args, err)


@pytest.mark.slow
def test_missing_quantization_tools_are_one_line(run_cli, calibrated, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)  # import fails
    code, _, err = run_cli("export", "--run", str(calibrated), "--quantize", "int8", "--out", str(tmp_path / "q"))
    err = without_run_line(err)
    assert code == 1 and err.count("\n") == 1 and "onnxruntime.quantization" in err and "pip install" in err
    assert not (tmp_path / "q").exists()

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
    # --all-exits: every exit's int8 outputs, for the independent search below
    code, stdout, err = run_cli("export", "--run", str(calibrated), "--quantize", "int8", "--out", str(out), "--json",
                                "--all-exits")
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


def _int8_outputs(run, folder):
    """The int8 cascade's exit outputs on the run's validation split: numpy ([n, K, C], [n])."""
    from scan_cli.inference.onnx_engine import Cascade
    from scan_cli.inference.quantize import _validation

    cascade = Cascade(folder)
    logits, labels = [], []
    for x, y in _validation(run):
        logits.append(np.stack(cascade.exits(x), 1))
        labels.append(y)
    return np.concatenate(logits), np.concatenate(labels)


@pytest.mark.slow
def test_int8_target_acc_and_heads_as_the_float_export(run_cli, calibrated, tmp_path):
    """--target-acc with --quantize int8: the search of `scan calibrate --target-acc` on the int8 outputs;
    exits that never fire under those thresholds lose their head, as in `scan export` (issue 21)."""
    import onnx

    from scan_cli.calibration.run import calibrate_outputs, costs_of
    from scan_cli.inference.onnx_engine import Cascade
    from scan_cli.policy import Calibration, heads_needed
    from scan_cli.runs import Run

    run = Run.open(str(calibrated))
    K = run.num_exits
    cal = Calibration.from_metadata(run.info.calibration, K)
    target = 0.3  # below every exit's accuracy: the cheapest cascade answers everything at exit 1
    out, full = tmp_path / "int8", tmp_path / "int8-all"
    code, stdout, err = run_cli("export", "--run", str(calibrated), "--quantize", "int8", "--target-acc", str(target),
                                "--out", str(out), "--json")
    assert code == 0, err
    manifest = json.loads(stdout)
    assert "promise: expected accuracy on new data >= 30.00%" in err
    code, _, err = run_cli("export", "--run", str(calibrated), "--quantize", "int8", "--target-acc", str(target),
                           "--out", str(full), "--all-exits")
    assert code == 0, err
    full_manifest = json.loads((full / "manifest.json").read_text())
    assert all(p["logits"] for p in full_manifest["pieces"])  # --all-exits keeps every head
    logits, labels = _int8_outputs(run, full)
    doc = calibrate_outputs(logits, labels, costs_of(run), target_acc=target, score=cal.score, fallback=cal.fallback)[0]
    thresholds = Calibration.from_metadata(doc, K).thresholds
    assert manifest["thresholds"][:-1] == thresholds == full_manifest["thresholds"][:-1]
    assert manifest["quantization"]["settings"]["target_acc"] == target
    assert manifest["quantization"]["operating_point"]["target"]["promise"]["accuracy"] == target
    # heads: exactly the float export's rule, and the MACs it would count with those heads
    heads = heads_needed(thresholds, cal.fallback, K)
    assert not all(heads), thresholds  # the check can fail: some exit never fires
    assert [p["logits"] is not None for p in manifest["pieces"][:-1]] == heads
    for k, piece in enumerate(manifest["pieces"][:-1]):
        names = [o.name for o in onnx.load(str(out / piece["file"])).graph.output]
        assert names == piece["outputs"] == ([f"features_{k + 1}", f"logits_{k + 1}"] if heads[k] else [f"features_{k + 1}"])
    float_export = json.loads((run.onnx_cache(heads) / "manifest.json").read_text()) if run.onnx_cache(heads).is_dir() else None
    if float_export is None:
        from scan_cli.inference.onnx_engine import cached_export

        float_export = json.loads((cached_export(run, heads) / "manifest.json").read_text())
    assert manifest["macs"] == float_export["macs"]
    assert [p["macs_cumulative"] for p in manifest["pieces"]] == manifest["macs"]["exits_cumulative"]
    # cutting a head changes nothing else: the same features, the same answers
    cut, kept = Cascade(out), Cascade(full)
    x = next(iter(__import__("scan_cli.inference.quantize", fromlist=["_validation"])._validation(run)))[0]
    h_cut, h_kept = x, x
    for k in range(K):
        (h_cut, l_cut), (h_kept, l_kept) = cut._run(k, h_cut), kept._run(k, h_kept)
        assert np.array_equal(h_cut, h_kept) if h_kept is not None else h_cut is None
        assert (l_cut is None) == (not (heads + [True])[k])
        if l_cut is not None:
            assert np.array_equal(l_cut, l_kept)
    a, b = cut.early_exit(x, thresholds), kept.early_exit(x, thresholds)
    assert np.array_equal(a.logits, b.logits) and np.array_equal(a.exit_index, b.exit_index)


@pytest.mark.slow
def test_predict_int8_target_acc_searches_the_int8_outputs(run_cli, calibrated, tmp_path):
    """`scan predict --engine onnxruntime --quantize int8 --target-acc X`: thresholds searched on the
    cached int8 outputs (not saved), only the heads they use run; a recalibrated run is followed."""
    from conftest import make_color_folder

    from scan_cli.calibration.run import calibrate_run

    run = tmp_path / "run"
    shutil.copytree(calibrated, run, ignore=shutil.ignore_patterns("onnx-*"))
    folder = make_color_folder(tmp_path / "images", per_class=5, size=20, seed=9)
    args = ["predict", str(folder), "--json", "--workers", "0"]
    out = tmp_path / "int8"
    code, _, err = run_cli("export", "--run", str(run), "--quantize", "int8", "--target-acc", "0.3", "--out", str(out))
    assert code == 0, err
    expected = json.loads((out / "manifest.json").read_text())
    code, stdout, err = run_cli(*args, "--run", str(run), "--engine", "onnxruntime", "--quantize", "int8", "--target-acc", "0.3")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["summary"]["policy"]["thresholds"] == expected["thresholds"][:-1]
    assert doc["summary"]["policy"]["source"] == "--target-acc 0.3" and doc["summary"]["run"] == str(run)
    used = json.loads((tmp_path / doc["summary"]["export"] / "manifest.json").read_text())
    assert [p["logits"] is not None for p in used["pieces"]] == [p["logits"] is not None for p in expected["pieces"]]
    assert used["precision"] == "int8" and "-int8-" in doc["summary"]["export"]
    code, stdout2, err = run_cli(*args, "--run", str(out))
    assert code == 0, err
    assert [(p["label"], p["exit"]) for p in json.loads(stdout2)["predictions"]] == \
        [(p["label"], p["exit"]) for p in doc["predictions"]]
    # nothing was saved: the run's own target still gives the run's int8 thresholds; after the run is
    # calibrated again, the int8 thresholds follow its new target
    calibrate_run(run, max_drop=0.0)
    out0 = tmp_path / "int8-0"
    code, _, err = run_cli("export", "--run", str(run), "--quantize", "int8", "--out", str(out0))
    assert code == 0, err
    code, stdout, err = run_cli(*args, "--run", str(run), "--engine", "onnxruntime", "--quantize", "int8")
    assert code == 0, err
    policy = json.loads(stdout)["summary"]["policy"]
    assert policy["thresholds"] == json.loads((out0 / "manifest.json").read_text())["thresholds"][:-1]
    assert policy["source"] == "calibration"
    assert len(list((run / "cache").glob("onnx-*-int8/validation-outputs.npz"))) == 1  # quantized once


@pytest.mark.slow
def test_int8_target_acc_on_an_uncalibrated_run(run_cli, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("cache"))
    code, _, err = run_cli("export", "--run", str(run), "--quantize", "int8", "--out", str(tmp_path / "a"))
    err = without_run_line(err)
    assert code == 1 and err.count("\n") == 1 and "--target-acc" in err and not (tmp_path / "a").exists()
    code, stdout, err = run_cli("export", "--run", str(run), "--quantize", "int8", "--target-acc", "0.5",
                                "--out", str(tmp_path / "b"), "--json")
    assert code == 0, err
    manifest = json.loads(stdout)
    assert manifest["calibrated"] and manifest["quantization"]["float_thresholds"] is None
    assert "the run is not calibrated" in err


def test_int8_target_acc_usage_errors(run_cli, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "manifest.json").write_text(json.dumps({"format": "scan-onnx-cascade"}))
    for args in (["export", "--run", str(tmp_path), "--target-acc", "0.9"],  # float exports: scan calibrate
                 ["export", "--run", str(tmp_path), "--quantize", "int8", "--target-acc", "1.5"]):
        code, _, err = run_cli(*args)
        err = without_run_line(err)
        assert code == 2 and err.count("\n") == 1, (args, err)

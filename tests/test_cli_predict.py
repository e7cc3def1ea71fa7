"""`scan predict` end to end, in-process: JSON/table/CSV output, exit codes, overrides, equivalence."""

from __future__ import annotations

import csv
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import without_run_line

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).parent))
from test_prediction import (  # noqa: E402
    CLASSES, decoded_batch, make_bad_files, make_images, make_run, simulate_cascade, spread_thresholds,
)

NEVER = "none,none,none"


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    make_images(folder, n=20)
    return folder


@pytest.fixture(scope="module")
def paths(images):
    from scan_cli.data.images import find_images

    return find_images([str(images)])


@pytest.fixture(scope="module")
def logits(run, paths):
    """All exits' logits for the images, as the cascade simulation sees them: [n, K, C]."""
    from scan_cli.artifact import load

    model, info = load(run / "model.safetensors")
    x = decoded_batch(paths, info)
    with torch.no_grad():
        return model, x, torch.stack([o.float() for o in model(x)], dim=1)


@pytest.fixture(scope="module")
def thresholds(logits):
    return spread_thresholds(logits[2])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Calibrated so that everything leaves at exit 1 (threshold 0 always fires); the never-firing
    exits are given as inf (the artifact stores them as null)."""
    return make_run(tmp_path_factory.mktemp("run"),
                    calibration={"thresholds": [0.0, float("inf"), float("inf"), None], "score": "max_softmax", "fallback": "last",
                                 "target_acc": 0.5})


@pytest.fixture(scope="module")
def uncalibrated(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("uncal"), calibration=None)


def predict_json(run_cli, *args):
    code, out, err = run_cli("predict", *map(str, args), "--json", "--workers", "0")
    doc = json.loads(out) if out.strip() else None
    return code, doc, err


def test_json_document_and_summary_on_stderr(run_cli, run, images, paths):
    code, doc, err = predict_json(run_cli, images, "--run", run)
    assert code == 0
    assert set(doc) == {"predictions", "errors", "summary", "drift"}
    assert doc["drift"]["status"] == "no reference" and doc["drift"]["fired"] is False  # an older calibration
    assert doc["errors"] == [] and len(doc["predictions"]) == len(paths) == 20
    p = doc["predictions"][0]
    assert {"path", "label", "confidence", "exit", "exit_index", "macs", "top_k"} <= set(p)
    # the run's calibration (threshold 0) sends every image out at exit 1 of 4
    assert {(q["exit"], q["exit_index"], q["num_exits"]) for q in doc["predictions"]} == {(1, 0, 4)}
    assert [q["path"] for q in doc["predictions"]] == [str(p) for p in paths]
    assert all(q["label"] in CLASSES and 0 < q["confidence"] <= 1 for q in doc["predictions"])
    s = doc["summary"]
    assert s["images"] == 20 and s["predicted"] == 20 and s["errors"] == 0
    assert s["exit_shares"] == [1.0, 0.0, 0.0, 0.0]
    macs = s["exit_macs"]
    assert macs == sorted(macs) and macs[0] > 0 and s["backbone_macs"] > 0
    assert macs[0] < s["backbone_macs"] < macs[-1]  # exit 1 is cheaper; the last one adds every head
    assert all(q["macs"] == macs[0] for q in doc["predictions"])
    assert s["avg_macs"] == pytest.approx(macs[0]) and s["macs_ratio"] == pytest.approx(macs[0] / s["backbone_macs"])
    assert s["images_per_second"] > 0
    assert s["policy"] == {"thresholds": [0.0, None, None], "score": "max_softmax", "fallback": "last", "source": "calibration"}
    # the summary is for people, on stderr
    assert "1/4: 100.0%" in err and "images/s" in err and "MACs" in err and "plain backbone" in err


def test_table_output_by_default(run_cli, run, images):
    code, out, err = run_cli("predict", str(images), "--run", str(run), "--workers", "0", "--top-k", "2")
    assert code == 0
    assert "1/4" in out and "top 2" in out and "predictions" in out
    assert not out.lstrip().startswith("{")
    assert "exits" in err


def test_never_firing_thresholds_equal_the_plain_backbone(run_cli, run, images, logits):
    model, x, all_logits = logits
    with torch.no_grad():
        plain = model.backbone(x).argmax(-1).tolist()
    assert len(set(plain)) > 1 and all_logits[:, 0].argmax(-1).tolist() != plain  # the check can fail
    code, doc, _ = predict_json(run_cli, images, "--run", run, "--thresholds", NEVER, "--batch-size", "6")
    assert code == 0
    assert [p["label"] for p in doc["predictions"]] == [CLASSES[c] for c in plain]
    assert {p["exit"] for p in doc["predictions"]} == {4}


@pytest.mark.parametrize("fallback", ["last", "ensemble"])
def test_given_thresholds_equal_the_cascade_simulation(run_cli, run, images, logits, thresholds, fallback):
    _, _, all_logits = logits
    preds, exits = simulate_cascade(all_logits, thresholds, fallback=fallback)
    assert len(set(exits.tolist())) >= 3
    text = ",".join(repr(t) if t is not None else "none" for t in thresholds)
    code, doc, err = predict_json(run_cli, images, "--run", run, "--thresholds", text, "--fallback", fallback,
                                  "--batch-size", "8")
    assert code == 0
    assert [p["label"] for p in doc["predictions"]] == [CLASSES[c] for c in preds]
    assert [p["exit_index"] for p in doc["predictions"]] == exits.tolist()
    assert doc["summary"]["exit_counts"] == np.bincount(exits, minlength=4).tolist()
    assert doc["summary"]["policy"] == {"thresholds": thresholds, "score": "max_softmax", "fallback": fallback,
                                        "source": "--thresholds"}
    assert "from --thresholds" in err


def test_bad_files_are_errors_and_exit_code_3(run_cli, run, images, tmp_path):
    bad = make_bad_files(tmp_path / "bad")
    code, doc, err = predict_json(run_cli, images, tmp_path / "bad" / "*", "--run", run)
    assert code == 3
    assert len(doc["predictions"]) == 20
    assert sorted(e["path"] for e in doc["errors"]) == sorted(str(p) for p in bad)
    reasons = {e["path"]: e["error"] for e in doc["errors"]}
    for path, words in bad.items():
        assert words in reasons[str(path)]
    assert doc["summary"]["errors"] == 3 and doc["summary"]["images"] == 23
    assert "truncated" in err  # each failure is named on stderr too


def test_decoding_workers_report_bad_files_too(run_cli, run, images, tmp_path):
    bad = make_bad_files(tmp_path / "bad")
    code, out, _ = run_cli("predict", str(images), str(tmp_path / "bad"), "--run", str(run), "--json",
                           "--workers", "2", "--batch-size", "5")
    assert code == 3
    doc = json.loads(out)
    assert len(doc["predictions"]) == 20 and len(doc["errors"]) == len(bad)


def test_no_readable_image_is_exit_code_1(run_cli, run, tmp_path):
    make_bad_files(tmp_path / "bad")
    code, doc, err = predict_json(run_cli, tmp_path / "bad", "--run", run)
    assert code == 1
    assert doc["predictions"] == [] and len(doc["errors"]) == 3
    assert "none of the 3 image file(s) could be read" in err


@pytest.mark.parametrize("what", ["empty folder", "pattern", "missing"])
def test_nothing_to_predict_is_a_one_line_error(run_cli, run, tmp_path, what):
    (tmp_path / "empty").mkdir()
    arg = {"empty folder": tmp_path / "empty", "pattern": tmp_path / "*.jpg", "missing": tmp_path / "nope"}[what]
    code, out, err = run_cli("predict", str(arg), "--run", str(run))
    assert code == 1 and out == ""
    err = without_run_line(err)
    assert err.startswith("error: ") and err.count("\n") == 1


def test_csv_is_written(run_cli, run, images, tmp_path):
    make_bad_files(tmp_path / "bad")
    target = tmp_path / "out" / "predictions.csv"
    code, out, err = run_cli("predict", str(images), str(tmp_path / "bad"), "--run", str(run), "--workers", "0",
                             "--csv", str(target), "--top-k", "3")
    assert code == 3
    rows = list(csv.DictReader(target.open()))
    assert len(rows) == 23
    good = [r for r in rows if not r["error"]]
    assert len(good) == 20 and {r["exit"] for r in good} == {"1"} and {r["exit_index"] for r in good} == {"0"}
    assert all(r["top1_label"] == r["label"] and r["top3_label"] in CLASSES for r in good)
    assert all(float(r["top1_probability"]) >= float(r["top2_probability"]) >= float(r["top3_probability"]) for r in good)
    assert sum(1 for r in rows if r["error"]) == 3
    assert str(target) in err
    assert [p.name for p in target.parent.iterdir()] == ["predictions.csv"]  # no temporary file left


def test_top_k(run_cli, run, images):
    code, doc, _ = predict_json(run_cli, images, "--run", run, "--top-k", "2")
    assert code == 0
    for p in doc["predictions"]:
        assert len(p["top_k"]) == 2
        assert p["top_k"][0] == {"label": p["label"], "probability": p["confidence"]}
        assert p["top_k"][1]["probability"] <= p["top_k"][0]["probability"]
        assert p["top_k"][1]["label"] != p["label"]


def test_thresholds_override_the_calibration_for_one_call(run_cli, run, images):
    from scan_cli.artifact import read_info

    stored = read_info(run / "model.safetensors").calibration
    before = (run / "model.safetensors").read_bytes()
    code, doc, _ = predict_json(run_cli, images, "--run", run, "--thresholds", "inf,0.0,none")
    assert code == 0 and {p["exit"] for p in doc["predictions"]} == {2}
    code, doc, _ = predict_json(run_cli, images, "--run", run, "--thresholds", NEVER)
    assert {p["exit"] for p in doc["predictions"]} == {4}
    assert (run / "model.safetensors").read_bytes() == before  # nothing saved
    assert read_info(run / "model.safetensors").calibration == stored


def test_bad_threshold_flags_are_usage_errors(run_cli, run, images):
    code, _, err = run_cli("predict", str(images), "--run", str(run), "--thresholds", "0.5,0.5")
    assert code == 2 and "needs 3 comma-separated values" in err
    code, _, err = run_cli("predict", str(images), "--run", str(run), "--thresholds", "0.5,0.5,0.5", "--target-acc", "0.9")
    assert code == 2
    code, _, err = run_cli("predict", str(images), "--run", str(run), "--score", "margin")
    assert code == 2 and "calibrated for score 'max_softmax'" in err
    code, _, err = run_cli("predict", str(images), "--run", str(run), "--channels-last", "maybe")
    assert code == 2 and "--channels-last" in err


def test_layouts_agree(run_cli, run, images, thresholds):
    text = ",".join("none" if t is None else repr(t) for t in thresholds)
    docs = {}
    for mode in ("on", "off"):
        code, doc, _ = predict_json(run_cli, images, "--run", run, "--thresholds", text, "--channels-last", mode)
        assert code == 0 and doc["summary"]["channels_last"] is (mode == "on")
        docs[mode] = [(p["label"], p["exit"]) for p in doc["predictions"]]
    assert docs["on"] == docs["off"] and len({e for _, e in docs["on"]}) >= 3


def test_target_acc_runs_the_real_calibration_for_this_call_only(run_cli, trained_run, tmp_path):
    """No stub: --target-acc calibrates the trained run on its validation split (as 'scan calibrate
    --target-acc' would, without saving) and the images exit where those thresholds send them."""
    import shutil

    from scan_cli.artifact import load, read_info
    from scan_cli.calibration.run import calibrate_run
    from scan_cli.data.images import find_images

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    info = read_info(run_dir / "model.safetensors")
    test_images = find_images([str(Path(info.recipe["data"]) / "test")])
    before = (run_dir / "model.safetensors").read_bytes()
    code, doc, err = predict_json(run_cli, Path(info.recipe["data"]) / "test", "--run", run_dir, "--target-acc", "0.8")
    assert code == 0, err
    assert (run_dir / "model.safetensors").read_bytes() == before and read_info(run_dir / "model.safetensors").calibration is None
    want = calibrate_run(run_dir, target_acc=0.8, save=False)
    assert want["val_accuracy"] >= 0.8
    thresholds = [None if t is None or t == float("inf") else t for t in want["thresholds"][:3]]
    assert doc["summary"]["policy"] == {"thresholds": thresholds, "score": "max_softmax", "fallback": "last",
                                        "source": "--target-acc 0.8"}
    model, info = load(run_dir / "model.safetensors")
    with torch.no_grad():
        all_logits = torch.stack([o.float() for o in model(decoded_batch(test_images, info))], dim=1)
    preds, exits = simulate_cascade(all_logits, thresholds)
    assert [p["exit_index"] for p in doc["predictions"]] == exits.tolist()
    assert min(exits.tolist()) < 3  # images leave early: not the uncalibrated run's last exit for all
    assert [p["label"] for p in doc["predictions"]] == [info.classes[c] for c in preds]
    assert "from --target-acc 0.8" in err


def test_target_acc_override(run_cli, run, images, monkeypatch):
    seen = []

    def calibrate_run(run_dir, **kw):
        seen.append((Path(run_dir), kw))
        return {"thresholds": [None, None, 0.0, None], "score": "max_softmax", "fallback": "last"}

    monkeypatch.setitem(sys.modules, "scan_cli.calibration.run", types.SimpleNamespace(calibrate_run=calibrate_run))
    code, doc, err = predict_json(run_cli, images, "--run", run, "--target-acc", "0.97")
    assert code == 0 and seen == [(run, {"target_acc": 0.97, "save": False, "device": "cpu"})]  # --device is passed on
    assert {p["exit"] for p in doc["predictions"]} == {3}
    assert "from --target-acc 0.97" in err


def test_missing_calibration_says_so_and_uses_the_last_exit(run_cli, uncalibrated, images):
    code, doc, err = predict_json(run_cli, images, "--run", uncalibrated)
    assert code == 0
    assert "not calibrated" in err and "last exit" in err
    assert {p["exit"] for p in doc["predictions"]} == {4}
    assert doc["summary"]["exit_shares"] == [0.0, 0.0, 0.0, 1.0]


def test_latest_run_by_default(run_cli, run, images, paths, tmp_path, monkeypatch):
    from scan_cli.runs import mark_latest

    root = tmp_path / "runs"
    target = root / "20260101-000000-test_resnet"
    target.mkdir(parents=True)
    os.symlink(run / "model.safetensors", target / "model.safetensors")
    mark_latest(target)
    monkeypatch.setenv("SCAN_RUNS_DIR", str(root))
    code, doc, _ = predict_json(run_cli, paths[0], paths[1])
    assert code == 0 and [p["path"] for p in doc["predictions"]] == [str(paths[0]), str(paths[1])]
    monkeypatch.setenv("SCAN_RUNS_DIR", str(tmp_path / "nothing"))
    code, _, err = run_cli("predict", str(paths[0]))
    assert code == 1 and "scan fit" in err


def test_an_image_over_the_pixel_limit_is_an_error_row_and_exit_code_3(run_cli, run, images, tmp_path, monkeypatch):
    from test_images import declared_png

    huge = declared_png(tmp_path / "huge" / "bomb.png", 20_000, 20_000)  # 400 MP declared, a tiny file
    code, doc, err = predict_json(run_cli, images, huge, "--run", run)
    assert code == 3 and len(doc["predictions"]) == 20
    assert [e["path"] for e in doc["errors"]] == [str(huge)]
    assert "too large" in doc["errors"][0]["error"] and "SCAN_MAX_IMAGE_PIXELS" in doc["errors"][0]["error"]
    monkeypatch.setenv("SCAN_MAX_IMAGE_PIXELS", "nope")
    code, _, err = run_cli("predict", str(images), "--run", str(run))
    assert code == 2 and "SCAN_MAX_IMAGE_PIXELS" in err and err.count("\n") == 1

"""calibrate/evaluate wiring on a real (small) trained run: JSON schema, cache, refusals, artifact."""

import json

import pytest

from conftest import copy_of, without_run_line


@pytest.fixture
def run(trained_run, tmp_path):
    return copy_of(trained_run, tmp_path)


def test_calibrate_json_and_artifact(run, run_cli):
    from scan_cli import artifact

    code, out, err = run_cli("calibrate", "--run", str(run), "--max-drop", "0.0", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["thresholds"]) == 4 and doc["thresholds"][-1] is None
    assert {"val_accuracy", "expected_macs", "speedup", "exit_shares", "pareto"} <= set(doc)
    assert abs(sum(doc["exit_shares"]) - 1) < 1e-9
    assert doc["expected_macs"] <= doc["exit_macs"][-1] + 1e-6
    stored = artifact.read_info(run / "model.safetensors").calibration
    assert stored["thresholds"] == doc["thresholds"]  # strict JSON in the artifact too: null = never fires
    assert "thresholds written" in err


def test_second_calibration_uses_the_cache(run, run_cli, monkeypatch):
    assert run_cli("calibrate", "--run", str(run), "--max-drop", "0.0")[0] == 0
    import scan_cli.exit_outputs as inference

    def boom(*a, **k):
        raise AssertionError("validation outputs recomputed")

    monkeypatch.setattr(inference, "collect_exit_outputs", boom)
    code, out, err = run_cli("calibrate", "--run", str(run), "--max-drop", "0.01", "--json")
    assert code == 0, err


def test_higher_target_never_costs_less(run, run_cli):
    costs = []
    for drop in ("0.2", "0.1", "0.0"):
        code, out, err = run_cli("calibrate", "--run", str(run), "--max-drop", drop, "--json", "--dry-run")
        assert code == 0, err
        costs.append(json.loads(out)["expected_macs"])
    assert costs == sorted(costs)


def test_refuses_test_split_and_bad_targets(run, run_cli):
    code, _, err = run_cli("calibrate", "--run", str(run), "--target-acc", "0.5", "--split", "test")
    assert code == 2 and "test" in err
    for bad in ("0", "1.5", "-0.2"):
        code, _, err = run_cli("calibrate", "--run", str(run), "--target-acc", bad)
        assert code == 2, bad
    code, _, err = run_cli("calibrate", "--run", str(run))
    assert code == 2 and "exactly one" in err


def test_impossible_target_exits_1_with_best_attainable(run, run_cli):
    code, out, err = run_cli("calibrate", "--run", str(run), "--target-acc", "1.0")
    assert code == 1 and without_run_line(err).startswith("error:") and out == ""
    assert "best attainable" in err and "lower --target-acc" in err


def test_plot_is_written(run, run_cli, tmp_path):
    png = tmp_path / "curve.png"
    code, _, err = run_cli("calibrate", "--run", str(run), "--max-drop", "0.05", "--plot", str(png), "--dry-run")
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_before_and_after_calibration(run, run_cli):
    code, out, err = run_cli("evaluate", "--run", str(run), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["split"] == "test" and doc["cascade"] is None
    assert len(doc["exits"]) == 4 and all(0 <= e["accuracy"] <= 1 for e in doc["exits"])
    assert run_cli("calibrate", "--run", str(run), "--max-drop", "0.0")[0] == 0
    code, out, err = run_cli("evaluate", "--run", str(run), "--json")
    cascade = json.loads(out)["cascade"]
    assert cascade and abs(sum(cascade["exit_shares"]) - 1) < 1e-9 and cascade["speedup"] > 0
    code, out, _ = run_cli("evaluate", "--run", str(run), "--split", "bogus")
    assert code == 2


def test_latest_run_is_the_default(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("SCAN_RUNS_DIR", str(tmp_path / "empty-runs"))
    code, _, err = run_cli("calibrate", "--max-drop", "0.01")
    assert code == 1 and "scan fit" in err


def test_the_promise_is_said_honestly(run, run_cli):
    """The validation estimate comes with its binomial interval and a pointer to --confidence; evaluate
    says where images were answered, not 'left'."""
    code, out, err = run_cli("calibrate", "--run", str(run), "--max-drop", "0.0")
    assert code == 0, err
    assert "95% interval" in out and "--confidence" in out
    code, out, err = run_cli("evaluate", "--run", str(run))
    assert code == 0, err
    assert "answered here" in out and "left" not in out

"""A switched-off exit (threshold never firing) is priced at zero everywhere the tool counts cost:
calibrate, evaluate, profile's expected cost and predict's MACs per image."""

import pytest


def test_predict_with_every_exit_off_costs_the_plain_backbone(run_cli, trained_run, tmp_path):
    import json

    from conftest import make_color_folder

    imgs = make_color_folder(tmp_path / "imgs", per_class=2)
    code, out, err = run_cli("predict", str(imgs), "--run", str(trained_run), "--thresholds", "none,none,none", "--json")
    assert code == 0, err
    doc = json.loads(out)
    backbone = doc["summary"]["backbone_macs"]
    assert all(p["macs"] == backbone and p["exit"] == 4 for p in doc["predictions"])
    assert doc["summary"]["macs_ratio"] == 1.0
    code, out, err = run_cli("predict", str(imgs), "--run", str(trained_run), "--thresholds", "0.0,none,none", "--json")
    doc = json.loads(out)
    assert all(p["exit"] == 1 and p["macs"] < backbone for p in doc["predictions"])


def test_expected_cost_prices_a_switched_off_exit_at_zero():
    from scan_cli.profiling import ExitCost, MacReport, expected_cost

    def exit_cost(k, to_split, head, cumulative):
        return ExitCost(k, f"{k + 1}/3", "s", to_split, 0, head, head, cumulative, 0, 0, 0)

    # backbone 2, 4, 5 (the last entry's own head is the backbone's); shallow heads 1 and 2
    report = MacReport(16, 1, [1, 2, 1], [exit_cost(0, 2, 1, 3), exit_cost(1, 4, 2, 6), exit_cost(2, 5, 0, 8)],
                       5, 0, {}, {}, {}, {})
    off = expected_cost(report, {"thresholds": [0.5, None, None], "exit_shares": [0.5, 0.0, 0.5], "fallback": "last"})
    assert off.macs == pytest.approx(0.5 * 3 + 0.5 * 6)  # exit 2 switched off: the last costs 5 + 1
    on = expected_cost(report, {"thresholds": [0.5, 0.9, None], "exit_shares": [0.5, 0.0, 0.5], "fallback": "last"})
    assert on.macs == pytest.approx(0.5 * 3 + 0.5 * 8)
    ens = expected_cost(report, {"thresholds": [0.5, None, None], "exit_shares": [0.5, 0.0, 0.5], "fallback": "ensemble"})
    assert ens.macs == pytest.approx(0.5 * 3 + 0.5 * 8)  # the ensemble needs every head


def test_calibrate_and_evaluate_report_switched_off_costs(run_cli, trained_run, tmp_path):
    import json

    from conftest import copy_of
    from scan_cli import artifact

    code, out, err = run_cli("calibrate", "--run", str(trained_run), "--budget", "1.0", "--json", "--dry-run")
    assert code == 0, err
    doc = json.loads(out)
    expected = sum(s * c for s, c in zip(doc["exit_shares"], doc["exit_macs"]))
    assert doc["expected_macs"] == pytest.approx(expected)
    heads = doc["head_macs"]
    # a calibration with exits 2 and 3 surely switched off (exit 1 on, at a score no image reaches)
    run = copy_of(trained_run, tmp_path)
    artifact.update_metadata(run / "model.safetensors", calibration={"thresholds": [1.5, None, None, None],
                                                                      "score": "max_softmax", "fallback": "last"})
    code, out, err = run_cli("evaluate", "--run", str(run), "--split", "val", "--json")
    assert code == 0, err
    ev = json.loads(out)
    assert ev["cascade"]["exit_shares"] == [0.0, 0.0, 0.0, 1.0] and heads[1] > 0 and heads[2] > 0
    all_on = ev["exits"][-1]["macs_cumulative"]  # the last exit with every head running
    # the switched-off exits' heads are taken off the last exit's cost; exit 1's head still runs
    assert ev["cascade"]["expected_macs"] == pytest.approx(all_on - heads[1] - heads[2])


def test_predict_and_profile_say_the_same_thing_the_same_way(run_cli, trained_run, tmp_path):
    """--compare-plain times the plain model on the call's own images: realised vs counted speed-up,
    images/s, batch, layout and threads, in the sentence scan profile uses."""
    import json

    from conftest import make_color_folder

    imgs = make_color_folder(tmp_path / "imgs", per_class=3)
    code, out, err = run_cli("predict", str(imgs), "--run", str(trained_run), "--thresholds", "0.5,0.5,0.5",
                             "--compare-plain", "--json", "--batch-size", "4")
    assert code == 0, err
    summary = json.loads(out)["summary"]
    cmp = summary["comparison"]
    assert cmp["images"] == 9 and cmp["cascade_s"] > 0 and cmp["plain_s"] > 0
    assert cmp["realised_speedup"] == pytest.approx(cmp["plain_s"] / cmp["cascade_s"])
    assert summary["layout"] in ("NHWC", "NCHW") and summary["batch_size"] == 4 and summary["threads"] >= 1
    line = next(ln for ln in err.splitlines() if ln.startswith("realised speed-up"))
    assert "vs counted" in line and "images/s" in line and "batch 4" in line and summary["layout"] in line
    code, out, err = run_cli("predict", str(imgs), "--run", str(trained_run))
    assert "realised speed-up: not measured (--compare-plain" in err

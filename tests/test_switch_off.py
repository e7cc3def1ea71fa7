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


def test_calibrate_and_evaluate_report_switched_off_costs(run_cli, trained_run):
    import json

    code, out, err = run_cli("calibrate", "--run", str(trained_run), "--budget", "1.0", "--json", "--dry-run")
    assert code == 0, err
    doc = json.loads(out)
    off = [k for k, t in enumerate(doc["thresholds"][:-1]) if t is None]
    expected = sum(s * c for s, c in zip(doc["exit_shares"], doc["exit_macs"]))
    assert doc["expected_macs"] == pytest.approx(expected)
    if off:  # a switched-off exit leaves its head out of every later exit's cost
        assert doc["exit_macs"][-1] <= doc["backbone_macs"] + sum(h for j, h in enumerate(doc["head_macs"]) if j not in off) + 1

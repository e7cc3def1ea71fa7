"""CLI wiring: exit codes, JSON on stdout, messages on stderr, help speed."""

import json
import os
import subprocess
import sys

import pytest


def test_backbones_json(run_cli):
    code, out, err = run_cli("backbones", "--json")
    assert code == 0
    items = json.loads(out)
    ids = {i["id"] for i in items}
    assert {"resnet50", "resnet18_cifar", "test_vit"} <= ids
    first = items[0]
    assert {"id", "provider", "split_points"} <= set(first)
    assert {"module", "channels", "reduction"} == set(first["split_points"][0])


def test_backbones_filter_table(run_cli):
    code, out, _ = run_cli("backbones", "--filter", "resnet*_cifar")
    assert code == 0 and "resnet18_cifar" in out and "convnext" not in out


def test_show_json(run_cli):
    code, out, _ = run_cli("backbones", "show", "test_convnext", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["id"] == "test_convnext" and doc["family"] == "convnext"


def test_unknown_backbone_is_one_line_exit_1(run_cli):
    code, out, err = run_cli("backbones", "show", "resnet5")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "did you mean" in err and "Traceback" not in err


def test_usage_error_exit_2(run_cli):
    code, _, err = run_cli("backbones", "--no-such-flag")
    assert code == 2 and "No such option" in err


@pytest.mark.parametrize("args,says", [
    (("backbones", "--no-such-flag"), "No such option: --no-such-flag"),
    (("predict", "x.png", "--top-k", "0"), "'--top-k'"),
    (("predict", "x.png", "--batch-size", "abc"), "'--batch-size'"),
    (("calibrate", "--max-drop", "much"), "'--max-drop'"),
    (("predict",), "INPUTS"),
])
def test_a_parse_error_is_one_line_naming_the_help(run_cli, args, says):
    """click's own parse errors (types, ranges, unknown flags, missing arguments) are one line too,
    naming the command's --help, instead of a usage block."""
    code, out, err = run_cli(*args)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith("error: ") and says in err and f"'scan {args[0]} --help'" in err


def test_check_exit_code(run_cli):
    code, out, _ = run_cli("backbones", "check", "test_resnet", "--img-size", "64", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"] and all(c["ok"] for c in doc["checks"])


def test_plugins_json(run_cli):
    code, out, _ = run_cli("plugins", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["timm"]["ok"] and rows["timm"]["distribution"] == "scan-cli"


def test_help_is_fast_and_imports_no_torch():
    code = "import sys; from scan_cli.cli import app; print('torch' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    res = subprocess.run([sys.executable, "-m", "scan_cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and all(c in res.stdout for c in ("fit", "calibrate", "evaluate", "profile", "predict"))


def test_debug_shows_traceback():
    env = dict(os.environ, SCAN_DEBUG="1")
    res = subprocess.run([sys.executable, "-m", "scan_cli", "backbones", "show", "nope_net"], capture_output=True, text=True, env=env)
    assert res.returncode == 1 and "Traceback" in res.stderr

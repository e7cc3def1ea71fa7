"""Flags are checked before any data or model loads (issue 20): each usage error below is one line,
exit 2, and the process never imported torch (so it answered in well under a second)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [
    (["fit", "test_resnet", "--workers", "-1"], "workers"),
    (["fit", "test_resnet", "--lr", "inf"], "lr"),
    (["fit", "test_resnet", "--out", "{runs}/latest"], "--out"),
    (["calibrate", "--run", "{tmp}/missing", "--max-drop", "0.1", "--plot", "x.txt"], "--plot"),
    (["fit", "test_resnet", "--splits", "bogus"], "bogus"),
    (["fit", "resnet10_cifar", "--splits", "bogus"], "bogus"),  # a built-in plugin backbone declares its units too
    # the flag audit (issue 20 item 4): each of these was refused after torch, after the data, or never
    (["fit", "test_resnet", "--splits", ","], "--splits"),
    (["fit", "test_resnet", "--device", "bogus"], "--device"),
    (["fit", "test_resnet", "--streaming"], "--streaming"),
    (["fit", "test_resnet", "--out", "{tmp}/old"], "--out"),
    (["fit", "test_resnet", "--out", "{tmp}/old/model.safetensors"], "--out"),
    (["calibrate", "--run", "{tmp}/missing", "--max-drop", "-0.1"], "--max-drop"),
    (["calibrate", "--run", "{tmp}/missing", "--max-drop", "nan"], "--max-drop"),
    (["calibrate", "--run", "{tmp}/missing", "--budget", "0"], "--budget"),
    (["calibrate", "--run", "{tmp}/missing", "--budget", "inf"], "--budget"),
    (["calibrate", "--run", "{tmp}/missing", "--max-drop", "0.1", "--budget", "0.5"], "exactly one"),
    (["calibrate", "--run", "{tmp}/missing", "--budget", "0.5", "--confidence", "0.9"], "--confidence"),
    (["calibrate", "--run", "{tmp}/missing", "--max-drop", "0.1", "--device", "bogus"], "--device"),
    (["calibrate", "--run", "{tmp}/missing", "--max-drop", "0.1", "--score", "bogus"], "score"),
    (["calibrate", "--run", "{tmp}/missing", "--max-drop", "0.1", "--split", "test"], "validation"),
    (["evaluate", "--run", "{tmp}/missing", "--device", "bogus"], "--device"),
    (["evaluate", "--run", "{tmp}/missing", "--split", "bogus"], "--split"),
    (["predict", "{tmp}", "--run", "{tmp}/missing", "--device", "bogus"], "--device"),
    (["predict", "{tmp}", "--run", "{tmp}/missing", "--csv", "{tmp}"], "--csv"),
    (["export", "--run", "{tmp}/missing", "--opset", "5"], "--opset"),
    # scan profile's flags: refused before the backbone is built (NaN and a negative time limit ran)
    (["profile", "test_resnet", "--heads", "bogus"], "--heads"),
    (["profile", "test_resnet", "--max-seconds", "nan"], "--max-seconds"),
    (["profile", "test_resnet", "--max-seconds", "-1"], "--max-seconds"),
    (["profile", "test_resnet", "--cascade-images", "0"], "--cascade-images"),
    (["profile", "test_resnet", "--device", "bogus"], "--device"),
]


@pytest.mark.parametrize("args,names", CASES)
def test_a_bad_flag_is_refused_before_torch_is_imported(tmp_path, args, names):
    runs = tmp_path / "runs"
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model.safetensors").write_bytes(b"")  # a finished run's folder
    args = [a.format(runs=runs, tmp=tmp_path) for a in args]
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "scan_cli", *args], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120, env={**__import__("os").environ, "SCAN_RUNS_DIR": str(runs)})
    err = [line for line in res.stderr.splitlines() if not line.startswith("import time:")]
    assert res.returncode == 2 and len(err) == 1 and err[0].startswith("error: ") and names in err[0], (args, err)
    modules = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in res.stderr.splitlines()
               if line.startswith("import time:")}
    assert not modules & {"torch", "timm", "datasets", "matplotlib"}, (args, modules & {"torch", "timm"})
    assert not (runs / "latest").exists()

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
    (["calibrate", "--run", "{tmp}/missing", "--plot", "x.txt"], "--plot"),
]


@pytest.mark.parametrize("args,names", CASES)
def test_a_bad_flag_is_refused_before_torch_is_imported(tmp_path, args, names):
    runs = tmp_path / "runs"
    args = [a.format(runs=runs, tmp=tmp_path) for a in args]
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "scan_cli", *args], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120, env={**__import__("os").environ, "SCAN_RUNS_DIR": str(runs)})
    err = [line for line in res.stderr.splitlines() if not line.startswith("import time:")]
    assert res.returncode == 2 and len(err) == 1 and err[0].startswith("error: ") and names in err[0], (args, err)
    modules = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in res.stderr.splitlines()
               if line.startswith("import time:")}
    assert not modules & {"torch", "timm", "datasets", "matplotlib"}, (args, modules & {"torch", "timm"})
    assert not (runs / "latest").exists()

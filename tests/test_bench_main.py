"""`python -m bench` runs every benchmark the issues ask for (bench/__main__.py)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_int8_benchmark_is_wired(monkeypatch, tmp_path):
    """bench_int8.py (issue 21) runs under `python -m bench`, with the Fashion-MNIST run when there is one."""
    monkeypatch.syspath_prepend(str(ROOT))
    import bench.__main__ as bench_main

    assert "int8" in bench_main.ORDER
    for run in (None, tmp_path / "run"):
        monkeypatch.setattr(bench_main, "fashion_run", lambda work, quick, run=run: run)
        cmd = bench_main.commands("int8", True, tmp_path, tmp_path / "int8.md")
        assert cmd[:2] == [sys.executable, str(ROOT / "bench" / "bench_int8.py")]
        assert cmd[cmd.index("--out") + 1] == str(tmp_path / "int8.md") and "--quick" in cmd
        assert ("--run" in cmd) == (run is not None) and (run is None or cmd[cmd.index("--run") + 1] == str(run))


def test_quality_time_goal_is_taken_within_each_run(monkeypatch):
    """Issue 22's time goal: all epochs over the joint ones, per run, so other load cancels."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.bench_quality import goals_default, phase_time_ratio

    doc = {"history": [{"phase": "joint", "seconds": 10.0}] * 4 + [{"phase": "heads", "seconds": 5.0}] * 2,
           "test": {"exits": [0.9, 0.95, 0.93, 0.92]}}
    assert phase_time_ratio(doc) == 1.25
    slow = dict(doc, history=doc["history"] + [{"phase": "heads", "seconds": 5.0}] * 2)  # 1.5x
    ref = {"scan": [doc], "heads": [doc], "plain": [doc]}
    assert goals_default("x", {**ref, "default": [doc]})[-1].startswith("- met: time 1.25-1.25x")
    assert goals_default("x", {**ref, "default": [doc, slow]})[-1].startswith("- **not met**: time 1.25-1.50x")

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


def test_quality_compares_the_deepest_exit_with_the_plain_backbone_trained_the_same_way(monkeypatch):
    """With the plain backbone's last section at 4x lr in the results, issue 22's plain + 0.5 goal is
    also checked against it (the default trains that section at 4x too)."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.bench_quality import goals_default

    def run(deepest):
        return {"history": [{"phase": "joint", "seconds": 1.0}], "test": {"exits": [0.9, 0.9, 0.9, deepest]}}

    base = {"scan": [run(0.9)], "heads": [run(0.9)], "plain": [run(0.85)], "default": [run(0.9)]}
    assert not any("4x lr" in line for line in goals_default("x", base))
    met = [line for line in goals_default("x", {**base, "plain4": [run(0.894)]}) if "4x lr" in line]
    assert len(met) == 1 and met[0].startswith("- met:") and "89.40" in met[0]
    missed = [line for line in goals_default("x", {**base, "plain4": [run(0.896)]}) if "4x lr" in line]
    assert len(missed) == 1 and missed[0].startswith("- **not met**")

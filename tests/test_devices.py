"""The CPU allocator setting the commands apply (devices.keep_freed_memory): large buffers freed by one
forward are reused by the next instead of being page-faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from scan_cli.devices import keep_freed_memory

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")

# Allocate, touch and free a 256 MB buffer 5 times; print the minor page faults of the last 4 rounds.
PROBE = """
import resource, sys
import numpy as np
sys.path.insert(0, {root!r})
if sys.argv[1] == "on":
    from scan_cli.devices import keep_freed_memory
    assert keep_freed_memory("cpu")
def round_():
    a = np.empty(256 << 20, dtype=np.uint8)
    a.fill(1)  # touch every page
    del a
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    round_()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@glibc
def test_freed_buffers_are_reused_without_page_faults(tmp_path):
    from pathlib import Path

    probe = tmp_path / "probe.py"
    probe.write_text(PROBE.format(root=str(Path(__file__).parents[1])))
    faults = {mode: int(subprocess.run([sys.executable, str(probe), mode], capture_output=True, text=True, check=True,
                                       timeout=120).stdout) for mode in ("off", "on")}
    # glibc's default: a fresh mmap every round, faulted in again (4 KiB or huge pages: at least 128 a round)
    assert faults["off"] >= 4 * 128, faults
    assert faults["on"] < faults["off"] / 10, faults  # kept: the next round reuses the pages already there


def test_only_cpu_and_only_unless_opted_out(monkeypatch):
    assert keep_freed_memory("cuda") is False
    assert keep_freed_memory("cuda:1") is False
    monkeypatch.setenv("SCAN_CPU_ALLOCATOR", "default")
    assert keep_freed_memory("cpu") is False

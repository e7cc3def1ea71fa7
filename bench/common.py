"""What every benchmark writes down about the machine it ran on."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def allocator_as_scan_runs() -> str:
    """Apply the CPU allocator setting `scan`'s commands use (devices.keep_freed_memory) to this whole
    benchmark process, so the plain timm model and the cascade are timed alike; returns a line for
    the results saying which allocator setting was in force."""
    from scan_cli.devices import keep_freed_memory

    if keep_freed_memory("cpu"):
        return "allocator: freed memory kept for reuse (scan's CPU default), for the plain model and SCAN alike"
    return "allocator: the C library's default (SCAN_CPU_ALLOCATOR=default, or not glibc)"

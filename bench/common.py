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


SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
              "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd", "sve")


def cpu_flags() -> str:
    """The CPU's vector-instruction flags (from /proc/cpuinfo, as lscpu lists them) that matter for timings."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                found = [f for f in SIMD_FLAGS if f in have]
                return "flags " + " ".join(found) if found else "no vector flags listed"
    except OSError:
        pass
    return "flags unknown"


def allocator_as_scan_runs() -> str:
    """Apply the CPU allocator setting `scan`'s commands use (devices.keep_freed_memory) to this whole
    benchmark process, so the plain timm model and the cascade are timed alike; returns a line for
    the results saying which allocator setting was in force."""
    from scan_cli.devices import keep_freed_memory

    if keep_freed_memory("cpu"):
        return "allocator: freed memory kept for reuse (scan's CPU default), for the plain model and SCAN alike"
    return "allocator: the C library's default (SCAN_CPU_ALLOCATOR=default, or not glibc)"

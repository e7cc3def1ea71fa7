"""Where torch runs: the --device rule (one for fit, predict and profile), the thread count and the memory layout."""

from __future__ import annotations

from typing import Optional

from .errors import ScanError, UsageError


# torch's device types a user may name (torch.device checks the rest once torch is loaded)
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu", "hpu", "mtia", "xla", "meta", "privateuseone")


def check_device(device: Optional[str]) -> None:
    """A --device that cannot name a device, refused before torch is imported (about 2 s)."""
    if device in (None, "", "auto"):
        return
    kind, _, index = str(device).partition(":")
    if kind not in DEVICE_TYPES or (_ and not index.isdigit()):
        raise UsageError(f"--device '{device}' is not a device: use auto, cpu, cuda or cuda:N")


def resolve_device(device: Optional[str]):
    """'auto' (or None) = cuda when available, else cpu; otherwise the named device, checked."""
    check_device(device)
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device '{device}' is not a device: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ScanError(f"--device {device}: CUDA is not available on this machine: use --device cpu")
    return dev


_KEEP = 1 << 30  # 1 GiB: above any one activation tensor of the models we run on CPU


def keep_freed_memory(device) -> bool:
    """On CPU with glibc, keep freed memory in the process for reuse instead of handing it back to
    the OS after every forward. glibc serves each large tensor (above 32 MB at most) with a fresh
    mmap and unmaps it when freed, so every forward page-faults its activations in again: measured
    on a 2-core VM, that is 60 % of resnet50's time at batch 64 (4.7 s -> 1.8 s per batch with this
    setting; training steps about 20 % faster). The price is resident memory that does not shrink
    (+1.2 GB peak for resnet50 at batch 64). The same job jemalloc/tcmalloc do, without an
    LD_PRELOAD. Process-wide, so applied by the commands (never on import); ``SCAN_CPU_ALLOCATOR=
    default`` leaves glibc as it is. Returns whether the setting was applied."""
    import os
    import platform

    if str(device).split(":")[0] != "cpu" or os.environ.get("SCAN_CPU_ALLOCATOR", "").lower() == "default":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
        return bool(libc.mallopt(M_MMAP_THRESHOLD, _KEEP)) and bool(libc.mallopt(M_TRIM_THRESHOLD, _KEEP))
    except (OSError, AttributeError):  # no mallopt in this process (another allocator): nothing to do
        return False


class torch_threads:
    """``with torch_threads(n) as used:`` torch's intra-op thread count set to ``n`` (None or 0:
    left as it is), restored on exit; ``used`` is the count in force inside."""

    def __init__(self, n: Optional[int]):
        self.n = n

    def __enter__(self):
        import torch

        self.before = torch.get_num_threads()
        if self.n:
            torch.set_num_threads(int(self.n))
        return torch.get_num_threads()

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.before)


def use_channels_last(mode: Optional[str], model) -> bool:
    """--channels-last auto|on|off. auto: on for convolutional backbones (on CPU it roughly halves
    the time of the exit heads' 1x1 convolutions at full resolution; on CUDA it is the fast
    layout), off for ViTs, whose blocks do not see 4-D tensors."""
    mode = (mode or "auto").lower()
    if mode not in ("auto", "on", "off"):
        raise UsageError(f"--channels-last '{mode}': use auto, on or off")
    if mode == "auto":
        return getattr(model.backbone, "family", "") != "vit"
    return mode == "on"

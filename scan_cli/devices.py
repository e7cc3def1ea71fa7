"""Choosing the torch device for --device (one rule for fit, predict and profile)."""

from __future__ import annotations

from typing import Optional

from .errors import ScanError, UsageError


def resolve_device(device: Optional[str]):
    """'auto' (or None) = cuda when available, else cpu; otherwise the named device, checked."""
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

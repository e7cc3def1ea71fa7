"""Where torch runs: the --device rule (one for fit, predict and profile), the thread count and the memory layout."""

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

"""What an exit costs, measured: wall time per exit vs the plain backbone, and the real cascade.

``measure_latency`` times, on random inputs, the network run up to and including each exit (what
an image leaving there costs) against the plain timm model, interleaved so a busy neighbour slows
all of them alike. ``measure_cascade`` times the real early exit (``ScanModel.early_exit``) over
preloaded validation batches (``data.validation_batches``) against the plain backbone.

Used by ``scan profile``. Imports torch only inside functions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

from ..devices import resolve_device, torch_threads
from ..errors import ScanError


def plain_backbone(model):
    """The timm model's own forward (``model.backbone.model``), else the staged backbone."""
    return getattr(model.backbone, "model", model.backbone)


def run_to_exit(model, k: int, x):
    """What an image leaving at exit ``k`` costs: stem, sections 0..k, and exits 0..k."""
    h = model.stem(x)
    out = None
    for j in range(k + 1):
        h = model.section(j, h)
        out = model.exit_logits(j, h)
    return out


@dataclass
class Timing:
    batch_size: int
    p50_ms: float
    p95_ms: float
    n: int  # timed iterations

    @property
    def per_image_ms(self) -> float:
        return self.p50_ms / self.batch_size

    def to_dict(self) -> dict:
        return {**asdict(self), "per_image_ms": self.per_image_ms}


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


@dataclass
class LatencyReport:
    device: str
    threads: int
    warmup: int
    iters: int
    batch_sizes: list[int]
    backbone: dict[int, Timing]  # batch size -> the plain timm model
    exits: list[dict[int, Timing]]  # per exit: batch size -> running up to and including that exit
    layout: str = "NCHW"  # memory layout of the inputs and of every model timed (the plain one too)

    def ratio(self, k: int, batch_size: int) -> float:
        """Exit ``k``'s p50 latency over the plain backbone's, same batch size and run."""
        return self.exits[k][batch_size].p50_ms / self.backbone[batch_size].p50_ms

    def exit_dict(self, k: int) -> dict:
        return {"latency_ms": {str(b): t.to_dict() for b, t in self.exits[k].items()},
                "latency_ratio": {str(b): self.ratio(k, b) for b in self.exits[k]}}

    def to_dict(self) -> dict:
        return {"device": self.device, "threads": self.threads, "warmup": self.warmup, "iters": self.iters,
                "batch_sizes": self.batch_sizes, "layout": self.layout,
                "backbone": {str(b): t.to_dict() for b, t in self.backbone.items()},
                "exits": [self.exit_dict(k) for k in range(len(self.exits))]}



def measure_latency(model, input_size: int, *, batch_sizes: Sequence[int] = (1, 32), device: str = "auto",
                    threads: Optional[int] = None, warmup: int = 3, iters: int = 20,
                    max_seconds: Optional[float] = None, progress: Optional[Callable[[str], None]] = None,
                    channels_last: bool = False) -> LatencyReport:
    """Measured wall time per exit and for the plain backbone, on random inputs.

    For each batch size: the plain timm model's own forward, and for each exit ``k`` the network run
    up to and including exit ``k`` (stem, sections, every exit on the way): what an image leaving at
    ``k`` costs. Measurements are interleaved (each round times every variant once, in a rotating
    order), so a busy neighbour slows all of them alike and the ratios stay fair. ``warmup`` untimed
    rounds first; ``iters`` timed rounds, or fewer when ``max_seconds`` (per batch size) runs out,
    never fewer than 3. ``threads`` fixes ``torch.set_num_threads`` (default: torch's current,
    restored after); ``device='auto'`` is CUDA when available (synchronised around every call).
    The model is moved to ``device`` and left there."""
    import time

    import torch

    dev = str(resolve_device(device))
    model.to(dev).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)  # the plain backbone is part of the model: both run in the same layout
    plain = plain_backbone(model)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    K = model.num_exits
    variants = [("plain", plain)] + [(k, (lambda t, k=k: run_to_exit(model, k, t))) for k in range(K)]
    backbone_t: dict[int, Timing] = {}
    exit_t: list[dict[int, Timing]] = [dict() for _ in range(K)]
    with torch_threads(threads) as n_threads, torch.inference_mode():
        for b in batch_sizes:
            b = int(b)
            x = torch.randn(b, 3, input_size, input_size, generator=torch.Generator().manual_seed(0)).to(dev, dtype)
            x = x.contiguous(memory_format=fmt)
            if progress:
                progress(f"timing the plain backbone and {K} exits at batch {b} ({warmup} warm-up + up to {iters} rounds)")
            for _ in range(max(0, warmup)):
                for _, fn in variants:
                    fn(x)
            _sync(dev)
            samples: dict = {name: [] for name, _ in variants}
            spent = 0.0
            for i in range(max(1, iters)):
                shift = i % len(variants)
                for name, fn in variants[shift:] + variants[:shift]:
                    start = time.perf_counter()
                    fn(x)
                    _sync(dev)
                    samples[name].append(time.perf_counter() - start)
                    spent += samples[name][-1]
                if max_seconds is not None and spent > max_seconds and i >= 2:
                    break

            def timing(values):
                return Timing(batch_size=b, p50_ms=_percentile(values, 0.5) * 1e3,
                              p95_ms=_percentile(values, 0.95) * 1e3, n=len(values))

            backbone_t[b] = timing(samples["plain"])
            for k in range(K):
                exit_t[k][b] = timing(samples[k])
    return LatencyReport(device=dev, threads=n_threads, warmup=warmup, iters=iters,
                         batch_sizes=[int(b) for b in batch_sizes], backbone=backbone_t, exits=exit_t,
                         layout="NHWC" if channels_last else "NCHW")


# -- the real cascade on validation images ------------------------------------------------------
@dataclass
class CascadeTiming:
    """The real cascade against the plain backbone, model only, on the same pre-decoded images."""

    images: int
    batch_size: int
    repeats: int
    cascade_s: float  # median over repeats of one pass over all images
    backbone_s: float
    measured_speedup: float  # backbone_s / cascade_s: the realised speed-up
    observed_exit_shares: list[float]
    threads: int
    device: str
    layout: str = "NCHW"
    what: str = "model only, pre-decoded validation images"

    @property
    def images_per_second(self) -> float:
        return self.images / self.cascade_s if self.cascade_s > 0 else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "realised_speedup": self.measured_speedup, "images_per_second": self.images_per_second}


def measure_cascade(model, batches, thresholds, *, score: str = "max_softmax", fallback: str = "last",
                    device: str = "auto", threads: Optional[int] = None, warmup: int = 1,
                    repeats: int = 3, channels_last: bool = False) -> CascadeTiming:
    """Wall clock of the real cascade (``model.early_exit``) vs the plain backbone over the same
    preloaded ``batches`` (data loading not timed); the median of ``repeats`` full passes each."""
    import statistics
    import time

    import torch

    dev = str(resolve_device(device))
    model.to(dev).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    plain = plain_backbone(model)
    batches = [b.to(dev).contiguous(memory_format=fmt) for b in batches]
    if not batches:
        raise ScanError("no validation images to time the cascade on")
    counts = torch.zeros(model.num_exits, dtype=torch.long)

    def cascade_pass(record=False):
        for x in batches:
            out = model.early_exit(x, thresholds, score=score, fallback=fallback)
            if record:
                counts.add_(torch.bincount(out.exit_index.cpu(), minlength=model.num_exits))

    def backbone_pass():
        for x in batches:
            plain(x)

    def timed(fn):
        _sync(dev)
        start = time.perf_counter()
        fn()
        _sync(dev)
        return time.perf_counter() - start

    with torch_threads(threads) as n_threads, torch.inference_mode():
        for _ in range(max(0, warmup)):
            model.early_exit(batches[0], thresholds, score=score, fallback=fallback)
            plain(batches[0])
        cascade_pass(record=True)
        c_times, b_times = [], []
        for _ in range(max(1, repeats)):  # interleaved so drift hits both alike
            c_times.append(timed(cascade_pass))
            b_times.append(timed(backbone_pass))
    c, b = statistics.median(c_times), statistics.median(b_times)
    n = int(sum(x.shape[0] for x in batches))
    return CascadeTiming(images=n, batch_size=int(batches[0].shape[0]), repeats=len(c_times), cascade_s=c,
                         backbone_s=b, measured_speedup=b / c, observed_exit_shares=(counts.float() / n).tolist(),
                         threads=n_threads, device=dev, layout="NHWC" if channels_last else "NCHW")


def speed_sentence(realised: float, counted: float, images_per_second: float, how: str) -> str:
    """The one sentence `scan profile` and `scan predict` both use for what early exit bought."""
    share = f" ({100 * realised / counted:.0f} % of the counted one)" if counted else ""
    return (f"realised speed-up {realised:.2f}x vs counted {counted:.2f}x{share}, {images_per_second:.1f} images/s "
            f"({how})")


def compare_with_plain(model, batches, thresholds, *, score: str = "max_softmax", fallback: str = "last",
                       repeats: int = 3) -> dict:
    """Model-only wall time of the real cascade and of the plain backbone over the same prepared
    ``batches`` (already on their device and in their layout), interleaved, best of ``repeats``."""
    import time

    import torch

    plain = plain_backbone(model)
    dev = str(batches[0].device) if batches else "cpu"

    def timed(fn):
        _sync(dev)
        start = time.perf_counter()
        with torch.inference_mode():
            for x in batches:
                fn(x)
        _sync(dev)
        return time.perf_counter() - start

    cascade_t, plain_t = [], []
    for _ in range(max(1, repeats)):
        cascade_t.append(timed(lambda x: model.early_exit(x, thresholds, score, fallback)))
        plain_t.append(timed(plain))
    c, b = min(cascade_t), min(plain_t)
    n = int(sum(x.shape[0] for x in batches))
    return {"what": "model only, this call's decoded batches", "images": n, "repeats": max(1, repeats),
            "cascade_s": c, "plain_s": b, "realised_speedup": b / c if c > 0 else None,
            "images_per_second": n / c if c > 0 else None}

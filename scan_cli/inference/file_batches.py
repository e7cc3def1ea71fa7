"""Image files -> batches for `scan predict`, decoded ahead of the model and assembled without copies.

When the eval transform is PIL steps that end at a fixed size followed by to-tensor and normalize
(`data.transforms.batch_preprocessing`; the run's own eval transform always is, and
`torch_engine.run_steps` works its steps out from the run's data config without building it, i.e.
without timm or torchvision, as `inference/preprocess.py` does for exports), each file is
decoded (JPEG draft mode for big photos, `images.open_rgb`), resized and cropped in PIL, and its
uint8 pixels are written straight into their row of a preallocated uint8 batch laid out
[N, H, W, 3] (pinned when the model is on CUDA). The batch goes to the device as uint8 (a quarter
of the float bytes) and is normalised there once per batch (`to_model_input`): x / 255, then
(x - mean) / std, the same float32 operations as torchvision's ToTensor + Normalize, so the
tensors are bit for bit those of the per-image transform. The [N, H, W, 3] buffer seen as
[N, 3, H, W] is already the channels-last layout, so no layout conversion is needed either.

Decoding overlaps the model: with ``workers=0`` a background thread decodes the next batch into
the other of two buffers while the model runs this one (PIL releases the GIL while it decodes and
resizes); with ``workers > 0``, DataLoader worker processes decode, each writing its batch into
shared memory, ``prefetch_factor`` batches ahead.

Any other transform takes the plain path: a DataLoader over `images.ImageFiles` (float tensors per
image, stacked). Every failure is an error row, never an exception. torch is imported inside functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple, Optional


class BatchSteps(NamedTuple):
    """What the uint8 path runs: ``pil`` (an RGB PIL image -> the (H, W) = ``size`` image), then
    ``(x / 255 - mean) / std`` on the device; ``draft``: the JPEG draft size (None: full decode)."""

    pil: Callable
    size: tuple
    mean: tuple
    std: tuple
    draft: Optional[tuple] = None


def steps_of(transform) -> Optional[BatchSteps]:
    """``transform`` split for the uint8 path (``data.transforms.batch_preprocessing``), or None."""
    from ..data.images import draft_size
    from ..data.transforms import batch_preprocessing

    split = batch_preprocessing(transform)
    return BatchSteps(*split, draft=draft_size(transform)) if split is not None else None


class ImageArrays:
    """Map-style dataset for worker processes: item i -> (i, uint8 array [H, W, 3], None), or
    (i, None, error) for a file that cannot be read (nothing is raised)."""

    def __init__(self, paths, pil_transform, size, draft=None):
        self.paths = [Path(p) for p in paths]
        self.pil_transform = pil_transform
        self.size = tuple(size)
        self.draft = draft

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        array, error = decode_array(self.paths[index], self.pil_transform, self.size, self.draft)
        return index, array, error


def decode_array(path, pil_transform, size, draft=None):
    """(uint8 array [H, W, 3], None) for one file after the PIL steps, or (None, error string)."""
    import numpy as np

    from ..data.images import describe_error, open_rgb

    try:
        img = open_rgb(path, draft=draft)
    except Exception as exc:  # noqa: BLE001 - every decoding failure becomes a reported error
        return None, describe_error(exc)
    try:
        img = pil_transform(img)
        array = np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001
        return None, f"transform failed: {describe_error(exc)}"
    if array.shape != (size[0], size[1], 3):
        return None, f"transform failed: gave {array.shape[1]} x {array.shape[0]} pixels, not {size[1]} x {size[0]}"
    return array, None


def collate_arrays(batch):
    """ImageArrays items -> (indices, uint8 tensor [n, H, W, 3] or None, [(index, error)]); in a
    worker process the tensor is allocated in shared memory, so it reaches the main process uncopied."""
    import torch
    from torch.utils.data import get_worker_info

    good = [(i, a) for i, a, e in batch if e is None]
    errors = [(int(i), e or "no image") for i, a, e in batch if e is not None]
    if not good:
        return [], None, errors
    h, w, c = good[0][1].shape
    out = torch.empty((len(good), h, w, c), dtype=torch.uint8)
    if get_worker_info() is not None:
        out.share_memory_()
    rows = out.numpy()
    for row, (_, array) in enumerate(good):
        rows[row] = array
    return [int(i) for i, _ in good], out, errors


def to_model_input(batch, mean, std, device, layout):
    """A uint8 [n, H, W, 3] batch -> the normalised float32 [n, 3, H, W] model input on `device`,
    in `layout` (torch.channels_last is free: it is the buffer's own layout)."""
    import torch

    x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2)
    x = x.to(torch.float32).div_(255).sub_(mean).div_(std)
    return x.contiguous(memory_format=layout)


def uint8_batches(paths, pil_transform, size, *, batch_size, workers, pin, draft=None, prefetch=True):
    """Yield (indices, uint8 tensor [n, H, W, 3] or None, [(index, error)]) per batch of `paths`,
    in order, decoded ahead of the consumer (see the module notes; prefetch=False: in turn)."""
    if workers > 0:
        from torch.utils.data import DataLoader

        loader = DataLoader(ImageArrays(paths, pil_transform, size, draft), batch_size=batch_size, shuffle=False,
                            num_workers=workers, collate_fn=collate_arrays, pin_memory=pin)
        yield from loader
        return
    yield from _threaded_batches(paths, pil_transform, size, batch_size, pin, draft, prefetch)


def _threaded_batches(paths, pil_transform, size, batch_size, pin, draft, prefetch=True):
    """One background thread fills one of two preallocated buffers while the caller uses the other.
    A buffer is refilled only after the caller asked for the next batch, i.e. finished with it."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    starts = list(range(0, len(paths), batch_size))
    if not starts:
        return
    h, w = size
    buffers = [torch.empty((min(batch_size, len(paths)), h, w, 3), dtype=torch.uint8, pin_memory=pin)
               for _ in range(min(2, len(starts)))]

    def fill(start, buffer):
        rows = buffer.numpy()
        indices, errors = [], []
        for index in range(start, min(start + batch_size, len(paths))):
            array, error = decode_array(paths[index], pil_transform, size, draft)
            if error is not None:
                errors.append((index, error))
                continue
            rows[len(indices)] = array
            indices.append(index)
        return indices, (buffer[:len(indices)] if indices else None), errors

    if not prefetch:
        for j, start in enumerate(starts):
            yield fill(start, buffers[0])
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-decode")
    try:
        pending = pool.submit(fill, starts[0], buffers[0])
        for j in range(len(starts)):
            batch = pending.result()
            if j + 1 < len(starts):
                pending = pool.submit(fill, starts[j + 1], buffers[(j + 1) % len(buffers)])
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

"""An export's preprocessing in numpy + Pillow, from its manifest alone: no torch, timm or torchvision.

``Preprocessing`` reads ``manifest["input"]["preprocessing"]`` (written by ``export.describe_transform``
from the run's eval transform) and reproduces that transform step for step, with torchvision's own
rounding: RGB, resize (the shorter side to ``resize_shorter_side``, the longer one truncated as
``int(s * long / short)``, no resize when the size is already right; or to ``resize`` [h, w]) with
Pillow's filter, center crop (zero padding where the crop is larger, offsets ``round((h - ch) / 2)``),
then ``x / divide_by``, ``- mean``, ``/ std`` in float32, the operations ToTensor + Normalize do, so
the model input is bit for bit the torch engine's (tests/test_preprocess.py checks it).

``batches`` is the torch engine's uint8 batch pipeline (``file_batches``) without torch: each file
decoded (JPEG draft mode, ``images.open_rgb``) and cropped by Pillow into its row of a preallocated
uint8 [N, H, W, 3] batch, the next batch decoded by ``threads`` background threads while the caller
runs this one (Pillow releases the GIL while it decodes and resizes); ``normalize`` makes the float32
NCHW input once per batch. Failures are error rows, never exceptions.
"""

from __future__ import annotations

from ..errors import ScanError

# Pillow's filter for each torchvision InterpolationMode value (torchvision's pil_modes_mapping)
FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


class Preprocessing:
    """The eval transform a manifest describes: ``pil(img)`` (geometry, uint8 [H, W, 3] as PIL) and
    ``normalize(batch)`` (uint8 [n, H, W, 3] -> float32 [n, 3, H, W])."""

    def __init__(self, description: dict, input_shape=None):
        import numpy as np

        d = dict(description or {})
        try:
            if d.get("color", "RGB") != "RGB":
                raise ValueError(f"color {d.get('color')!r}")
            self.shorter = int(d["resize_shorter_side"]) if d.get("resize_shorter_side") is not None else None
            self.resize = tuple(int(v) for v in d["resize"]) if d.get("resize") is not None else None
            name = str(d.get("interpolation") or "bilinear").lower()
            if (self.shorter or self.resize) and name not in FILTERS:
                raise ValueError(f"interpolation {name!r} (known: {', '.join(FILTERS)})")
            self.filter = FILTERS.get(name, 2)
            self.crop = tuple(int(v) for v in d["center_crop"]) if d.get("center_crop") is not None else None
            size = self.crop or self.resize or (tuple(int(v) for v in input_shape[-2:]) if input_shape else None)
            if size is None:
                raise ValueError("no fixed size (neither center_crop nor resize)")
            self.size = size
            self.divide_by = np.float32(d.get("divide_by", 255))
            self.mean = np.asarray(d.get("mean", (0.0, 0.0, 0.0)), dtype=np.float32).reshape(1, -1, 1, 1)
            self.std = np.asarray(d.get("std", (1.0, 1.0, 1.0)), dtype=np.float32).reshape(1, -1, 1, 1)
        except (KeyError, TypeError, ValueError) as exc:
            raise ScanError(f"the manifest's input.preprocessing cannot be reproduced ({exc}): "
                            "export again with 'scan export'") from None
        # JPEG draft mode may shrink the decode while both sides stay at least this big (images.draft_size)
        self.draft = ((self.shorter, self.shorter) if self.shorter else
                      (self.resize[1], self.resize[0]) if self.resize else None)

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Preprocessing":
        inp = manifest.get("input") or {}
        return cls(inp.get("preprocessing"), inp.get("shape"))

    def pil(self, img):
        """Resize and center-crop an RGB PIL image as torchvision's Resize + CenterCrop do."""
        w, h = img.size
        if self.shorter:
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.shorter, int(self.shorter * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        elif self.resize:
            new_h, new_w = self.resize
        else:
            new_w, new_h = w, h
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), self.filter)
        if self.crop:
            img = _center_crop(img, self.crop)
        return img

    def normalize(self, batch):
        """uint8 [n, H, W, 3] -> float32 [n, 3, H, W]: x / divide_by, - mean, / std (float32 throughout)."""
        import numpy as np

        out = np.empty((batch.shape[0], 3) + tuple(batch.shape[1:3]), dtype=np.float32)
        np.divide(batch.transpose(0, 3, 1, 2), self.divide_by, out=out, dtype=np.float32)
        out -= self.mean
        out /= self.std
        return out

    def __call__(self, img):
        """One RGB PIL image -> float32 [3, H, W] (for callers without batches)."""
        import numpy as np

        return self.normalize(np.asarray(self.pil(img), dtype=np.uint8)[None])[0]


def _center_crop(img, crop):
    ch, cw = crop
    w, h = img.size
    if cw > w or ch > h:  # torchvision pads with zeros first: left/top get the smaller half
        from PIL import Image

        left, top = (cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0
        right, bottom = (cw - w + 1) // 2 if cw > w else 0, (ch - h + 1) // 2 if ch > h else 0
        canvas = Image.new(img.mode, (w + left + right, h + top + bottom), 0)
        canvas.paste(img, (left, top))
        img, (w, h) = canvas, canvas.size
        if (w, h) == (cw, ch):
            return img
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return img.crop((left, top, left + cw, top + ch))


def batches(paths, pre: Preprocessing, batch_size: int, threads: int = 1, prefetch: bool = True):
    """Yield (indices, uint8 array [n, H, W, 3] or None, [(index, error)]) per batch of ``paths``, in
    order. Two preallocated buffers: ``threads`` threads fill one with the next batch while the caller
    uses the other, which is refilled only once the caller asks for the batch after it."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from .file_batches import decode_array

    starts = list(range(0, len(paths), batch_size))
    if not starts:
        return
    h, w = pre.size
    buffers = [np.empty((min(batch_size, len(paths)), h, w, 3), dtype=np.uint8) for _ in range(min(2, len(starts)))]

    def decode_into(buffer, row, path):
        array, error = decode_array(path, pre.pil, (h, w), pre.draft)
        if error is None:
            buffer[row] = array
        return error

    def submit(pool, j):
        buffer, start = buffers[j % len(buffers)], starts[j]
        return [pool.submit(decode_into, buffer, i - start, paths[i]) for i in range(start, min(start + batch_size, len(paths)))]

    def collect(j, futures):
        buffer, start = buffers[j % len(buffers)], starts[j]
        indices, errors = [], []
        for row, future in enumerate(futures):
            error = future.result()
            if error is not None:
                errors.append((start + row, error))
                continue
            if len(indices) != row:  # close the gap an unreadable file left
                buffer[len(indices)] = buffer[row]
            indices.append(start + row)
        return indices, (buffer[:len(indices)] if indices else None), errors

    pool = ThreadPoolExecutor(max_workers=max(1, int(threads)), thread_name_prefix="scan-decode")
    try:
        if not prefetch:
            for j in range(len(starts)):
                yield collect(j, submit(pool, j))
            return
        pending = submit(pool, 0)
        for j in range(len(starts)):
            batch = collect(j, pending)
            if j + 1 < len(starts):
                pending = submit(pool, j + 1)
            yield batch
    finally:  # a caller that stops early (an error, Ctrl-C) waits for no more than the running decodes
        pool.shutdown(wait=True, cancel_futures=True)

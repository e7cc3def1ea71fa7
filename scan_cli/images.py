"""Finding and decoding image files, for `scan predict` (and the image-folder data source).

Decoding never trusts a file: `open_rgb` fully decodes it (`img.load()`, so a truncated file is an
error; PIL's LOAD_TRUNCATED_IMAGES is left off) and returns a 3-channel RGB image whatever the
file's mode (grayscale, RGBA, palette, 16-bit). `ImageFiles` turns every failure into an error
string instead of an exception, so one bad file never stops a DataLoader.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from .errors import ScanError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

_GLOB_CHARS = ("*", "?", "[")


def is_image_file(path) -> bool:
    """True when the file name ends with one of IMAGE_EXTENSIONS (case-insensitive)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def to_rgb(img):
    """Any PIL image as mode RGB: grayscale is replicated, alpha dropped, palettes expanded,
    16-bit / 32-bit / float images rescaled to 0..255 by their maximum."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() if arr.size else 0.0
        if top > 255:
            arr = arr * (255.0 / top)
        from PIL import Image

        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's palette-transparency warning
    return img.convert("RGB")


def open_rgb(source):
    """Decode `source` (a path, bytes, or a binary file object) completely into an RGB PIL image.

    Raises on anything that is not a complete, decodable image (PIL.UnidentifiedImageError,
    OSError for truncated data, ...). For multi-frame files (GIF, TIFF) the first frame is used.
    """
    import io

    from PIL import Image

    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    with Image.open(source) as img:
        img.load()  # full decode: truncated data raises here
        return to_rgb(img)


def describe_error(exc: BaseException) -> str:
    """One line for a decoding failure: 'not an image', 'truncated image', or the exception."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image (cannot identify image file)"
    msg = str(exc).splitlines()[0] if str(exc) else ""
    if "truncated" in msg.lower():
        return f"truncated image ({msg})"
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def walk_images(folder: Path, seen: dict | None = None, duplicates: list | None = None) -> list[Path]:
    """Image files under `folder`, recursively, in sorted order; hidden entries are skipped.

    Symbolic links are followed, but never into a loop: a link to a folder already walked, or to
    the folder it sits in or one of its ancestors, is not entered. A file reached twice (through a
    link, or a link to a file listed already) is listed once, under the first path that reached
    it: `seen` maps the real paths listed so far to the path listed (pass one dict to share it
    between calls) and `duplicates` (a list) receives (path, first path) for each one left out."""
    found = []
    seen = {} if seen is None else seen
    walked: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in walked:  # reached again through a link: already listed
            dirnames[:] = []
            continue
        walked.add(real)
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            target = os.path.realpath(os.path.join(dirpath, d))
            if target in walked or real == target or real.startswith(target.rstrip(os.sep) + os.sep):
                continue  # a loop (the folder itself or an ancestor) or a folder walked already
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            if name.startswith(".") or not is_image_file(name):
                continue
            path = Path(dirpath) / name
            key = os.path.realpath(path)
            if key in seen:
                if duplicates is not None:
                    duplicates.append((path, seen[key]))
                continue
            seen[key] = path
            found.append(path)
    return found


def find_images(inputs: list[str]) -> list[Path]:
    """Image files named by `inputs`, de-duplicated, in a stable order.

    Each input is an existing file (taken as is, whatever its extension: decoding decides),
    a folder (searched recursively for IMAGE_EXTENSIONS, sorted), or a glob pattern (`*`, `?`,
    `[...]`, and `**` for any depth; matched files are filtered by extension, matched folders are
    searched). Results keep the order of `inputs`; a file reached twice is listed once.
    Raises ScanError naming every input that matched nothing.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    result: list[Path] = []
    seen: set[str] = set()
    empty: list[str] = []

    def add(path: Path) -> bool:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            result.append(path)
        return True

    for raw in inputs:
        text = os.path.expanduser(str(raw))
        path = Path(text)
        matched = False
        if path.is_file():
            matched = add(path)
        elif path.is_dir():
            for p in walk_images(path):
                matched = add(p)
        elif any(c in text for c in _GLOB_CHARS):
            for hit in sorted(glob.glob(text, recursive=True)):
                hp = Path(hit)
                if hp.is_dir():
                    for p in walk_images(hp):
                        matched = add(p)
                elif hp.is_file() and is_image_file(hp):
                    matched = add(hp)
        if not matched:
            empty.append(str(raw))
    if empty:
        names = ", ".join(f"'{e}'" for e in empty)
        missing = [e for e in empty if not any(c in e for c in _GLOB_CHARS) and not Path(os.path.expanduser(e)).exists()]
        if missing and len(missing) == len(empty):
            raise ScanError(f"no such file or folder: {names}: check the path(s)")
        raise ScanError(
            f"no images found in {names} (looked for {' '.join(IMAGE_EXTENSIONS)}): "
            "pass image files, folders of images or glob patterns"
        )
    return result


def _default_transform(img):
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(img).float().div_(255.0)


class ImageFiles:
    """Map-style dataset over image paths for prediction.

    item i -> (i, tensor, None) when the file decodes and transforms, or (i, None, error) when it
    does not (unreadable, truncated, not an image, transform failure): nothing is ever raised.
    `transform` maps an RGB PIL image to a tensor (default: float tensor in [0, 1], no resizing).
    A plain class rather than a torch.utils.data.Dataset subclass so that importing this module
    does not import torch; torch's DataLoader only needs __len__ and __getitem__. Pair it with
    `collate_images`.
    """

    def __init__(self, paths, transform=None):
        self.paths = [Path(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            img = open_rgb(path)
        except Exception as exc:  # noqa: BLE001 - every decoding failure becomes a reported error
            return index, None, describe_error(exc)
        try:
            tensor = (self.transform or _default_transform)(img)
        except Exception as exc:  # noqa: BLE001
            return index, None, f"transform failed: {describe_error(exc)}"
        return index, tensor, None


def collate_images(batch):
    """Collate ImageFiles items into (indices, images, errors).

    indices: list[int], the dataset indices of the good images, aligned with the rows of
    `images` (a stacked [N, C, H, W] tensor, or None when no image of the batch decoded);
    errors: [(index, error string)] for the items that failed.
    """
    import torch

    indices, tensors, errors = [], [], []
    for index, tensor, error in batch:
        if error is not None or tensor is None:
            errors.append((int(index), error or "no image"))
        else:
            indices.append(int(index))
            tensors.append(tensor)
    images = torch.stack(tensors) if tensors else None
    return indices, images, errors

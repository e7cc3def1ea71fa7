"""Finding and decoding image files, for `scan predict` (and the image-folder data source).

Decoding never trusts a file: `open_rgb` fully decodes it (`img.load()`, so a truncated file is an
error; PIL's LOAD_TRUNCATED_IMAGES is left off) and returns a 3-channel RGB image whatever the
file's mode (grayscale, RGBA, palette, 16-bit). `ImageFiles` turns every failure into an error
string instead of an exception, so one bad file never stops a DataLoader.

Huge images: a file whose header declares more than `max_image_pixels()` pixels (default 2**26,
8192 x 8192; `SCAN_MAX_IMAGE_PIXELS` changes it, 0 turns scan's limit off) is refused before it is
decoded (`ImageTooLarge`), instead of being decoded whole (PIL only warns up to twice its own
limit, about 0.5 GB per image and per worker). While scan's limit is on it replaces PIL's
decompression-bomb check (`PIL.Image.MAX_IMAGE_PIXELS` is set to None), so the message is the
same whatever the size. JPEG draft mode: `open_rgb(..., draft=(w, h))` lets the JPEG decoder scale
by 1/2, 1/4 or 1/8 in the DCT while the result stays at least w x h (`draft_size(transform)`
gives that size for transforms that resize first), so a big photo bound for a small input costs a
fraction of a full decode.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ScanError, UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

_GLOB_CHARS = ("*", "?", "[")

DEFAULT_MAX_IMAGE_PIXELS = 2**26  # 8192 x 8192: 192 MiB as RGB
PIXEL_LIMIT_VARIABLE = "SCAN_MAX_IMAGE_PIXELS"


class ImageTooLarge(ValueError):
    """A file declares more pixels than `max_image_pixels()`: refused before decoding."""


def max_image_pixels() -> int:
    """The pixel limit: $SCAN_MAX_IMAGE_PIXELS, else DEFAULT_MAX_IMAGE_PIXELS; 0 = no limit of scan's own."""

    text = os.environ.get(PIXEL_LIMIT_VARIABLE, "").strip().replace("_", "")
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise UsageError(f"{PIXEL_LIMIT_VARIABLE}={os.environ[PIXEL_LIMIT_VARIABLE]!r}: give a whole number of pixels "
                         f"(default {DEFAULT_MAX_IMAGE_PIXELS}; 0 = no limit)")
    return value


def check_size(img) -> None:
    """Raise ImageTooLarge when an opened (not yet decoded) image declares too many pixels."""
    limit = max_image_pixels()
    width, height = img.size
    if limit and width * height > limit:
        raise ImageTooLarge(f"image too large ({width} x {height} = {width * height:,} pixels, over the limit of "
                            f"{limit:,}): set {PIXEL_LIMIT_VARIABLE} to allow it")


def _pil_image():
    """PIL.Image, with PIL's own decompression-bomb check replaced by scan's while scan's limit is on."""
    from PIL import Image

    if max_image_pixels():
        Image.MAX_IMAGE_PIXELS = None
    return Image


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


def open_rgb(source, draft=None):
    """Decode `source` (a path, bytes, or a binary file object) completely into an RGB PIL image.

    Raises on anything that is not a complete, decodable image (PIL.UnidentifiedImageError,
    OSError for truncated data, ImageTooLarge over the pixel limit, ...). For multi-frame files
    (GIF, TIFF) the first frame is used. draft=(w, h): a JPEG may be decoded at 1/2, 1/4 or 1/8
    of its size as long as the result is still at least w x h (other formats decode whole).
    """
    import io

    Image = _pil_image()
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    with Image.open(source) as img:
        check_size(img)
        if draft is not None and img.format == "JPEG":
            img.draft(img.mode, (int(draft[0]), int(draft[1])))
        img.load()  # full decode: truncated data raises here
        return to_rgb(img)


def draft_size(transform):
    """(w, h) the decoded image must at least have for `transform`, when its first geometric step
    is a resize (the eval transform, pad-and-crop); None otherwise (a random-resized crop may zoom
    in, so it gets full resolution). Colour-mode steps before the resize are allowed."""
    steps = getattr(transform, "transforms", None)
    if not isinstance(steps, (list, tuple)):
        return None
    for step in steps:
        name = type(step).__name__
        if name in ("EnsureRGB", "Grayscale", "ConvertImageDtype"):
            continue
        if name == "Resize":
            size = step.size
            if isinstance(size, int):
                return (size, size)  # the shorter side becomes `size`: both sides must reach it
            if isinstance(size, (list, tuple)) and len(size) == 1:
                return (int(size[0]), int(size[0]))
            if isinstance(size, (list, tuple)) and len(size) == 2:
                return (int(size[1]), int(size[0]))  # torchvision sizes are (h, w)
        return None
    return None


def describe_error(exc: BaseException) -> str:
    """One line for a decoding failure: 'not an image', 'truncated image', or the exception."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image (cannot identify image file)"
    if isinstance(exc, ImageTooLarge):
        return str(exc)
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
    return list(iter_images(folder, seen, duplicates))


def has_images(folder: Path) -> bool:
    """Whether `walk_images(folder)` would list anything; stops at the first image (a cheap check)."""
    return next(iter_images(folder), None) is not None


def walk_folders(folder, hidden: bool = False):
    """`os.walk(folder, followlinks=True)`, sorted, that never follows a link into a loop: a link to a
    folder already walked, or to the folder it sits in or one of its ancestors, is not entered (the
    one rule for folders and globs). Hidden folders are skipped unless `hidden`."""
    walked: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in walked:  # reached again through a link: already listed
            dirnames[:] = []
            continue
        walked.add(real)
        keep = []
        for d in sorted(dirnames):
            if d.startswith(".") and not hidden:
                continue
            target = os.path.realpath(os.path.join(dirpath, d))
            if target in walked or real == target or real.startswith(target.rstrip(os.sep) + os.sep):
                continue  # a loop (the folder itself or an ancestor) or a folder walked already
            keep.append(d)
        dirnames[:] = keep
        yield dirpath, dirnames, sorted(filenames)


def glob_paths(pattern: str) -> list[Path]:
    """`glob.glob(pattern, recursive=True)`, sorted, walked by `walk_folders` so a link loop is never
    followed (a plain recursive glob lists d/a/a/a/... and, with two loops, never ends). `*`, `?`,
    `[...]` match within one name, `**` any number of folders; hidden names only match a part that
    starts with a dot, as in glob."""
    import fnmatch
    import re

    parts = Path(os.path.expanduser(pattern)).parts
    first = next((i for i, p in enumerate(parts) if any(c in p for c in _GLOB_CHARS)), len(parts))
    root, rest = Path(*parts[:first]) if first else Path("."), parts[first:]
    if not rest:
        return [root] if root.exists() else []
    regexes = [None if p == "**" else re.compile(fnmatch.translate(p)) for p in rest]
    deepest = None if None in regexes else len(rest) - 1  # no `**`: folders deeper than this cannot match

    def matches(names, i=0, j=0) -> bool:
        if j == len(regexes):
            return i == len(names)
        if regexes[j] is None:  # `**`: zero or more names, none hidden
            return matches(names, i, j + 1) or (i < len(names) and not names[i].startswith(".")
                                                and matches(names, i + 1, j))
        return (i < len(names) and (not names[i].startswith(".") or rest[j].startswith("."))
                and regexes[j].match(names[i]) is not None and matches(names, i + 1, j + 1))

    hits = []
    hidden = any(p.startswith(".") for p in rest)
    for dirpath, dirnames, filenames in walk_folders(root, hidden=hidden) if root.is_dir() else ():
        rel = Path(os.path.relpath(dirpath, root)).parts if dirpath != str(root) else ()
        rel = tuple(p for p in rel if p != ".")
        hits += [root / Path(*rel, n) for n in (*dirnames, *filenames) if matches((*rel, n))]
        if deepest is not None and len(rel) >= deepest:
            dirnames[:] = []
    if root.is_dir() and first and matches(()):  # `d/**` matches d itself, as in glob
        hits.append(root)
    return sorted(set(hits), key=str)


def iter_images(folder: Path, seen: dict | None = None, duplicates: list | None = None):
    """`walk_images` one path at a time."""
    seen = {} if seen is None else seen
    for dirpath, dirnames, filenames in walk_folders(folder):
        for name in filenames:
            if name.startswith(".") or not is_image_file(name):
                continue
            path = Path(dirpath) / name
            key = os.path.realpath(path)
            if key in seen:
                if duplicates is not None:
                    duplicates.append((path, seen[key]))
                continue
            seen[key] = path
            yield path


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
            for hit in glob_paths(text):
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
    from ..backbones.heavy import load_torchvision

    load_torchvision()
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

    def __init__(self, paths, transform=None, draft="auto"):
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.draft = draft_size(transform) if draft == "auto" else draft  # JPEG draft mode for big photos

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            img = open_rgb(path, draft=self.draft)
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

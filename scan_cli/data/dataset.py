"""What a source returns (`DataSplits`), and map-style datasets of (image, label) that decode
lazily and survive undecodable images.

Damage only full decoding finds (a truncated JPEG), images over the pixel limit
(`images.max_image_pixels`) and damaged rows in `datasets` sources (not checked up front: that
would mean decoding the whole set) are handled when read: the dataset returns a `Skipped` marker
for the item instead of an image, and the loaders of `loader.py` leave it out of its batch, count
it (`SkippedImages`, once per image) and name it in a warning. The item is never replaced by
another one (which then counted twice, with its own label), and the other items of the batch keep
their order, so a training batch is its sampler's indices minus the bad ones. Image folders are
also checked when indexed (see `folder.py`); what that check leaves out is counted in
`DataSplits.skipped`.

Large JPEGs are decoded in draft mode when the transform resizes first (`images.draft_size`).

Nothing here imports torch at module level: torch's DataLoader only needs __len__ and __getitem__.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from .images import check_size, describe_error, draft_size, open_rgb, to_rgb

log = logging.getLogger(__name__)

MAX_SKIP_EXAMPLES = 5


@dataclass(frozen=True)
class Skipped:
    """What a dataset gives for an item it cannot decode; loaders leave it out and count it."""

    index: int
    name: str
    reason: str


@dataclass
class SkippedImages:
    """Images left out because they could not be decoded: how many (each image once, however
    often it is read) and a few (path, reason)."""

    count: int = 0
    examples: list = field(default_factory=list)
    _names: set = field(default_factory=set, repr=False, compare=False)

    def add(self, path, reason: str) -> bool:
        """Count `path` unless it was counted already; True when it is new."""
        if str(path) in self._names:
            return False
        self._names.add(str(path))
        self.count += 1
        if len(self.examples) < MAX_SKIP_EXAMPLES:
            self.examples.append((str(path), reason))
        return True

    def to_dict(self) -> dict:
        return {"count": self.count, "examples": [list(e) for e in self.examples]}

    def update(self, other: dict) -> None:
        """Add what `to_dict()` gave (e.g. read back from a cache)."""
        for path, reason in (other or {}).get("examples", []):
            self.add(path, reason)
        self.count += max(0, int((other or {}).get("count", 0)) - len((other or {}).get("examples", [])))

    def __bool__(self) -> bool:
        return self.count > 0

    def summary(self) -> str:
        """One line, e.g. "skipped 2 undecodable images (e.g. a/b.jpg: truncated image)"."""
        if not self.count:
            return "no undecodable images"
        first = "; ".join(f"{p}: {r}" for p, r in self.examples[:2])
        noun = "image" if self.count == 1 else "images"
        return f"skipped {self.count} undecodable {noun} (e.g. {first})"


@dataclass
class DataSplits:
    """What `load_data` returns.

    train / val / test: datasets of (image tensor [3, H, W], label int); None for a split not
    asked for in `splits` (and `test` when the source has no labelled test split).
    split_sizes: number of examples per built split; None as a value for a streamed split.
    skipped: undecodable images left out at load time (image folders; see `folder.py`).
    val_from_train: True when validation was held out of the training data.
    val_rule: where validation came from: {"from": "train", "rule", "key", "fraction", "seed"} when
    held out of train (`holdout.py`), {"from": "own split", "name"} or {"from": "fixed split"} (digits).
    image_column / label_column: the columns read (`datasets` sources), else None.
    root: where the data is, absolute (a path) or as named (a Hub id); set by `load_data`.
    val_digest: the digest of the validation membership used, once rebuilt from a run's record.
    data_config: the timm data config the transforms used (img_size and source tweaks applied).
    """

    train: object
    val: object
    test: object
    classes: list
    source: str
    split_sizes: dict
    skipped: SkippedImages = field(default_factory=SkippedImages)
    val_from_train: bool = False
    streaming: bool = False
    data_config: dict = field(default_factory=dict)
    val_rule: dict = field(default_factory=dict)
    image_column: str | None = None
    label_column: str | None = None
    root: str = ""
    val_digest: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def record(self, save_to=None) -> dict:
        """What decides these splits, for a run to record (`scan fit` stores it as the recipe's
        `data_split`; `splits.run_data` rebuilds the splits from it and checks they still match).
        save_to: the run folder, which then receives the validation membership (`membership.py`,
        `holdout.json`); the record keeps only its digest and sizes, so the header stays small."""
        rec = {"source": self.source, "root": self.root, "streaming": bool(self.streaming),
               "image_column": self.image_column, "label_column": self.label_column, "val": dict(self.val_rule)}
        if save_to is not None:
            from . import membership

            doc = membership.build(self, self.root)
            if doc is not None:
                membership.save(doc, save_to)
                rec["membership"] = {"file": membership.MEMBERSHIP_FILE, "digest": doc["digest"],
                                     "val": len(doc["val"]), "train": doc["train"]["count"]}
        return rec

    @classmethod
    def of(cls, built: dict, *, classes: list, source: str, data_config: dict, streaming: bool = False,
           **extra) -> "DataSplits":
        """The splits a source built ({split: dataset}); sizes counted, None for streamed splits."""
        return cls(
            train=built.get("train"),
            val=built.get("val"),
            test=built.get("test"),
            classes=classes,
            source=source,
            split_sizes={s: None if streaming else len(d) for s, d in built.items()},
            streaming=streaming,
            data_config=data_config,
            **extra,
        )


class _RobustImages:
    """Base for map-style datasets that decode lazily: an item that fails to decode (or is over
    the pixel limit) is returned as a `Skipped` marker, which the loaders leave out and count."""

    def __len__(self) -> int:
        return len(self.labels)

    def _decode(self, i: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def _name(self, i: int) -> str:
        return f"item {i}"

    def __getitem__(self, index: int):
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(index)
        try:
            img = self._decode(index)
        except Exception as exc:  # noqa: BLE001 - a bad image must not kill the DataLoader
            return Skipped(index, self._name(index), describe_error(exc))
        x = self.transform(img) if self.transform is not None else img
        return x, int(self.labels[index])


class ArrayImages(_RobustImages):
    """Images held in a uint8 array [N, H, W] (grayscale) or [N, H, W, 3], with int labels.
    `source_indices`: the rows of the original source these items are (digits: load_digits rows)."""

    def __init__(self, images, labels, transform=None, source_indices=None):
        import numpy as np

        self.images = np.asarray(images)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.source_indices = np.arange(len(self.labels)) if source_indices is None else np.asarray(source_indices)

    def _decode(self, i):
        from PIL import Image

        return to_rgb(Image.fromarray(self.images[i]))  # in memory already: no size check or draft


class FileImages(_RobustImages):
    """Image files with labels: samples = [(path, label)]."""

    def __init__(self, samples, transform=None):
        import numpy as np

        self.paths = [str(p) for p, _ in samples]
        self.labels = np.asarray([int(lab) for _, lab in samples], dtype=np.int64)
        self.transform = transform
        self.draft = draft_size(transform)

    @property
    def samples(self):
        return list(zip(self.paths, self.labels.tolist()))

    def _decode(self, i):
        return open_rgb(self.paths[i], draft=self.draft)

    def _name(self, i):
        return self.paths[i]


class HFImages(_RobustImages):
    """Rows of a map-style `datasets.Dataset` (image column read undecoded, decoded here),
    restricted to `indices`, with labels already mapped to class indices."""

    def __init__(self, hf_dataset, image_column: str, indices, labels, transform=None):
        import numpy as np

        self.hf = hf_dataset
        self.image_column = image_column
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.draft = draft_size(transform)

    def _decode(self, i):
        return value_to_pil(self.hf[int(self.indices[i])][self.image_column], draft=self.draft)

    def _name(self, i):
        return f"row {int(self.indices[i])}"


def value_to_pil(value, draft=None):
    """An image column value (PIL image, {'bytes','path'} dict, bytes, path, or pixel array) as RGB.
    draft: see `images.open_rgb` (JPEG draft mode)."""
    from PIL import Image

    if isinstance(value, Image.Image):
        check_size(value)
        value.load()
        return to_rgb(value)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return open_rgb(value["bytes"], draft=draft)
        if value.get("path"):
            return open_rgb(value["path"], draft=draft)
        raise ValueError("empty image entry (no bytes and no path)")
    if isinstance(value, (bytes, bytearray, memoryview, str, os.PathLike)):
        return open_rgb(value, draft=draft)
    if value is None:
        raise ValueError("missing image")
    import numpy as np

    arr = np.asarray(value)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return to_rgb(Image.fromarray(arr))

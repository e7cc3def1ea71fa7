"""Data sources, splits, transforms and loaders.

`load_data(spec, ...)` turns one `--data` value into train / validation / test datasets whose
items are `(image_tensor [3, H, W] float, label int)`. Sources, tried in this order:

1. `None` or `"digits"`: scikit-learn's `load_digits()` (1797 real 8x8 grayscale digits, 10
   classes, offline). Pixel values 0..16 become uint8 (x16, clipped to 255), then RGB. The split
   is FIXED (stratified, seed 0, whatever `seed` says) so that numbers are comparable across runs:
   **train 1079 / val 359 / test 359** (60 / 20 / 20 %, see DIGITS_SIZES). Use `./digits` to
   mean a local folder of that name.
2. A local folder of images: `root/<class>/...` (validation held out of it), or
   `root/train/<class>/...` with optional `root/val` (or `validation`, `valid`) and `root/test`
   holding the same class sub-folders (the ImageNet layout). Images are found recursively inside
   each class folder; hidden files and folders are skipped.
3. A `datasets` dataset saved with `save_to_disk` (a folder with `dataset_dict.json`, or
   `dataset_info.json` + `state.json`); a `.parquet` / `.arrow` file, a folder of them (splits
   inferred from file names such as `train-*.parquet`, `test-*.parquet`), or a glob of them
   (one train split).
4. Otherwise a Hugging Face Hub dataset id (aliases: DATASET_ALIASES). A missing local path that
   clearly is a path (starts with `.`, `/` or `~`, has two or more `/`, a file suffix or a
   backslash) is reported as such instead of being looked up on the Hub. Without a reachable Hub
   (HF_HUB_OFFLINE=1, or a 3-second connection probe fails) a dataset is only taken from the
   local cache, and a missing one fails at once with one line instead of five retries.

Validation: a source's own validation split when it has one, otherwise `val_fraction` of train,
held out by a seeded, stratified rule (each class gives its share; which examples go is decided
by a hash of `seed` and the example's key, its relative path for folders or its row number for
`datasets`, so it does not depend on numpy's RNG). A test split whose labels are all -1 (the
ImageNet test set) counts as no test split.

Undecodable images. Image folders are checked when indexed: every file is opened and
`verify()`-ed in a thread pool (`check_images=True`); failures are left out, counted in
`DataSplits.skipped` and reported with a warning. Damage only full decoding finds (a truncated
JPEG) and damaged rows in `datasets` sources (not checked up front: that would mean decoding the
whole set) are handled when read: the item is replaced by the next decodable one of the same
dataset (with its own label) and a warning names the file, so a DataLoader never crashes on one
bad image. Streamed examples that do not decode are dropped with a warning.

Streaming (`streaming=True`, Hub ids and parquet/arrow files; map-style sources ignore it): splits
become torch IterableDatasets of unknown length (`split_sizes` value None). Validation held out of
a streamed train set uses the same seeded hash, of the image bytes (or path): an example is
validation when its hash falls in the lowest `val_fraction` of the hash range. Unlike "every k-th
example" this does not depend on the order examples arrive in, or on how the stream is split over
DataLoader workers and DDP ranks, so train and validation never overlap and stay the same across
runs and machine counts. Sharding: `make_loader` hands each DDP rank its part with
`datasets.distributed.split_dataset_by_node` (whole shards when the shard count divides the world
size, else every world_size-th example), and inside a rank `datasets` gives each DataLoader worker
its own shards (workers are capped at the shard count). Every example is read by exactly one
(rank, worker); ranks can differ by a few examples, so a DDP loop must tolerate uneven ends.

Nothing here imports torch, timm, datasets or scikit-learn at module level.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ScanError, UsageError
from .images import IMAGE_EXTENSIONS, describe_error, is_image_file, open_rgb, to_rgb

log = logging.getLogger(__name__)

DATASET_ALIASES = {
    "imagenet": "ILSVRC/imagenet-1k",
    "imagenet-1k": "ILSVRC/imagenet-1k",
    "imagenet1k": "ILSVRC/imagenet-1k",
    "cifar10": "uoft-cs/cifar10",
    "cifar-10": "uoft-cs/cifar10",
    "cifar100": "uoft-cs/cifar100",
    "cifar-100": "uoft-cs/cifar100",
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_DATA_CONFIG = {
    "input_size": (3, 224, 224),
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "interpolation": "bilinear",
    "crop_pct": 0.875,
    "crop_mode": "center",
}
TRAIN_TRANSFORMS = ("rrc", "pad_crop", "none")
SPLITS = ("train", "val", "test")
DIGITS_SIZES = {"train": 1079, "val": 359, "test": 359}

IMAGE_COLUMN_NAMES = ("image", "img", "pixel_values")
LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "target")
VAL_SPLIT_NAMES = ("validation", "valid", "val")
VAL_FOLDER_NAMES = ("val", "validation", "valid")
COLUMNAR_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}
STREAM_SHUFFLE_BUFFER = 10_000
_MAX_SKIP_EXAMPLES = 5
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


# --------------------------------------------------------------------------- results


@dataclass
class SkippedImages:
    """Images left out because they could not be decoded: how many and a few (path, reason)."""

    count: int = 0
    examples: list = field(default_factory=list)

    def add(self, path, reason: str) -> None:
        self.count += 1
        if len(self.examples) < _MAX_SKIP_EXAMPLES:
            self.examples.append((str(path), reason))

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
    skipped: undecodable images left out at load time (image folders; see the module notes).
    val_from_train: True when validation was held out of the training data.
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

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def resolve_alias(name: str) -> str:
    """Hub dataset id for a short name ('imagenet', 'cifar10', 'cifar100'); other names unchanged."""
    return DATASET_ALIASES.get(name.strip().lower(), name.strip())


# --------------------------------------------------------------------------- transforms


def effective_data_config(data_config: dict | None, img_size: int | None = None) -> dict:
    """A full copy of a timm data config: missing keys filled from DEFAULT_DATA_CONFIG and
    `input_size` set to (3, img_size, img_size) when img_size is given."""
    cfg = dict(DEFAULT_DATA_CONFIG)
    cfg.update({k: v for k, v in (data_config or {}).items() if v is not None})
    size = cfg["input_size"]
    if isinstance(size, int):
        size = (3, size, size)
    size = tuple(int(s) for s in size)
    if len(size) == 2:
        size = (3,) + size
    if img_size is not None:
        if int(img_size) < 1:
            raise UsageError(f"image size must be a positive number of pixels, got {img_size}")
        size = (3, int(img_size), int(img_size))
    cfg["input_size"] = size
    cfg["mean"] = tuple(float(m) for m in cfg["mean"])
    cfg["std"] = tuple(float(s) for s in cfg["std"])
    if len(cfg["mean"]) == 1:
        cfg["mean"] = cfg["mean"] * 3
    if len(cfg["std"]) == 1:
        cfg["std"] = cfg["std"] * 3
    return cfg


class EnsureRGB:
    """Transform step: any PIL image -> RGB (a no-op for RGB images; tensors pass through)."""

    def __call__(self, img):
        return to_rgb(img) if hasattr(img, "mode") else img

    def __repr__(self) -> str:
        return "EnsureRGB()"


def _with_rgb(transform):
    steps = getattr(transform, "transforms", None)
    if isinstance(steps, list) and not (steps and isinstance(steps[0], EnsureRGB)):
        steps.insert(0, EnsureRGB())
    return transform


def _interp(name: str):
    from timm.data.transforms import str_to_interp_mode

    if name in (None, "random"):
        name = "bilinear"
    return str_to_interp_mode(name)


def eval_transform(data_config: dict | None, img_size: int | None = None):
    """Deterministic transform: (any PIL mode -> RGB,) resize the shorter side to H / crop_pct, center-crop to H x W,
    to tensor, normalize (timm's create_transform, is_training=False). crop_pct=1.0 means just
    resize (used for digits, where cropping 8x8 images makes no sense)."""
    from timm.data import create_transform

    cfg = effective_data_config(data_config, img_size)
    return _with_rgb(create_transform(
        input_size=cfg["input_size"],
        is_training=False,
        interpolation=cfg["interpolation"] if cfg["interpolation"] != "random" else "bilinear",
        mean=cfg["mean"],
        std=cfg["std"],
        crop_pct=cfg.get("crop_pct"),
        crop_mode=cfg.get("crop_mode") or "center",
    ))


def train_transform(data_config: dict | None, kind: str = "rrc", img_size: int | None = None, hflip: bool = True):
    """Training transform.

    rrc: random-resized-crop (scale 0.08..1) + horizontal flip, no colour jitter or auto-augment
    (timm create_transform, is_training=True). pad_crop: resize to H, random crop H with H//8
    zero padding + flip (the paper's CIFAR recipe). none: the eval transform.
    hflip=False leaves out the flip (digits are not mirror-symmetric).
    """
    cfg = effective_data_config(data_config, img_size)
    kind = (kind or "none").lower()
    if kind == "none":
        return eval_transform(cfg)
    _, h, w = cfg["input_size"]
    if kind == "rrc":
        from timm.data import create_transform

        return _with_rgb(create_transform(
            input_size=cfg["input_size"],
            is_training=True,
            hflip=0.5 if hflip else 0.0,
            color_jitter=None,
            auto_augment=None,
            re_prob=0.0,
            interpolation=cfg["interpolation"] or "bilinear",
            mean=cfg["mean"],
            std=cfg["std"],
        ))
    if kind == "pad_crop":
        from torchvision import transforms as T

        steps = [
            EnsureRGB(),
            T.Resize((h, w), interpolation=_interp(cfg["interpolation"])),
            T.RandomCrop((h, w), padding=max(h, w) // 8),
        ]
        if hflip:
            steps.append(T.RandomHorizontalFlip())
        steps += [T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])]
        return T.Compose(steps)
    raise UsageError(f"unknown train transform '{kind}': use one of {', '.join(TRAIN_TRANSFORMS)}")


def resolve_data_config(model=None, *, pretrained_cfg: dict | None = None, use_test_size: bool = False) -> dict:
    """The timm data config (input_size, mean, std, interpolation, crop_pct, crop_mode) of a timm
    model, or of a pretrained_cfg dict; wraps timm.data.resolve_model_data_config."""
    import timm.data

    if model is not None:
        cfg = timm.data.resolve_model_data_config(model, use_test_size=use_test_size)
    elif pretrained_cfg is not None:
        cfg = timm.data.resolve_data_config(pretrained_cfg=dict(pretrained_cfg), use_test_size=use_test_size)
    else:
        return dict(DEFAULT_DATA_CONFIG)
    return effective_data_config(cfg)


# --------------------------------------------------------------------------- splitting helpers


def _hash64(salt: str, key) -> int:
    data = key if isinstance(key, (bytes, bytearray, memoryview)) else str(key).encode()
    return int.from_bytes(hashlib.blake2b(bytes(data), digest_size=8, key=salt.encode()[:64]).digest(), "little")


def _stratified_pick(labels, keys, count: int, salt: str):
    """Boolean mask choosing `count` examples, each class contributing in proportion to its size
    (largest remainders get the rounding; a class always keeps at least one unpicked example);
    within a class the examples with the smallest hash(salt, key) are picked."""
    import numpy as np

    labels = np.asarray(labels)
    n = len(labels)
    picked = np.zeros(n, dtype=bool)
    if n == 0 or count <= 0:
        return picked
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    exact = counts * (count / n)
    quota = np.floor(exact).astype(np.int64)
    rest = int(count - quota.sum())
    if rest > 0:
        order = np.lexsort((np.arange(len(counts)), -(exact - quota)))
        quota[order[:rest]] += 1
    quota = np.minimum(quota, np.maximum(counts - 1, 0))
    hashes = np.array([_hash64(salt, k) for k in keys], dtype=np.uint64)
    order = np.lexsort((hashes, inverse))  # grouped by class, hash order inside a class
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[inverse[order]]
    picked[rank < quota[inverse]] = True
    return picked


def _holdout(labels, keys, fraction: float, seed: int, what: str = "val"):
    """(keep_indices, held_out_indices) holding out round(fraction * n) examples, stratified."""
    import numpy as np

    if not 0.0 < float(fraction) < 1.0:
        raise UsageError(f"validation fraction must be between 0 and 1 (exclusive), got {fraction}")
    n = len(labels)
    count = max(1, int(round(fraction * n))) if n >= 2 else 0
    mask = _stratified_pick(labels, keys, count, f"scan-{what}-{seed}")
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _check_splits(splits) -> tuple:
    if isinstance(splits, str):
        splits = (splits,)
    splits = tuple(splits)
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise UsageError(f"unknown split(s) {', '.join(bad)}: use train, val and/or test")
    return splits


# --------------------------------------------------------------------------- map-style datasets


class _RobustImages:
    """Base for map-style datasets that decode lazily: an item that fails to decode is replaced
    by the next decodable one (with that one's label) and a warning names it once per process."""

    _max_tries = 32

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
        for step in range(min(n, self._max_tries)):
            i = (index + step) % n
            try:
                img = self._decode(i)
            except Exception as exc:  # noqa: BLE001 - a bad image must not kill the DataLoader
                self._warn(i, exc)
                continue
            x = self.transform(img) if self.transform is not None else img
            return x, int(self.labels[i])
        raise ScanError(
            f"{self._max_tries} consecutive images around {self._name(index)} cannot be decoded: check the data"
        )

    def _warn(self, i, exc) -> None:
        warned = self.__dict__.setdefault("_warned", set())
        if i not in warned:
            warned.add(i)
            log.warning("skipping undecodable image %s: %s", self._name(i), describe_error(exc))


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

        return to_rgb(Image.fromarray(self.images[i]))


class FileImages(_RobustImages):
    """Image files with labels: samples = [(path, label)]."""

    def __init__(self, samples, transform=None):
        import numpy as np

        self.paths = [str(p) for p, _ in samples]
        self.labels = np.asarray([int(lab) for _, lab in samples], dtype=np.int64)
        self.transform = transform

    @property
    def samples(self):
        return list(zip(self.paths, self.labels.tolist()))

    def _decode(self, i):
        return open_rgb(self.paths[i])

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

    def _decode(self, i):
        return _value_to_pil(self.hf[int(self.indices[i])][self.image_column])

    def _name(self, i):
        return f"row {int(self.indices[i])}"


def _value_to_pil(value):
    """An image column value (PIL image, {'bytes','path'} dict, bytes, path, or pixel array) as RGB."""
    from PIL import Image

    if isinstance(value, Image.Image):
        value.load()
        return to_rgb(value)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return open_rgb(value["bytes"])
        if value.get("path"):
            return open_rgb(value["path"])
        raise ValueError("empty image entry (no bytes and no path)")
    if isinstance(value, (bytes, bytearray, memoryview, str, os.PathLike)):
        return open_rgb(value)
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


def _example_key(value) -> bytes:
    """Bytes identifying an image value, for the streamed hold-out hash."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        return str(value.get("path")).encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (str, os.PathLike)):
        return str(value).encode()
    try:
        from PIL import Image

        if isinstance(value, Image.Image):
            return value.tobytes()
    except Exception:  # pragma: no cover
        pass
    import numpy as np

    return np.asarray(value).tobytes()


# --------------------------------------------------------------------------- streamed datasets


def _build_streaming_class():
    import torch.utils.data

    class StreamingImages(torch.utils.data.IterableDataset):
        """A streamed `datasets.IterableDataset` as a torch IterableDataset of (tensor, label).

        holdout=(fraction, seed, side): keep only the 'train' or 'val' side of the seeded
        content-hash hold-out (see the module notes). `configured(...)` returns a copy set up for
        one epoch of one rank (make_loader calls it): optional buffered shuffle seeded by
        seed + epoch, then split_dataset_by_node for DDP; DataLoader workers get disjoint shards
        from `datasets` itself.
        """

        def __init__(self, hf_dataset, image_column, label_column, transform=None, holdout=None, label_map=None):
            super().__init__()
            self.hf = hf_dataset
            self.image_column = image_column
            self.label_column = label_column
            self.transform = transform
            self.holdout = holdout
            self.label_map = label_map
            self.shuffle = False
            self.seed = 0
            self.epoch = 0
            self.rank = 0
            self.world_size = 1
            self.shuffle_buffer = STREAM_SHUFFLE_BUFFER

        @property
        def num_shards(self) -> int:
            return int(getattr(self.hf, "num_shards", 1) or 1)

        def configured(self, *, shuffle=False, seed=0, epoch=0, rank=0, world_size=1):
            other = copy.copy(self)
            other.shuffle, other.seed, other.epoch = bool(shuffle), int(seed), int(epoch)
            other.rank, other.world_size = int(rank), int(world_size)
            return other

        def _in_side(self, value) -> bool:
            fraction, seed, side = self.holdout
            h = _hash64(f"scan-stream-val-{seed}", _example_key(value))
            is_val = h < int(fraction * 2**64)
            return is_val if side == "val" else not is_val

        def __iter__(self):
            ds = self.hf
            if self.shuffle:
                ds = ds.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
                ds.set_epoch(self.epoch)
            if self.world_size > 1:
                from datasets.distributed import split_dataset_by_node

                ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
            bad = 0
            for example in ds:
                label = example[self.label_column]
                if self.label_map is not None:
                    label = self.label_map.get(label, -1)
                if label is None or int(label) < 0:
                    continue
                value = example[self.image_column]
                if self.holdout is not None and not self._in_side(value):
                    continue
                try:
                    img = _value_to_pil(value)
                except Exception as exc:  # noqa: BLE001
                    bad += 1
                    if bad <= _MAX_SKIP_EXAMPLES:
                        log.warning("skipping undecodable streamed image: %s", describe_error(exc))
                    continue
                yield (self.transform(img) if self.transform is not None else img), int(label)

    StreamingImages.__module__ = __name__
    StreamingImages.__qualname__ = "StreamingImages"
    return StreamingImages


def __getattr__(name):  # PEP 562: torch-based classes are built on first use (and pickle by name)
    if name == "StreamingImages":
        cls = _build_streaming_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _streaming_class():
    return globals().get("StreamingImages") or __getattr__("StreamingImages")


# --------------------------------------------------------------------------- digits


def _load_digits(cfg, kind, hflip, splits) -> DataSplits:
    import numpy as np
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(bunch.images * 16.0, 0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    keys = [str(i) for i in range(len(labels))]
    rest, test_idx = _holdout(labels, keys, 0.2, 0, what="digits-test")
    n_val = int(round(0.2 * len(labels)))
    mask = _stratified_pick(labels[rest], [keys[i] for i in rest], n_val, "scan-digits-val-0")
    train_idx, val_idx = rest[~mask], rest[mask]

    cfg = dict(cfg, crop_pct=1.0, crop_mode="center")  # 8x8 images: just resize, never crop
    ev = eval_transform(cfg)
    tr = train_transform(cfg, kind, hflip=False if hflip is None else hflip)
    parts = {"train": (train_idx, tr), "val": (val_idx, ev), "test": (test_idx, ev)}
    built = {s: ArrayImages(images[idx], labels[idx], t, source_indices=idx) for s, (idx, t) in parts.items() if s in splits}
    return DataSplits(
        train=built.get("train"),
        val=built.get("val"),
        test=built.get("test"),
        classes=[str(i) for i in range(10)],
        source="digits (scikit-learn)",
        split_sizes={s: len(d) for s, d in built.items()},
        val_from_train=False,
        data_config=cfg,
    )


# --------------------------------------------------------------------------- image folders


def _class_folders(folder: Path):
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p.name) and not p.name.startswith("."))
    return subdirs, loose


def _walk(folder: Path) -> list:
    from .images import _walk_images

    return _walk_images(folder)


def _list_with_classes(folder: Path, classes: list, role: str):
    """[(path, label)] for a val/test folder that must hold exactly the train classes.
    Returns None for a test folder of unlabelled loose images (ignored with a warning)."""
    subdirs, loose = _class_folders(folder)
    names = [d.name for d in subdirs]
    if not subdirs:
        if loose and role == "test":
            log.warning("ignoring %s: its images are not in class sub-folders (unlabelled)", folder)
            return None
        if loose:
            raise ScanError(
                f"{folder} holds images but no class sub-folders: sort them into {folder}/<class>/ "
                "(for ImageNet's val set, e.g. with valprep.sh)"
            )
    missing = [c for c in classes if c not in names]
    extra = [c for c in names if c not in classes]
    if missing or extra:
        bits = []
        if missing:
            bits.append("missing class " + ", ".join(f"'{c}'" for c in missing[:5]) + (" ..." if len(missing) > 5 else ""))
        if extra:
            bits.append("extra class " + ", ".join(f"'{c}'" for c in extra[:5]) + (" ..." if len(extra) > 5 else ""))
        raise ScanError(f"{role} folder {folder} does not match the train classes ({'; '.join(bits)}): give it the same class sub-folders as train")
    if loose:
        log.warning("ignoring %d images directly in %s (not in a class sub-folder)", len(loose), folder)
    index = {c: i for i, c in enumerate(classes)}
    return [(p, index[d.name]) for d in subdirs for p in _walk(d)]


def _check_file(path) -> str | None:
    from PIL import Image

    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as img:
            img.verify()
        return None
    except Exception as exc:  # noqa: BLE001
        return describe_error(exc)


def _verify(samples, skipped: SkippedImages):
    """samples without the files that fail PIL's open + verify (checked in a thread pool)."""
    if not samples:
        return samples
    from concurrent.futures import ThreadPoolExecutor

    workers = min(32, 4 * (os.cpu_count() or 1), len(samples))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        errors = list(pool.map(_check_file, [p for p, _ in samples], chunksize=64))
    good = []
    for (path, label), err in zip(samples, errors):
        if err is None:
            good.append((path, label))
        else:
            skipped.add(path, err)
    return good


def _load_folder(root: Path, cfg, kind, hflip, val_fraction, seed, splits, check_images) -> DataSplits:
    train_dir, val_dir, test_dir = root, None, None
    if (root / "train").is_dir():
        train_dir = root / "train"
        val_dir = next((root / n for n in VAL_FOLDER_NAMES if (root / n).is_dir()), None)
        test_dir = root / "test" if (root / "test").is_dir() else None
        others = [d.name for d in _class_folders(root)[0] if d.name not in ("train", "test") + VAL_FOLDER_NAMES]
        if others:
            log.warning("ignoring folders next to train/ in %s: %s", root, ", ".join(others))

    subdirs, loose = _class_folders(train_dir)
    exts = " ".join(IMAGE_EXTENSIONS)
    if not subdirs:
        if loose:
            raise ScanError(f"{train_dir} holds images but no class sub-folders: put them in {train_dir}/<class>/")
        raise ScanError(f"no images found in {train_dir} (looked for {exts} in class sub-folders)")
    classes = [d.name for d in subdirs]
    samples = []
    empty = []
    for label, d in enumerate(subdirs):
        files = _walk(d)
        if not files:
            empty.append(d.name)
        samples += [(p, label) for p in files]
    if not samples:
        raise ScanError(f"no images found in {train_dir} (looked for {exts} in class sub-folders)")
    if len(classes) < 2:
        raise ScanError(f"only one class ('{classes[0]}') in {train_dir}: a classifier needs at least two class sub-folders")
    if empty:
        raise ScanError(
            f"class folder(s) {', '.join(repr(e) for e in empty[:5])} in {train_dir} hold no images "
            f"(looked for {exts}): add images or remove them"
        )
    if loose:
        log.warning("ignoring %d images directly in %s (not in a class sub-folder)", len(loose), train_dir)

    skipped = SkippedImages()
    val_samples = _list_with_classes(val_dir, classes, "validation") if val_dir is not None else None
    test_samples = _list_with_classes(test_dir, classes, "test") if test_dir is not None else None
    val_from_train = val_samples is None
    if check_images:
        if "train" in splits or (val_from_train and "val" in splits):
            samples = _verify(samples, skipped)
        if val_samples is not None and "val" in splits:
            val_samples = _verify(val_samples, skipped)
        if test_samples is not None and "test" in splits:
            test_samples = _verify(test_samples, skipped)
    if skipped:
        log.warning("%s", skipped.summary())
    if val_from_train:
        keys = [Path(p).relative_to(train_dir).as_posix() for p, _ in samples]
        keep, held = _holdout([lab for _, lab in samples], keys, val_fraction, seed)
        samples, val_samples = [samples[i] for i in keep], [samples[i] for i in held]

    ev = eval_transform(cfg)
    tr = train_transform(cfg, kind, hflip=True if hflip is None else hflip)
    built = {}
    if "train" in splits:
        built["train"] = FileImages(samples, tr)
    if "val" in splits:
        built["val"] = FileImages(val_samples, ev)
    if "test" in splits and test_samples:
        built["test"] = FileImages(test_samples, ev)
    return DataSplits(
        train=built.get("train"),
        val=built.get("val"),
        test=built.get("test"),
        classes=classes,
        source=f"folder {root}",
        split_sizes={s: len(d) for s, d in built.items()},
        skipped=skipped,
        val_from_train=val_from_train,
        data_config=cfg,
    )


# --------------------------------------------------------------------------- `datasets` sources


def _detect_columns(features: dict, columns: list, image_column, label_column):
    from datasets import ClassLabel, Image

    columns = list(columns)
    listing = ", ".join(columns)
    for name, flag in ((image_column, "--image-column"), (label_column, "--label-column")):
        if name is not None and name not in columns:
            raise UsageError(f"column '{name}' is not in the dataset (columns: {listing}): fix {flag}")
    img = image_column
    if img is None:
        typed = [c for c in columns if isinstance(features.get(c), Image)]
        named = [c for n in IMAGE_COLUMN_NAMES for c in columns if c.lower() == n]
        if len(typed) == 1:
            img = typed[0]
        elif typed:
            img = next((c for c in named if c in typed), None)
            if img is None:
                raise ScanError(f"several image columns ({', '.join(typed)}): pick one with --image-column")
        elif named:
            img = named[0]
        else:
            raise ScanError(f"no image column found (columns: {listing}): pass --image-column")
    lab = label_column
    if lab is None:
        typed = [c for c in columns if isinstance(features.get(c), ClassLabel) and c != img]
        named = [c for n in LABEL_COLUMN_NAMES for c in columns if c.lower() == n and c != img]
        if len(typed) == 1:
            lab = typed[0]
        elif named:
            lab = named[0]
        elif typed:
            raise ScanError(f"several label columns ({', '.join(typed)}): pick one with --label-column")
        else:
            raise ScanError(f"no label column found (columns: {listing}): pass --label-column")
    return img, lab


def _pick_splits(parts: dict):
    lower = {k.lower(): k for k in parts}
    train_key = lower.get("train")
    if train_key is None:
        if len(parts) == 1:
            train_key = next(iter(parts))
            log.info("using the only split '%s' as training data", train_key)
        else:
            raise ScanError(f"the dataset has no 'train' split (splits: {', '.join(parts)}): name it train")
    val_key = next((lower[n] for n in VAL_SPLIT_NAMES if n in lower and lower[n] != train_key), None)
    test_key = lower.get("test") if lower.get("test") != train_key else None
    return (
        parts[train_key],
        parts[val_key] if val_key else None,
        parts[test_key] if test_key else None,
    )


def _undecoded(ds, image_column):
    from datasets import Image

    if ds is not None and isinstance((ds.features or {}).get(image_column), Image):
        return ds.cast_column(image_column, Image(decode=False))
    return ds


def _from_hf(obj, source: str, cfg, kind, hflip, val_fraction, seed, image_column, label_column, splits) -> DataSplits:
    import datasets

    if isinstance(obj, (datasets.Dataset, datasets.IterableDataset)):
        parts = {"train": obj}
    else:
        parts = dict(obj)
    if not parts:
        raise ScanError(f"{source} holds no splits: check the data")
    train, val, test = _pick_splits(parts)
    streaming = isinstance(train, datasets.IterableDataset)
    features = train.features
    if features is None:  # some streamed sources only know their columns after one example
        first = next(iter(train.take(1)), None)
        if first is None:
            raise ScanError(f"{source} has an empty training split: check the data")
        columns, features = list(first), {}
    else:
        columns = list(features)
    img_col, lab_col = _detect_columns(features, columns, image_column, label_column)
    ev = eval_transform(cfg)
    tr = train_transform(cfg, kind, hflip=True if hflip is None else hflip)
    if not 0.0 < float(val_fraction) < 1.0 and val is None:
        raise UsageError(f"validation fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if streaming:
        return _from_streamed(train, val, test, features, img_col, lab_col, source, cfg, tr, ev, val_fraction, seed, splits)

    import numpy as np

    lab_feature = features.get(lab_col)
    if isinstance(lab_feature, datasets.ClassLabel):
        classes = list(lab_feature.names)
        label_map = None
    else:
        values = [v for v in train.unique(lab_col) if v is not None and not (isinstance(v, (int, np.integer)) and v < 0)]
        try:
            values = sorted(values)
        except TypeError:
            values = sorted(values, key=str)
        classes = [str(v) for v in values]
        label_map = {v: i for i, v in enumerate(values)}
    if len(classes) < 2:
        raise ScanError(f"only {len(classes)} class in {source} (label column '{lab_col}'): a classifier needs at least two")

    def mapped(ds, role):
        raw = list(ds[lab_col])
        if label_map is None:
            labs = np.asarray([-1 if v is None else int(v) for v in raw], dtype=np.int64)
        else:
            unknown = sorted({str(v) for v in raw if v is not None and v not in label_map})
            if unknown and role != "train":
                raise ScanError(
                    f"the {role} split of {source} has labels train lacks ({', '.join(unknown[:5])}): "
                    "use a dataset whose splits share their classes"
                )
            labs = np.asarray([label_map.get(v, -1) if v is not None else -1 for v in raw], dtype=np.int64)
        bad = labs >= len(classes)
        if bad.any():
            raise ScanError(f"the {role} split of {source} has label {int(labs[bad][0])} outside its {len(classes)} classes: check the data")
        return labs

    train_labels = mapped(train, "train")
    train_rows = np.flatnonzero(train_labels >= 0)
    if len(train_rows) < len(train_labels):
        log.warning("ignoring %d unlabelled training rows of %s", len(train_labels) - len(train_rows), source)
    val_from_train = val is None
    if val_from_train:
        keys = [str(int(r)) for r in train_rows]
        keep, held = _holdout(train_labels[train_rows], keys, val_fraction, seed)
        val_rows, train_rows = train_rows[held], train_rows[keep]
        val_ds, val_labels = train, train_labels
    else:
        val_labels = mapped(val, "validation")
        val_rows = np.flatnonzero(val_labels >= 0)
        val_ds = val
    test_rows = test_labels = None
    if test is not None and "test" in splits:
        test_labels = mapped(test, "test")
        test_rows = np.flatnonzero(test_labels >= 0)
        if len(test_rows) == 0:
            log.info("the test split of %s has no labels (all -1): no test split", source)
            test = None
        elif len(test_rows) < len(test_labels):
            log.warning("ignoring %d unlabelled test rows of %s", len(test_labels) - len(test_rows), source)

    train_u = _undecoded(train.select_columns([img_col]), img_col)
    built = {}
    if "train" in splits:
        built["train"] = HFImages(train_u, img_col, train_rows, train_labels[train_rows], tr)
    if "val" in splits:
        src = train_u if val_from_train else _undecoded(val_ds.select_columns([img_col]), img_col)
        built["val"] = HFImages(src, img_col, val_rows, val_labels[val_rows], ev)
    if test is not None and "test" in splits:
        built["test"] = HFImages(_undecoded(test.select_columns([img_col]), img_col), img_col, test_rows, test_labels[test_rows], ev)
    return DataSplits(
        train=built.get("train"),
        val=built.get("val"),
        test=built.get("test"),
        classes=classes,
        source=source,
        split_sizes={s: len(d) for s, d in built.items()},
        val_from_train=val_from_train,
        data_config=cfg,
    )


def _from_streamed(train, val, test, features, img_col, lab_col, source, cfg, tr, ev, val_fraction, seed, splits):
    import datasets

    lab_feature = features.get(lab_col)
    if not isinstance(lab_feature, datasets.ClassLabel):
        raise ScanError(
            f"streamed {source} has no ClassLabel label column ('{lab_col}'), so its classes are unknown "
            "without reading it all: drop --streaming"
        )
    classes = list(lab_feature.names)
    if test is not None and "test" in splits:
        first = next(iter(test.select_columns([lab_col]).take(1)), None)
        if first is None or first[lab_col] is None or int(first[lab_col]) < 0:
            log.info("the test split of %s has no labels (-1): no test split", source)
            test = None
    cls = _streaming_class()
    built = {}
    val_from_train = val is None
    hold = (float(val_fraction), int(seed), "train") if val_from_train else None
    if "train" in splits:
        built["train"] = cls(_undecoded(train, img_col), img_col, lab_col, tr, holdout=hold)
    if "val" in splits:
        if val_from_train:
            built["val"] = cls(_undecoded(train, img_col), img_col, lab_col, ev, holdout=(float(val_fraction), int(seed), "val"))
        else:
            built["val"] = cls(_undecoded(val, img_col), img_col, lab_col, ev)
    if test is not None and "test" in splits:
        built["test"] = cls(_undecoded(test, img_col), img_col, lab_col, ev)
    return DataSplits(
        train=built.get("train"),
        val=built.get("val"),
        test=built.get("test"),
        classes=classes,
        source=source,
        split_sizes={s: None for s in built},
        val_from_train=val_from_train,
        streaming=True,
        data_config=cfg,
    )


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "dataset_info.json").is_file() and (path / "state.json").is_file()
    )


def _columnar_files(folder: Path) -> list:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if Path(f).suffix.lower() in COLUMNAR_SUFFIXES]
    return found


def _load_columnar(files: list, data_dir, streaming: bool):
    import datasets

    suffixes = {Path(f).suffix.lower() for f in files}
    builder = "parquet" if ".parquet" in suffixes else "arrow"
    if data_dir is not None:  # splits inferred from file names (train-*.parquet, test-*, ...)
        return datasets.load_dataset(builder, data_dir=str(data_dir), streaming=streaming)
    chosen = [str(f) for f in files if COLUMNAR_SUFFIXES[Path(f).suffix.lower()] == builder]
    return datasets.load_dataset(builder, data_files={"train": chosen}, streaming=streaming)


def looks_like_path(spec: str) -> bool:
    """True when `spec` cannot be a Hub dataset id and must mean a local path."""
    s = spec.strip()
    if s.startswith((".", "/", "~")) or "\\" in s or s.count("/") > 1:
        return True
    if Path(s).suffix.lower() in COLUMNAR_SUFFIXES or is_image_file(s):
        return True
    return not _HUB_ID.match(s)


# --------------------------------------------------------------------------- the Hub


_REACHABLE: dict = {}


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Can a TCP connection to the Hub endpoint (or the HTTPS proxy) open within `timeout`?"""
    import socket
    from urllib.parse import urlsplit

    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except Exception:  # pragma: no cover
        endpoint = "https://huggingface.co"
    url = urlsplit(endpoint)
    target = (url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80))
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY") or os.environ.get("all_proxy")
    no_proxy = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
    if proxy and not any(h.strip() and target[0].endswith(h.strip().lstrip(".")) for h in no_proxy.split(",")):
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        target = (p.hostname or target[0], p.port or 80)
    if target not in _REACHABLE:
        try:
            with socket.create_connection(target, timeout=timeout):
                _REACHABLE[target] = True
        except OSError:
            _REACHABLE[target] = False
    return _REACHABLE[target]


class _ForcedOffline:
    """Temporarily switch `datasets` and `huggingface_hub` to offline mode (cache only)."""

    def __init__(self, active: bool):
        self.active = active
        self.saved = []

    def __enter__(self):
        if self.active:
            import datasets.config
            from huggingface_hub import constants

            for mod, attr in ((datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"), (constants, "HF_HUB_OFFLINE")):
                if hasattr(mod, attr):
                    self.saved.append((mod, attr, getattr(mod, attr)))
                    setattr(mod, attr, True)
        return self

    def __exit__(self, *exc):
        for mod, attr, value in reversed(self.saved):
            setattr(mod, attr, value)
        self.saved = []
        return False


def _offline_env() -> bool:
    import datasets.config

    return bool(datasets.config.HF_HUB_OFFLINE)


def _load_hub(spec: str, streaming: bool):
    """datasets.load_dataset(id) with one-line errors; fails at once when the Hub is unreachable."""
    import datasets

    repo = resolve_alias(spec)
    offline = _offline_env()
    forced = not offline and not _hub_reachable()
    no_hub = offline or forced
    try:
        with _ForcedOffline(forced):
            return repo, datasets.load_dataset(repo, streaming=streaming)
    except ScanError:
        raise
    except Exception as exc:  # noqa: BLE001 - everything from the hub becomes one line
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if no_hub:
            raise ScanError(
                f"dataset '{repo}' is not available offline: download it first or pass a local folder/--data path"
            ) from None
        if "gated" in str(exc).lower():
            raise ScanError(
                f"dataset '{repo}' is gated: accept its terms on huggingface.co and log in (`hf auth login`)"
            ) from None
        if isinstance(exc, FileNotFoundError):
            raise ScanError(
                f"no local folder or file '{spec}' and no Hugging Face dataset '{repo}': check the name or path"
            ) from None
        if isinstance(exc, (ConnectionError, OSError)):
            raise ScanError(f"cannot load dataset '{repo}' from the Hub ({text}): check the network or pass a local path") from None
        raise


# --------------------------------------------------------------------------- entry point


def load_data(
    spec: str | None = None,
    *,
    data_config: dict | None = None,
    train_transform: str = "rrc",
    img_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    image_column: str | None = None,
    label_column: str | None = None,
    streaming: bool = False,
    splits=SPLITS,
    hflip: bool | None = None,
    check_images: bool = True,
) -> DataSplits:
    """Load the data named by `spec` (see the module notes for sources and split rules).

    data_config: timm data config of the model (input_size, mean, std, interpolation, crop_pct);
    img_size overrides its H = W. train_transform: 'rrc', 'pad_crop' or 'none'. hflip: None
    means flip except for digits. splits: which of train/val/test to build (the others are None).
    check_images: open + verify every file of an image folder up front (see module notes).
    """
    kind = train_transform
    if (kind or "none").lower() not in TRAIN_TRANSFORMS:
        raise UsageError(f"unknown train transform '{kind}': use one of {', '.join(TRAIN_TRANSFORMS)}")
    splits = _check_splits(splits)
    cfg = effective_data_config(data_config, img_size)
    text = None if spec is None else str(spec).strip()
    if not text or text.lower() == "digits":
        return _load_digits(cfg, kind, hflip, splits)

    common = dict(cfg=cfg, kind=kind, hflip=hflip, val_fraction=val_fraction, seed=seed)
    hf_common = dict(common, image_column=image_column, label_column=label_column, splits=splits)
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        if _is_saved_dataset(path):
            import datasets

            if streaming:
                log.info("a saved dataset is read memory-mapped; --streaming is not needed for it")
            return _from_hf(datasets.load_from_disk(str(path)), f"saved dataset {path}", **hf_common)
        files = _columnar_files(path)
        if files:
            return _from_hf(_load_columnar(files, path, streaming), f"files {path}", **hf_common)
        return _load_folder(path, splits=splits, check_images=check_images, **common)
    if path.is_file():
        if path.suffix.lower() in COLUMNAR_SUFFIXES:
            return _from_hf(_load_columnar([path], None, streaming), f"file {path}", **hf_common)
        raise ScanError(
            f"'{text}' is a file, not a data source: pass a folder of class sub-folders, a saved dataset, "
            ".parquet/.arrow files or a Hugging Face dataset id"
        )
    if any(c in text for c in "*?["):
        hits = sorted(glob.glob(os.path.expanduser(text), recursive=True))
        files = [Path(h) for h in hits if Path(h).is_file() and Path(h).suffix.lower() in COLUMNAR_SUFFIXES]
        if not files:
            raise ScanError(f"no .parquet or .arrow files match '{text}': check the pattern")
        return _from_hf(_load_columnar(files, None, streaming), f"files {text}", **hf_common)
    if looks_like_path(text):
        raise ScanError(f"no such folder or file: '{text}': check the path")
    repo, obj = _load_hub(text, streaming)
    return _from_hf(obj, f"hub {repo}", **hf_common)


# --------------------------------------------------------------------------- loaders


def default_num_workers() -> int:
    """min(4, cpu_count - 1), at least 0."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def make_loader(
    dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int | None = None,
    seed: int = 0,
    epoch: int = 0,
    distributed: bool = False,
    drop_last: bool = False,
    collate_fn=None,
):
    """A DataLoader whose order and worker augmentation seeds are a pure function of seed + epoch.

    Map-style data: shuffling uses torch.Generator().manual_seed(seed + epoch), which also seeds
    the workers (torch derives each worker's torch/random/numpy seeds from it), so resuming at an
    epoch boundary reproduces the epoch exactly. With num_workers=0 augmentation draws from the
    main process's global RNGs, which the caller seeds. distributed: DistributedSampler(seed=seed,
    shuffle=shuffle, drop_last=drop_last) with set_epoch(epoch); rank r > 0 adds r * 1_000_003 to
    the generator seed so ranks do not share augmentation streams (rank 0 matches the single
    process run). Streamed data (StreamingImages): shuffled through a seeded buffer, set to the
    epoch, split over DDP ranks, workers capped at the shard count (see module notes).
    Workers are not persistent; memory is pinned when CUDA is available.
    """
    import torch

    if num_workers is None:
        num_workers = default_num_workers()
    rank, world = 0, 1
    if distributed:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    generator = torch.Generator().manual_seed(int(seed) + int(epoch) + 1_000_003 * rank)
    common = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        generator=generator,
    )
    if isinstance(dataset, torch.utils.data.IterableDataset):
        if hasattr(dataset, "configured"):
            dataset = dataset.configured(shuffle=shuffle, seed=seed, epoch=epoch, rank=rank, world_size=world)
            shards = dataset.num_shards
            if world > 1:
                shards = max(1, shards // world) if shards % world == 0 else shards
            common["num_workers"] = min(num_workers, shards)
        return torch.utils.data.DataLoader(dataset, **common)
    if distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
        return torch.utils.data.DataLoader(dataset, sampler=sampler, **common)
    return torch.utils.data.DataLoader(dataset, shuffle=shuffle, **common)

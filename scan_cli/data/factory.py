"""`load_data`: the one factory every command calls to turn a `--data` value into splits.

Sources, tried in this order (one module each):

1. `None` or `"digits"`: scikit-learn's digits, offline, fixed split (`digits.py`). Use `./digits`
   to mean a local folder of that name.
2. A local folder of images (`folder.py`).
3. A saved `datasets` dataset, `.parquet` / `.arrow` files or a glob of them (`hf.py`).
4. Otherwise a Hugging Face Hub dataset id or alias (`hub.py`, then `hf.py`).

Which examples are held out for validation is decided in `holdout.py` (a finished run's data is
rebuilt through `splits.py`); transforms come from `transforms.py`, loaders from `loader.py`.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

from ..errors import ScanError, UsageError
from .dataset import DataSplits
from .digits import load_digits
from .folder import check_folder, load_folder
from .hf import COLUMNAR_SUFFIXES, columnar_files, from_hf, is_saved_dataset, load_columnar
from .hub import check_hub, load_hub, looks_like_path
from .membership import data_root
from .transforms import TRAIN_TRANSFORMS, effective_data_config

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def check_splits(splits) -> tuple:
    if isinstance(splits, str):
        splits = (splits,)
    splits = tuple(splits)
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise UsageError(f"unknown split(s) {', '.join(bad)}: use train, val and/or test")
    return splits


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
    """Load the data named by `spec` (sources: the module notes; hold-out rules: `holdout.py`).

    data_config: timm data config of the model (input_size, mean, std, interpolation, crop_pct);
    img_size overrides its H = W. train_transform: 'rrc', 'pad_crop' or 'none'. hflip: None
    means flip except for digits. splits: which of train/val/test to build (the others are None).
    check_images: open + verify every file of an image folder up front (see `folder.py`).
    """
    from .images import max_image_pixels

    max_image_pixels()  # a bad SCAN_MAX_IMAGE_PIXELS is a usage error now, not one error per image
    kind = train_transform
    if (kind or "none").lower() not in TRAIN_TRANSFORMS:
        raise UsageError(f"unknown train transform '{kind}': use one of {', '.join(TRAIN_TRANSFORMS)}")
    splits = check_splits(splits)
    cfg = effective_data_config(data_config, img_size)
    built = _load(spec, cfg, kind, hflip, val_fraction, seed, image_column, label_column, streaming, splits, check_images)
    built.root = data_root(spec)  # recorded absolute: a relative --data never changes meaning later
    return built


def _load(spec, cfg, kind, hflip, val_fraction, seed, image_column, label_column, streaming, splits,
          check_images) -> DataSplits:
    kind_of, where = data_source(spec)
    if kind_of == "digits":
        return load_digits(cfg, kind, hflip, splits)

    common = dict(cfg=cfg, kind=kind, hflip=hflip, val_fraction=val_fraction, seed=seed)
    hf_common = dict(common, image_column=image_column, label_column=label_column, splits=splits)
    if kind_of == "saved":
        import datasets

        if streaming:
            log.info("a saved dataset is read memory-mapped; --streaming is not needed for it")
        return from_hf(datasets.load_from_disk(str(where)), f"saved dataset {where}", **hf_common)
    if kind_of == "columnar":
        files, data_dir, name = where
        return from_hf(load_columnar(files, data_dir, streaming), name, **hf_common)
    if kind_of == "folder":
        return load_folder(where, splits=splits, check_images=check_images, **common)
    repo, obj = load_hub(where, streaming)
    return from_hf(obj, f"hub {repo}", **hf_common)


def data_source(spec: str | None) -> tuple[str, object]:
    """Which source a `--data` value names, decided from the name and the file system alone (no
    torch, no `datasets`): ("digits", None), ("saved", folder), ("columnar", (files, data_dir,
    name)), ("folder", folder) or ("hub", id). A path that names no source is an error here."""
    text = None if spec is None else str(spec).strip()
    if not text or text.lower() == "digits":
        return "digits", None
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        if is_saved_dataset(path):
            return "saved", path
        files = columnar_files(path)
        if files:
            return "columnar", (files, path, f"files {path}")
        return "folder", path
    if path.is_file():
        if path.suffix.lower() in COLUMNAR_SUFFIXES:
            return "columnar", ([path], None, f"file {path}")
        raise ScanError(
            f"'{text}' is a file, not a data source: pass a folder of class sub-folders, a saved dataset, "
            ".parquet/.arrow files or a Hugging Face dataset id"
        )
    if any(c in text for c in "*?["):
        hits = sorted(glob.glob(os.path.expanduser(text), recursive=True))
        files = [Path(h) for h in hits if Path(h).is_file() and Path(h).suffix.lower() in COLUMNAR_SUFFIXES]
        if not files:
            raise ScanError(f"no .parquet or .arrow files match '{text}': check the pattern")
        return "columnar", (files, None, f"files {text}")
    if looks_like_path(text):
        raise ScanError(f"no such folder or file: '{text}': check the path")
    return "hub", text


def check_data(spec: str | None) -> None:
    """The mistakes in a `--data` value that show without loading it: a path that is no source, an
    image folder without images or classes (`folder.check_folder`), a Hub id neither cached nor
    reachable (`hub.check_hub`). Imports neither torch nor `datasets`."""
    kind_of, where = data_source(spec)
    if kind_of == "folder":
        check_folder(where)
    elif kind_of == "hub":
        check_hub(where)

"""`datasets` sources: a saved dataset, `.parquet` / `.arrow` files, and what the Hub returns.

A `datasets` dataset saved with `save_to_disk` (a folder with `dataset_dict.json`, or
`dataset_info.json` + `state.json`); a `.parquet` / `.arrow` file, a folder of them (splits
inferred from file names such as `train-*.parquet`, `test-*.parquet`), or a glob of them (one
train split). The image and label columns are found by feature type, then by name
(IMAGE_COLUMN_NAMES, LABEL_COLUMN_NAMES), unless --image-column / --label-column name them.

Validation: the source's own validation split when it has one, otherwise held out of train
(`holdout.holdout` keyed by row number; streamed: `holdout.in_stream_holdout`). A test split whose
labels are all -1 (the ImageNet test set) counts as no test split. Damaged rows are not checked up
front (that would mean decoding the whole set): see `dataset.py` and `streaming.py`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import ScanError, UsageError
from .dataset import DataSplits, HFImages
from .holdout import MAP_RULE, STREAM_RULE, holdout, rule
from .streaming import streaming_class
from .transforms import eval_transform, train_transform

log = logging.getLogger(__name__)

IMAGE_COLUMN_NAMES = ("image", "img", "pixel_values")
LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "target")
VAL_SPLIT_NAMES = ("validation", "valid", "val")
COLUMNAR_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}


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
        val_key,
    )


def _undecoded(ds, image_column):
    from datasets import Image

    if ds is not None and isinstance((ds.features or {}).get(image_column), Image):
        return ds.cast_column(image_column, Image(decode=False))
    return ds


def from_hf(obj, source: str, cfg, kind, hflip, val_fraction, seed, image_column, label_column, splits) -> DataSplits:
    import datasets

    if isinstance(obj, (datasets.Dataset, datasets.IterableDataset)):
        parts = {"train": obj}
    else:
        parts = dict(obj)
    if not parts:
        raise ScanError(f"{source} holds no splits: check the data")
    train, val, test, val_name = _pick_splits(parts)
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
        return _from_streamed(train, val, test, features, img_col, lab_col, source, cfg, tr, ev, val_fraction, seed, splits,
                              val_name)

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
        keep, held = holdout(train_labels[train_rows], keys, val_fraction, seed)
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
    val_rule = rule(MAP_RULE, "row number", val_fraction, seed) if val_from_train else {"from": "own split", "name": val_name}
    return DataSplits.of(built, classes=classes, source=source, data_config=cfg, val_from_train=val_from_train,
                         val_rule=val_rule, image_column=img_col, label_column=lab_col)


def _from_streamed(train, val, test, features, img_col, lab_col, source, cfg, tr, ev, val_fraction, seed, splits,
                   val_name):
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
    cls = streaming_class()
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
    val_rule = rule(STREAM_RULE, "image bytes", val_fraction, seed) if val_from_train else {"from": "own split", "name": val_name}
    return DataSplits.of(built, classes=classes, source=source, data_config=cfg, streaming=True,
                         val_from_train=val_from_train, val_rule=val_rule, image_column=img_col, label_column=lab_col)


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "dataset_info.json").is_file() and (path / "state.json").is_file()
    )


def columnar_files(folder: Path) -> list:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if Path(f).suffix.lower() in COLUMNAR_SUFFIXES]
    return found


def load_columnar(files: list, data_dir, streaming: bool):
    import datasets

    suffixes = {Path(f).suffix.lower() for f in files}
    builder = "parquet" if ".parquet" in suffixes else "arrow"
    if data_dir is not None:  # splits inferred from file names (train-*.parquet, test-*, ...)
        return datasets.load_dataset(builder, data_dir=str(data_dir), streaming=streaming)
    chosen = [str(f) for f in files if COLUMNAR_SUFFIXES[Path(f).suffix.lower()] == builder]
    return datasets.load_dataset(builder, data_files={"train": chosen}, streaming=streaming)

"""Data: sources, splits, transforms and loaders, one module each (the way timm's `data/readers` is laid out).

`load_data(spec, ...)` (`factory.py`) turns one `--data` value into train / validation / test
datasets whose items are `(image_tensor [3, H, W] float, label int)`; every command calls it,
directly or through `splits.run_data` (a run's data again, split as it was when it trained).

The modules are listed in docs/ARCHITECTURE.md.

Nothing in this package imports torch, timm, datasets or scikit-learn at module level, and this
`__init__` imports no submodule until one of the names below is used (PEP 562), so `scan --help`
stays instant.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_data": "factory",
    "DIGITS_SIZES": "digits",
    "VAL_FOLDER_NAMES": "folder",
    "COLUMNAR_SUFFIXES": "hf",
    "IMAGE_COLUMN_NAMES": "hf",
    "LABEL_COLUMN_NAMES": "hf",
    "VAL_SPLIT_NAMES": "hf",
    "DATASET_ALIASES": "hub",
    "looks_like_path": "hub",
    "resolve_alias": "hub",
    "SPLITS": "factory",
    "EVAL_SPLITS": "splits",
    "run_data": "splits",
    "run_recipe": "splits",
    "run_split": "splits",
    "DataSplits": "dataset",
    "ArrayImages": "dataset",
    "FileImages": "dataset",
    "HFImages": "dataset",
    "SkippedImages": "dataset",
    "Skipped": "dataset",
    "StreamingImages": "streaming",
    "STREAM_SHUFFLE_BUFFER": "streaming",
    "DEFAULT_DATA_CONFIG": "transforms",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "TRAIN_TRANSFORMS": "transforms",
    "EnsureRGB": "transforms",
    "effective_data_config": "transforms",
    "eval_transform": "transforms",
    "train_transform": "transforms",
    "default_num_workers": "loader",
    "loader_length": "loader",
    "make_loader": "loader",
    "validation_batches": "loader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))

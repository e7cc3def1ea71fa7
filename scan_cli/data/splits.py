"""Splits: which examples are train, validation and test — the one place that decides.

The rules (the sources in this package call them; nothing else holds examples out):

* Map-style hold-out (`holdout`): a source without its own validation split gives `val_fraction`
  of train, seeded and stratified: each class gives its share, and which examples go is decided
  by a hash of `seed` and the example's key (its relative path for folders, its row number for
  `datasets`), so it does not depend on numpy's RNG.
* Streamed hold-out (`in_stream_holdout`): an example is validation when the seeded hash of its
  image bytes (or path) falls in the lowest `val_fraction` of the hash range. Unlike "every k-th
  example" this does not depend on the order examples arrive in, or on how the stream is split
  over DataLoader workers and DDP ranks, so train and validation never overlap and stay the same
  across runs and machine counts.
* Digits have a fixed split (see `digits.py`), built from the same stratified pick.

After training, every command that needs the run's data again (calibrate, evaluate, profile,
predict's --target-acc) rebuilds it through `run_data` / `run_split` from what the run recorded
(`run_recipe`), so each one sees exactly the validation set `scan fit` held out.

Nothing here imports torch, timm, datasets or scikit-learn at module level.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ScanError, UsageError
from .dataset import SkippedImages

SPLITS = ("train", "val", "test")
EVAL_SPLITS = ("test", "val", "train", "all")


@dataclass
class DataSplits:
    """What `load_data` returns.

    train / val / test: datasets of (image tensor [3, H, W], label int); None for a split not
    asked for in `splits` (and `test` when the source has no labelled test split).
    split_sizes: number of examples per built split; None as a value for a streamed split.
    skipped: undecodable images left out at load time (image folders; see `folder.py`).
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


# --------------------------------------------------------------------------- the rules


def hash64(salt: str, key) -> int:
    data = key if isinstance(key, (bytes, bytearray, memoryview)) else str(key).encode()
    return int.from_bytes(hashlib.blake2b(bytes(data), digest_size=8, key=salt.encode()[:64]).digest(), "little")


def stratified_pick(labels, keys, count: int, salt: str):
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
    hashes = np.array([hash64(salt, k) for k in keys], dtype=np.uint64)
    order = np.lexsort((hashes, inverse))  # grouped by class, hash order inside a class
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[inverse[order]]
    picked[rank < quota[inverse]] = True
    return picked


def holdout(labels, keys, fraction: float, seed: int, what: str = "val"):
    """(keep_indices, held_out_indices) holding out round(fraction * n) examples, stratified."""
    import numpy as np

    if not 0.0 < float(fraction) < 1.0:
        raise UsageError(f"validation fraction must be between 0 and 1 (exclusive), got {fraction}")
    n = len(labels)
    count = max(1, int(round(fraction * n))) if n >= 2 else 0
    mask = stratified_pick(labels, keys, count, f"scan-{what}-{seed}")
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def in_stream_holdout(key: bytes, fraction: float, seed: int) -> bool:
    """True when a streamed example (identified by `key`, its image bytes or path) is validation."""
    return hash64(f"scan-stream-val-{seed}", key) < int(fraction * 2**64)


def check_splits(splits) -> tuple:
    if isinstance(splits, str):
        splits = (splits,)
    splits = tuple(splits)
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise UsageError(f"unknown split(s) {', '.join(bad)}: use train, val and/or test")
    return splits


# --------------------------------------------------------------------------- a run's data again


def run_recipe(run_dir, info) -> dict:
    """What a run recorded about its data (`data`, `val_fraction`, `seed`, ...): the recipe stored
    in its artifact, else `run_dir/recipe.json` (both written by `scan fit`); {} when neither exists.
    An unreadable recipe.json is a ScanError."""
    if isinstance(getattr(info, "recipe", None), dict) and info.recipe:
        return info.recipe
    from ..runs import RECIPE_FILE

    recipe_file = Path(run_dir) / RECIPE_FILE if run_dir is not None else None
    if recipe_file is None or not recipe_file.is_file():
        return {}
    try:
        recipe = json.loads(recipe_file.read_text())
    except (OSError, ValueError) as exc:
        raise ScanError(f"{recipe_file} is unreadable ({type(exc).__name__}): re-run 'scan fit'") from None
    return recipe if isinstance(recipe, dict) else {}


def run_data(run_dir, info, *, recipe: dict | None = None, data: str | None = None, splits=SPLITS,
             image_column=None, label_column=None) -> DataSplits:
    """The run's data split as it was when the run trained, with its eval preprocessing (never
    augmentation). `data` replaces the recorded source (other labelled data with the model's
    classes); `recipe` defaults to `run_recipe(run_dir, info)`."""
    from .factory import load_data

    if recipe is None:
        recipe = run_recipe(run_dir, info)
    return load_data(data if data is not None else recipe.get("data"), data_config=info.data_config,
                     train_transform="none", img_size=int(info.input_size),
                     val_fraction=recipe.get("val_fraction", 0.1), seed=recipe.get("seed", 0),
                     image_column=image_column, label_column=label_column, splits=splits)


def run_split(run_dir, info, split: str, data: str | None = None, image_column=None, label_column=None):
    """(dataset, DataSplits) for one of EVAL_SPLITS of the run's data ("all": train + val + test),
    checked against the classes the model was trained on."""
    recipe = run_recipe(run_dir, info)
    splits = run_data(run_dir, info, recipe=recipe, data=data, image_column=image_column, label_column=label_column)
    if data is None or data == recipe.get("data"):
        if list(splits.classes) != list(info.classes):
            raise ScanError("the run's data now has other classes than it was trained on: pass --data with the training data")
    elif len(splits.classes) != len(info.classes):
        raise ScanError(f"--data has {len(splits.classes)} classes, the model {len(info.classes)}: pass data with the model's classes")
    if split == "all":
        import torch.utils.data as tud

        parts = [d for d in (splits.train, splits.val, splits.test) if d is not None]
        return tud.ConcatDataset(parts), splits
    dataset = getattr(splits, split)
    if dataset is None:
        raise ScanError(f"the data has no {split} split: pass --split val|all, or --data with a test split")
    return dataset, splits

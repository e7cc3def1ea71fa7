"""A run's data again: the one place that decides train / val / test from what a run recorded.

After training, every command that needs the run's data (calibrate, evaluate, profile's cascade
timing, predict's --target-acc) goes through `run_data` / `run_split`: `run_recipe` reads what
`scan fit` recorded (source, `val_fraction`, `seed`, and `data_split`: streaming or not, the
columns read, where validation came from and by which hold-out rule and key), and `load_data`
rebuilds the splits the same way (`holdout.py`) with the run's eval preprocessing, so each
command sees exactly the validation set fit held out and never a training image. When the data
no longer splits as recorded (e.g. a val/ folder appeared), that is an error, not a silent change.
Runs written before `data_split` was recorded are rebuilt from source, fraction and seed.
Since issue 19 the run's data is read from its recorded absolute root, and validation is rebuilt
from the membership fit recorded (`membership.py`): exactly the examples fit held out, never one
it trained on or one added since; `split_digest` names the exit-outputs caches after it.

Nothing here imports torch, timm, datasets or scikit-learn at module level.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from ..errors import ScanError
from .dataset import DataSplits
from . import membership
from .factory import SPLITS, load_data

log = logging.getLogger(__name__)

EVAL_SPLITS = ("test", "val", "train", "all")


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
    classes, read without the run's streaming and column choices unless given); `recipe` defaults
    to `run_recipe(run_dir, info)`. The run's own data is read from its recorded absolute root, and
    its validation is rebuilt from the recorded membership (`membership.rebuild`)."""
    if recipe is None:
        recipe = run_recipe(run_dir, info)
    recorded = recipe.get("data_split") if isinstance(recipe.get("data_split"), dict) else None
    own = is_own_data(recipe, data)
    if not own:
        recorded = None
    streaming = False
    source = recipe.get("data") if own else data
    doc = None
    if own:
        rec = recorded or {}
        image_column = image_column or rec.get("image_column") or recipe.get("image_column")
        label_column = label_column or rec.get("label_column") or recipe.get("label_column")
        streaming = bool(rec.get("streaming", recipe.get("streaming", False)))
        source = _own_source(recipe, rec)
        if rec.get("membership") and "val" in splits:
            doc = membership.load(run_dir)
    held = bool(recorded) and (recorded.get("val") or {}).get("from") == "train"
    wanted = tuple(splits) + (("train",) if doc is not None and held and "train" not in splits else ())
    rebuilt = load_data(source, data_config=info.data_config, train_transform="none",
                        img_size=int(info.input_size), val_fraction=recipe.get("val_fraction", 0.1),
                        seed=recipe.get("seed", 0), image_column=image_column, label_column=label_column,
                        streaming=streaming, splits=wanted)
    if recorded is not None:
        _check_same_split(recorded, rebuilt.record())
    if doc is not None:
        membership.rebuild(rebuilt, doc, held)
        if "train" not in splits:
            rebuilt.train = None
    return rebuilt


def is_own_data(recipe: dict, data) -> bool:
    """True when `data` (a --data value, or None) names the data the run trained on."""
    if data is None:
        return True
    root = (recipe.get("data_split") or {}).get("root") if isinstance(recipe.get("data_split"), dict) else None
    return membership.data_root(data) == root if root else data == recipe.get("data")


def _own_source(recipe: dict, rec: dict) -> str | None:
    """Where the run's own data is: its recorded absolute root (never the typed path re-resolved
    against today's working directory); runs written before the root was recorded: as typed."""
    root = rec.get("root")
    if not root:
        if rec.get("val", {}).get("from") != "fixed split":
            log.info("this run was written before 'scan fit' recorded its validation membership: validation is "
                     "rebuilt by its hold-out rule from '%s' as it is now", recipe.get("data"))
        return recipe.get("data")
    if os.path.isabs(root) and not os.path.exists(root):
        raise ScanError(f"the run's data {root} (recorded by 'scan fit') is gone: restore it there, "
                        "or pass --data with the data to use")
    return root


def split_digest(recipe: dict, split: str, splits: DataSplits | None = None, content: str | None = None) -> str:
    """What names a split's cached exit outputs (`runs.Run.outputs_cache`): for validation, the
    digest of the membership used (the recorded one until a rebuild says otherwise), else a digest
    of where the data is and how it splits, and of ``content`` (`membership.data_digest` of the
    split's examples as they are now: an image added, changed or removed since names another cache),
    so outputs of different data are never mixed."""
    rec = recipe.get("data_split") if isinstance(recipe.get("data_split"), dict) else {}
    if split == "val":
        if splits is not None and splits.val_digest:
            return splits.val_digest
        if splits is None and (rec.get("membership") or {}).get("digest"):
            return rec["membership"]["digest"]
    where = rec.get("root") or membership.data_root(recipe.get("data"))
    parts = [where, split, rec.get("val"), rec.get("image_column"), rec.get("label_column"),
             recipe.get("val_fraction"), recipe.get("seed")] + ([content] if content else [])
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _check_same_split(recorded: dict, now: dict) -> None:
    """The data must split as it did when the run trained (else validation could hold training images)."""
    keys = ("streaming", "image_column", "label_column", "val")
    changed = [k for k in keys if recorded.get(k) != now.get(k)]
    if changed:
        def say(rec):
            return "; ".join(f"{k} {rec.get(k)}" for k in changed)

        raise ScanError(f"the run's data no longer splits as it did when 'scan fit' ran (then: {say(recorded)}; now: "
                        f"{say(now)}): restore the data as it was, or pass --data with the data to use")


def run_split(run_dir, info, split: str, data: str | None = None, image_column=None, label_column=None):
    """(dataset, DataSplits) for one of EVAL_SPLITS of the run's data ("all": train + val + test),
    checked against the classes the model was trained on."""
    recipe = run_recipe(run_dir, info)
    wanted = SPLITS if split == "all" else (split,)
    splits = run_data(run_dir, info, recipe=recipe, data=data, image_column=image_column, label_column=label_column,
                      splits=wanted)
    if is_own_data(recipe, data):
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

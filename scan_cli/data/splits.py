"""A run's data again: the one place that decides train / val / test from what a run recorded.

After training, every command that needs the run's data (calibrate, evaluate, profile's cascade
timing, predict's --target-acc) goes through `run_data` / `run_split`: `run_recipe` reads what
`scan fit` recorded (source, `val_fraction`, `seed`, and `data_split`: streaming or not, the
columns read, where validation came from and by which hold-out rule and key), and `load_data`
rebuilds the splits the same way (`holdout.py`) with the run's eval preprocessing, so each
command sees exactly the validation set fit held out and never a training image. When the data
no longer splits as recorded (e.g. a val/ folder appeared), that is an error, not a silent change.
Runs written before `data_split` was recorded are rebuilt from source, fraction and seed.

Nothing here imports torch, timm, datasets or scikit-learn at module level.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ScanError
from .dataset import DataSplits
from .factory import SPLITS, load_data

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
    to `run_recipe(run_dir, info)`."""
    if recipe is None:
        recipe = run_recipe(run_dir, info)
    own = data is None or data == recipe.get("data")
    recorded = recipe.get("data_split") if own and isinstance(recipe.get("data_split"), dict) else None
    streaming = False
    if own:
        rec = recorded or {}
        image_column = image_column or rec.get("image_column") or recipe.get("image_column")
        label_column = label_column or rec.get("label_column") or recipe.get("label_column")
        streaming = bool(rec.get("streaming", recipe.get("streaming", False)))
    rebuilt = load_data(recipe.get("data") if own else data, data_config=info.data_config, train_transform="none",
                        img_size=int(info.input_size), val_fraction=recipe.get("val_fraction", 0.1),
                        seed=recipe.get("seed", 0), image_column=image_column, label_column=label_column,
                        streaming=streaming, splits=splits)
    if recorded is not None:
        _check_same_split(recorded, rebuilt.record())
    return rebuilt


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

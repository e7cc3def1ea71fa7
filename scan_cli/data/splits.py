"""A run's data again: the one place that decides train / val / test from what a run recorded.

After training, every command that needs the run's data (calibrate, evaluate, profile's cascade
timing, predict's --target-acc) goes through `run_data` / `run_split`: `run_recipe` reads what
`scan fit` recorded (source, `val_fraction`, `seed`), and `load_data` rebuilds the splits with the
same hold-out rules (`holdout.py`) and the run's eval preprocessing, so each command sees exactly
the validation set fit held out and never a training image.

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
    classes); `recipe` defaults to `run_recipe(run_dir, info)`."""
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

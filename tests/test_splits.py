"""A run's splits after training (issue 11 item 4): every later command sees exactly the validation
set `scan fit` held out, and never one of the images it trained on, whatever the source.

Each case runs the real `fit` (one epoch, tiny data, no augmentation so that an image's tensor
identifies it), captures the training split fit used, then asks `data.run_split` (what calibrate,
evaluate, profile and predict --target-acc use) for validation."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).parent))
from test_data import hf_dataset, make_class_tree  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def _folder(root):
    make_class_tree(root, ["ant", "bee", "cow"], 8)
    return str(root), {}


def _folder_with_val(root):
    make_class_tree(root / "train", ["ant", "bee", "cow"], 6)
    make_class_tree(root / "val", ["ant", "bee", "cow"], 3, seed=1)
    make_class_tree(root / "test", ["ant", "bee", "cow"], 2, seed=2)
    return str(root), {}


def _saved(root):
    hf_dataset(24).save_to_disk(str(root))
    return str(root), {}


def _saved_other_columns(root):
    """Two image columns and two ClassLabels: fit is told which ones (--image-column/--label-column)."""
    import datasets

    from test_data import png_bytes

    n = 24
    feats = datasets.Features({"img": datasets.Image(), "thumb": datasets.Image(),
                               "fine_label": datasets.ClassLabel(names=["cat", "dog", "eel"]),
                               "coarse": datasets.ClassLabel(names=["s", "b"])})
    datasets.Dataset.from_dict({
        "img": [{"bytes": png_bytes(500 + i), "path": None} for i in range(n)],
        "thumb": [{"bytes": png_bytes(900 + i), "path": None} for i in range(n)],
        "fine_label": [i % 3 for i in range(n)], "coarse": [(i // 3) % 2 for i in range(n)],
    }, features=feats).save_to_disk(str(root))
    return str(root), {"image_column": "thumb", "label_column": "coarse"}


def _parquet(root):
    root.mkdir()
    hf_dataset(24).to_parquet(str(root / "x.parquet"))
    return str(root / "x.parquet"), {}


def _streamed_parquet(root):
    root.mkdir()
    hf_dataset(40).to_parquet(str(root / "x.parquet"))
    return str(root / "x.parquet"), {"streaming": True}


SOURCES = {"digits": None, "folder": _folder, "folder with val/": _folder_with_val, "saved dataset": _saved,
           "saved dataset, chosen columns": _saved_other_columns, "parquet": _parquet, "streamed parquet": _streamed_parquet}


def _items(dataset) -> list:
    """Every item's tensor bytes, in order (map-style or streamed)."""
    if hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        return [dataset[i][0].numpy().tobytes() for i in range(len(dataset))]
    return [x.numpy().tobytes() for x, _ in dataset]


@pytest.mark.parametrize("source", list(SOURCES))
def test_later_commands_never_validate_on_training_images(source, tmp_path, hf_cache, monkeypatch):
    import scan_cli.data
    from scan_cli.artifact import read_info
    from scan_cli.data import run_split
    from scan_cli.training.recipes import Recipe
    from scan_cli.training.loop import FitOptions, fit

    data, flags = ("digits", {}) if SOURCES[source] is None else SOURCES[source](tmp_path / "data")
    seen = []
    real_load = scan_cli.data.load_data
    monkeypatch.setattr(scan_cli.data, "load_data", lambda *a, **k: seen.append(real_load(*a, **k)) or seen[-1])
    recipe = Recipe(data=data, img_size=16, epochs=1, batch_size=8, lr=0.05, schedule="constant", augment="none",
                    hflip=False, workers=0, mode="joint", val_fraction=0.25, seed=3)
    out = tmp_path / "run"
    if source == "digits":  # 1079 training images: one step is enough to make a run
        monkeypatch.setattr("scan_cli.training.loop._train_epoch", _one_step_epoch)
    fit(FitOptions(backbone="resnet10_cifar", recipe=recipe, out=out, **flags))
    (fitted,) = seen
    train, fit_val = _items(fitted.train), _items(fitted.val)
    assert train and fit_val and not set(train) & set(fit_val)

    info = read_info(out / "model.safetensors")
    for stored in (info, dataclasses.replace(info, recipe=None)):  # the artifact's recipe, else recipe.json
        val, splits = run_split(out, stored, "val")
        later = _items(val)
        trained_on = len(set(later) & set(train))
        assert trained_on == 0, f"{source}: {trained_on} of {len(later)} validation images were trained on"
        assert sorted(later) == sorted(fit_val), f"{source}: not the validation set fit held out"
        assert list(splits.classes) == list(info.classes)


def _one_step_epoch(train_model, model, loader, optimizer, *args, **kwargs):
    return {"loss": 0.0, "images": 1, "seconds": 1.0, "images_per_s": 1.0}


def test_the_run_records_what_decides_its_splits(tmp_path, hf_cache):
    from scan_cli.artifact import read_info
    from scan_cli.training.recipes import Recipe
    from scan_cli.training.loop import FitOptions, fit

    data, flags = _streamed_parquet(tmp_path / "data")
    recipe = Recipe(data=data, img_size=16, epochs=1, batch_size=8, lr=0.05, schedule="constant", augment="none",
                    hflip=False, workers=0, mode="joint", val_fraction=0.25, seed=3)
    fit(FitOptions(backbone="resnet10_cifar", recipe=recipe, out=tmp_path / "run", **flags))
    rec = read_info(tmp_path / "run" / "model.safetensors").recipe
    assert rec["streaming"] is True
    doc = json.loads((tmp_path / "run" / "holdout.json").read_text())  # the streamed validation's fingerprints
    assert doc["match"] == "stream" and len(doc["val"]) + doc["train"]["count"] == 40
    assert rec["data_split"] == {
        "source": f"file {data}", "root": str(Path(data).absolute()), "streaming": True, "image_column": "image", "label_column": "label",
        "val": {"from": "train", "rule": "content-hash", "key": "image bytes", "fraction": 0.25, "seed": 3},
        "membership": {"file": "holdout.json", "digest": doc["digest"], "val": len(doc["val"]), "train": doc["train"]["count"]},
    }


def test_data_that_no_longer_splits_as_it_did_is_an_error(tmp_path):
    """A val/ folder added after fit: validation would come from elsewhere than fit held out."""
    import json

    from scan_cli.data import run_split
    from scan_cli.errors import ScanError
    from scan_cli.training.recipes import Recipe
    from scan_cli.training.loop import FitOptions, fit

    root = tmp_path / "d"
    make_class_tree(root / "train", ["ant", "bee"], 6)
    recipe = Recipe(data=str(root), img_size=16, epochs=1, batch_size=4, lr=0.05, schedule="constant", augment="none",
                    hflip=False, workers=0, mode="joint", val_fraction=0.25)
    fit(FitOptions(backbone="resnet10_cifar", recipe=recipe, out=tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["data_split"]["val"]["rule"] == "stratified-hash"
    make_class_tree(root / "val", ["ant", "bee"], 2, seed=1)
    from scan_cli.artifact import read_info

    with pytest.raises(ScanError, match="no longer splits"):
        run_split(tmp_path / "run", read_info(tmp_path / "run" / "model.safetensors"), "val")

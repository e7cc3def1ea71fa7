"""Data sources, splits, transforms and loaders (all offline, data generated in tmp dirs)."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scan_cli import data as D
from scan_cli.data import hf as data_hf
from scan_cli.data import hub as data_hub
from scan_cli.data import (
    DATASET_ALIASES,
    DIGITS_SIZES,
    eval_transform,
    load_data,
    looks_like_path,
    make_loader,
    resolve_alias,
    train_transform,
)
from scan_cli.errors import ScanError, UsageError

HALF = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "input_size": (3, 16, 16), "crop_pct": 1.0}


# --------------------------------------------------------------------------- helpers / fixtures


def noise(seed, size=(12, 12), mode="RGB"):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def png_bytes(seed, size=(12, 12)):
    buf = io.BytesIO()
    noise(seed, size).save(buf, "PNG")
    return buf.getvalue()


def make_class_tree(root: Path, classes, per_class, seed=0, ext="png"):
    paths = []
    for ci, c in enumerate(classes):
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            p = d / f"img{i:03d}.{ext}"
            noise(seed * 1000 + ci * 100 + i).save(p)
            paths.append(p)
    return paths


def all_items(ds):
    return [ds[i] for i in range(len(ds))]


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep `datasets`' cache inside the test's tmp dir."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    return tmp_path / "hf_cache"


def hf_dataset(n=30, names=("cat", "dog", "eel"), image_col="image", label_col="label", label_feature="classlabel", seed=0):
    import datasets

    labels = [i % len(names) for i in range(n)]
    if label_feature == "classlabel":
        lab_feat = datasets.ClassLabel(names=list(names))
        lab_vals = labels
    else:  # plain strings
        lab_feat = datasets.Value("string")
        lab_vals = [names[i] for i in labels]
    feats = datasets.Features({image_col: datasets.Image(), label_col: lab_feat, "uid": datasets.Value("int64")})
    return datasets.Dataset.from_dict(
        {image_col: [{"bytes": png_bytes(seed * 10_000 + i), "path": None} for i in range(n)], label_col: lab_vals, "uid": list(range(n))},
        features=feats,
    )


# --------------------------------------------------------------------------- digits


def test_digits_has_the_documented_fixed_split():
    d = load_data(None, data_config=HALF, train_transform="none")
    assert DIGITS_SIZES == {"train": 1079, "val": 359, "test": 359}
    assert d.split_sizes == DIGITS_SIZES
    assert (len(d.train), len(d.val), len(d.test)) == (1079, 359, 359)
    assert d.classes == [str(i) for i in range(10)]
    assert d.source == "digits (scikit-learn)"
    assert not d.val_from_train and not d.skipped
    rows = [set(s.source_indices.tolist()) for s in (d.train, d.val, d.test)]
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    assert rows[0] | rows[1] | rows[2] == set(range(1797))


def test_digits_split_is_stable_and_ignores_seed():
    a = load_data("digits", data_config=HALF, seed=0)
    b = load_data("digits", data_config=HALF, seed=123, val_fraction=0.5)
    for s in ("train", "val", "test"):
        assert np.array_equal(getattr(a, s).source_indices, getattr(b, s).source_indices)
    # the exact membership is pinned: a change of the split rule must show up here
    assert a.test.source_indices[:5].tolist() == TEST_HEAD
    assert int(a.test.source_indices.sum()) == TEST_SUM


def test_digits_split_is_stratified():
    d = load_data("digits", data_config=HALF)
    from sklearn.datasets import load_digits

    y = load_digits().target
    for part, share in ((d.test, 0.2), (d.val, 0.2), (d.train, 0.6)):
        counts = np.bincount(part.labels, minlength=10)
        expected = np.bincount(y, minlength=10) * share
        assert np.all(np.abs(counts - expected) <= 1.5), (counts, expected)
        assert np.array_equal(part.labels, y[part.source_indices])


def test_digits_tensors_are_rgb_normalised_and_sized():
    model_cfg = dict(HALF, input_size=(3, 224, 224), crop_pct=0.875)  # a model's config; digits must not crop
    d = load_data("digits", data_config=model_cfg, img_size=16, train_transform="none")
    assert "Resize(size=16" in repr(d.val.transform) and "Resize(size=18" not in repr(d.val.transform)
    x, y = d.val[0]
    assert tuple(x.shape) == (3, 16, 16) and str(x.dtype) == "torch.float32"
    assert isinstance(y, int) and 0 <= y < 10
    assert float(x.min()) >= -1.0 - 1e-6 and float(x.max()) <= 1.0 + 1e-6  # (v - .5) / .5 of [0, 1]
    assert float(x[:, 0, 0].max()) == pytest.approx(-1.0)  # the digits' corner pixel is background 0
    assert np.allclose(x[0].numpy(), x[1].numpy()) and np.allclose(x[1].numpy(), x[2].numpy())  # gray -> RGB
    assert float(x.max()) > 0.5  # ink is there (values 0..16 scaled by 16)
    assert d.data_config["input_size"] == (3, 16, 16) and d.data_config["crop_pct"] == 1.0


def test_digits_are_not_flipped_by_default_but_folders_are(tmp_path):
    d = load_data("digits", data_config=HALF, train_transform="pad_crop")
    assert "Flip" not in repr(d.train.transform)
    assert "Flip" in repr(load_data("digits", data_config=HALF, train_transform="pad_crop", hflip=True).train.transform)
    make_class_tree(tmp_path / "f", ["a", "b"], 5)
    assert "Flip" in repr(load_data(str(tmp_path / "f"), data_config=HALF).train.transform)


def test_only_requested_splits_are_built():
    d = load_data("digits", data_config=HALF, splits=("test",))
    assert d.train is None and d.val is None and len(d.test) == 359
    with pytest.raises(UsageError):
        load_data("digits", splits=("training",))


# --------------------------------------------------------------------------- transforms


def test_train_transform_kinds():
    cfg = dict(HALF, input_size=(3, 32, 32))
    pad = train_transform(cfg, "pad_crop")
    assert "RandomCrop(size=(32, 32), padding=4)" in repr(pad)
    rrc = train_transform(cfg, "rrc")
    assert "RandomResizedCrop" in repr(rrc) and "Flip" in repr(rrc) and "ColorJitter" not in repr(rrc)
    assert "Flip" not in repr(train_transform(cfg, "rrc", hflip=False))
    assert repr(train_transform(cfg, "none")) == repr(eval_transform(cfg))
    for t in (pad, rrc):
        assert tuple(t(noise(1, (50, 40))).shape) == (3, 32, 32)
    with pytest.raises(UsageError):
        train_transform(cfg, "mixup")


def test_eval_transform_uses_crop_pct_and_img_size():
    cfg = {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic", "mean": (0, 0, 0), "std": (1, 1, 1)}
    t = eval_transform(cfg, img_size=32)
    assert "Resize(size=36" in repr(t) and "CenterCrop(size=(32, 32))" in repr(t)
    x = t(noise(3, (64, 48), mode="L"))
    assert tuple(x.shape) == (3, 32, 32) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0


# --------------------------------------------------------------------------- image folders


def test_flat_class_folders_hold_out_a_stratified_seeded_validation_set(tmp_path):
    make_class_tree(tmp_path / "f", ["zebra", "ant", "mole"], 10)
    d = load_data(str(tmp_path / "f"), data_config=HALF, val_fraction=0.2, seed=3)
    assert d.classes == ["ant", "mole", "zebra"]
    assert d.split_sizes == {"train": 24, "val": 6}
    assert d.test is None and d.val_from_train and d.source == f"folder {tmp_path / 'f'}"
    assert np.bincount(d.val.labels).tolist() == [2, 2, 2]
    assert not set(d.train.paths) & set(d.val.paths)
    assert len(set(d.train.paths) | set(d.val.paths)) == 30
    for p, lab in d.val.samples:
        assert Path(p).parent.name == d.classes[lab]
    again = load_data(str(tmp_path / "f"), data_config=HALF, val_fraction=0.2, seed=3)
    assert again.val.paths == d.val.paths
    other = load_data(str(tmp_path / "f"), data_config=HALF, val_fraction=0.2, seed=4)
    assert other.val.paths != d.val.paths
    x, y = d.train[0]
    assert tuple(x.shape) == (3, 16, 16) and y in (0, 1, 2)


def test_train_val_test_layout(tmp_path):
    root = tmp_path / "ds"
    make_class_tree(root / "train", ["a", "b"], 6)
    make_class_tree(root / "validation", ["a", "b"], 3, seed=1)
    make_class_tree(root / "test", ["a", "b"], 2, seed=2)
    d = load_data(str(root), data_config=HALF)
    assert d.split_sizes == {"train": 12, "val": 6, "test": 4}
    assert not d.val_from_train
    assert all("validation" in p for p in d.val.paths) and all("/test/" in p for p in d.test.paths)
    assert d.test.labels.tolist() == [0, 0, 1, 1]


def test_imagenet_layout_with_unlabelled_test_folder(tmp_path, caplog):
    root = tmp_path / "in"
    make_class_tree(root / "train", ["n01", "n02"], 4)
    make_class_tree(root / "val", ["n01", "n02"], 2, seed=1)
    (root / "test").mkdir()
    noise(9).save(root / "test" / "x.jpg")
    with caplog.at_level(logging.WARNING):
        d = load_data(str(root), data_config=HALF)
    assert d.test is None and d.split_sizes == {"train": 8, "val": 4}
    assert "unlabelled" in caplog.text


@pytest.mark.parametrize("val_classes, word, name", [(["a"], "missing", "'b'"), (["a", "b", "c"], "extra", "'c'")])
def test_validation_classes_must_match_train(tmp_path, val_classes, word, name):
    make_class_tree(tmp_path / "r" / "train", ["a", "b"], 3)
    make_class_tree(tmp_path / "r" / "val", val_classes, 2)
    with pytest.raises(ScanError) as err:
        load_data(str(tmp_path / "r"), data_config=HALF)
    msg = str(err.value)
    assert word in msg and name in msg and "\n" not in msg


def test_empty_folder_names_the_extensions(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScanError, match=r"no images found.*\.jpg"):
        load_data(str(tmp_path / "empty"))
    (tmp_path / "empty" / "a").mkdir()
    (tmp_path / "empty" / "a" / "readme.txt").write_text("x")
    with pytest.raises(ScanError, match="no images found"):
        load_data(str(tmp_path / "empty"))


def test_one_class_is_an_error(tmp_path):
    make_class_tree(tmp_path / "one", ["only"], 3)
    with pytest.raises(ScanError, match="only one class"):
        load_data(str(tmp_path / "one"))


def test_missing_folder_is_not_looked_up_on_the_hub(tmp_path):
    t = time.monotonic()
    with pytest.raises(ScanError, match="no such folder or file"):
        load_data(str(tmp_path / "nope"))
    with pytest.raises(ScanError, match="no such folder or file"):
        load_data("./surely/not/here")
    assert time.monotonic() - t < 2


def test_undecodable_files_are_skipped_and_counted(tmp_path, caplog):
    root = tmp_path / "f"
    make_class_tree(root, ["a", "b"], 5)
    (root / "a" / "fake.jpg").write_text("not an image")
    data = png_bytes(5, (64, 64))
    (root / "b" / "trunc.png").write_bytes(data[: len(data) // 2])
    (root / "b" / "empty.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        d = load_data(str(root), data_config=HALF, val_fraction=0.2)
    assert d.skipped.count == 3
    assert {Path(p).name for p, _ in d.skipped.examples} == {"fake.jpg", "trunc.png", "empty.png"}
    assert "skipped 3 undecodable images" in caplog.text
    assert len(d.train) + len(d.val) == 10
    assert not any(Path(p).name in ("fake.jpg", "trunc.png", "empty.png") for p in d.train.paths + d.val.paths)


@pytest.mark.parametrize("workers", [0, 2])
def test_damage_found_only_when_decoding_is_skipped_and_counted_never_replaced(tmp_path, caplog, workers):
    """A bad image used to be replaced by the next one (counted twice, with that one's label): it is
    left out of its batch, counted once per loader and named, and the other items keep their order."""
    import torch

    from scan_cli.data.dataset import Skipped

    root = tmp_path / "f"
    make_class_tree(root, ["a", "b"], 4, ext="jpg")
    buf = io.BytesIO()
    noise(11, (96, 96)).save(buf, "JPEG")
    (root / "a" / "img000.jpg").write_bytes(buf.getvalue()[:300])  # header fine, data cut short
    (root / "b" / "img003.jpg").write_bytes(buf.getvalue()[:300])
    with caplog.at_level(logging.WARNING):
        d = load_data(str(root), data_config=HALF, train_transform="none", val_fraction=0.25, check_images=False,
                      splits=("train", "val"))
        ds = d.train if any(p.endswith("a/img000.jpg") for p in d.train.paths) else d.val
        bad = [i for i, p in enumerate(ds.paths) if p.endswith("a/img000.jpg")][0]
        assert isinstance(ds[bad], Skipped) and ds[bad].name.endswith("a/img000.jpg")
        loader = make_loader(ds, batch_size=2, shuffle=False, num_workers=workers)
        batches = list(loader)
        again = list(loader)  # a second epoch finds the same image: still one
    good = [i for i in range(len(ds)) if not ds.paths[i].endswith(("a/img000.jpg", "b/img003.jpg"))]
    labels = [int(v) for _, y in batches for v in y]
    assert labels == [int(ds.labels[i]) for i in good]  # nothing replaced, order kept
    assert torch.equal(torch.cat([x for x, _ in batches]), torch.stack([ds[i][0] for i in good]))
    assert len(again) == len(batches)
    bad_here = sum(ds.paths[i].endswith(("a/img000.jpg", "b/img003.jpg")) for i in range(len(ds)))
    assert loader.skipped.count == bad_here and "img000.jpg" in loader.skipped.summary()
    assert "img000.jpg" in caplog.text


def test_a_batch_of_only_bad_images_is_left_out(tmp_path):
    from scan_cli.data.dataset import FileImages

    good = tmp_path / "good.png"
    noise(1).save(good)
    bad = [tmp_path / f"bad{i}.png" for i in range(3)]
    for b in bad:
        b.write_bytes(b"nope")
    ds = FileImages([(bad[0], 0), (bad[1], 1), (good, 1), (bad[2], 0)], eval_transform(HALF))
    loader = make_loader(ds, batch_size=2, shuffle=False, num_workers=0)
    batches = list(loader)
    assert len(batches) == 1 and batches[0][1].tolist() == [1]
    assert loader.skipped.count == 3


def test_images_over_the_pixel_limit_are_skipped_and_counted_when_listed(tmp_path, monkeypatch):
    root = tmp_path / "f"
    make_class_tree(root, ["a", "b"], 4)
    noise(3, (64, 64)).save(root / "a" / "big.png")
    monkeypatch.setenv("SCAN_MAX_IMAGE_PIXELS", str(64 * 64 - 1))
    d = load_data(str(root), data_config=HALF, val_fraction=0.25)
    assert d.skipped.count == 1 and "too large" in d.skipped.summary() and "big.png" in d.skipped.summary()
    assert len(d.train) + len(d.val) == 8


# --------------------------------------------------------------------------- `datasets` sources


def test_saved_dataset_dict_with_classlabel(tmp_path, hf_cache):
    import datasets

    dd = datasets.DatasetDict({"train": hf_dataset(30), "test": hf_dataset(9, seed=1)})
    dd.save_to_disk(str(tmp_path / "saved"))
    d = load_data(str(tmp_path / "saved"), data_config=HALF, val_fraction=0.2)
    assert d.classes == ["cat", "dog", "eel"]
    assert d.split_sizes == {"train": 24, "val": 6, "test": 9}
    assert d.val_from_train and d.source.startswith("saved dataset")
    assert np.bincount(d.val.labels).tolist() == [2, 2, 2]
    assert not set(d.train.indices.tolist()) & set(d.val.indices.tolist())
    x, y = d.train[0]
    assert tuple(x.shape) == (3, 16, 16) and y == int(d.train.labels[0])
    assert d.test.labels.tolist() == [i % 3 for i in range(9)]


def test_saved_single_dataset_and_validation_split_names(tmp_path, hf_cache):
    import datasets

    hf_dataset(12).save_to_disk(str(tmp_path / "single"))
    d = load_data(str(tmp_path / "single"), data_config=HALF, val_fraction=0.25)
    assert d.split_sizes == {"train": 9, "val": 3}
    dd = datasets.DatasetDict({"train": hf_dataset(12), "valid": hf_dataset(6, seed=2)})
    dd.save_to_disk(str(tmp_path / "dd"))
    d = load_data(str(tmp_path / "dd"), data_config=HALF)
    assert d.split_sizes == {"train": 12, "val": 6} and not d.val_from_train


def test_test_split_with_only_minus_one_labels_is_no_test_split(tmp_path, hf_cache):
    import datasets

    test = hf_dataset(6, seed=3).cast_column("label", datasets.Value("int64"))
    test = test.map(lambda r: {"label": -1}).cast_column("label", datasets.ClassLabel(names=["cat", "dog", "eel"]))
    datasets.DatasetDict({"train": hf_dataset(12), "validation": hf_dataset(6), "test": test}).save_to_disk(str(tmp_path / "in"))
    d = load_data(str(tmp_path / "in"), data_config=HALF)
    assert d.test is None and "test" not in d.split_sizes


def test_parquet_file_with_string_labels(tmp_path, hf_cache):
    path = tmp_path / "x.parquet"
    hf_dataset(20, names=("b", "a"), label_feature="string").to_parquet(str(path))
    d = load_data(str(path), data_config=HALF, val_fraction=0.25)
    assert d.classes == ["a", "b"]
    assert d.split_sizes == {"train": 15, "val": 5}
    x, y = d.val[0]
    assert tuple(x.shape) == (3, 16, 16)
    # item i of the source had label names[i % 2] -> "b" for even rows, i.e. class 1
    row = int(d.val.indices[0])
    assert y == (1 if row % 2 == 0 else 0)


def test_parquet_folder_infers_splits_and_glob_is_one_train_split(tmp_path, hf_cache):
    (tmp_path / "pq" / "data").mkdir(parents=True)
    hf_dataset(12).to_parquet(str(tmp_path / "pq" / "data" / "train-00000-of-00001.parquet"))
    hf_dataset(6, seed=1).to_parquet(str(tmp_path / "pq" / "data" / "test-00000-of-00001.parquet"))
    d = load_data(str(tmp_path / "pq"), data_config=HALF, val_fraction=0.25)
    assert d.split_sizes == {"train": 9, "val": 3, "test": 6}
    g = load_data(str(tmp_path / "pq" / "data" / "*.parquet"), data_config=HALF, val_fraction=0.25)
    assert g.split_sizes == {"train": 14, "val": 4}
    with pytest.raises(ScanError, match="no .parquet"):
        load_data(str(tmp_path / "pq" / "*.nothing"))


def test_columns_are_detected_by_type_then_name_and_can_be_overridden(tmp_path, hf_cache):
    import datasets

    ds = hf_dataset(12, image_col="picture", label_col="kind")  # no conventional names: types decide
    ds.save_to_disk(str(tmp_path / "typed"))
    d = load_data(str(tmp_path / "typed"), data_config=HALF)
    assert d.classes == ["cat", "dog", "eel"]

    base = hf_dataset(12, image_col="img", label_col="fine_label")
    coarse = datasets.ClassLabel(names=["small", "big"])
    two = base.add_column("coarse_label", [i % 2 for i in range(12)]).cast_column("coarse_label", coarse)
    two.save_to_disk(str(tmp_path / "two"))
    d = load_data(str(tmp_path / "two"), data_config=HALF)  # two ClassLabels: the name fine_label wins
    assert d.classes == ["cat", "dog", "eel"]
    d = load_data(str(tmp_path / "two"), data_config=HALF, label_column="coarse_label")
    assert d.classes == ["small", "big"]
    with pytest.raises(UsageError, match="nope"):
        load_data(str(tmp_path / "two"), label_column="nope")

    no_label = base.remove_columns(["fine_label"])
    no_label.save_to_disk(str(tmp_path / "nolabel"))
    with pytest.raises(ScanError, match="--label-column"):
        load_data(str(tmp_path / "nolabel"))
    d = load_data(str(tmp_path / "nolabel"), data_config=HALF, label_column="uid", val_fraction=0.5)
    assert len(d.classes) == 12 and d.classes[:3] == ["0", "1", "2"]


def test_detect_columns_by_name_without_feature_types():
    import datasets

    feats = {"pixel_values": datasets.Value("binary"), "target": datasets.Value("int64"), "other": datasets.Value("int64")}
    assert data_hf._detect_columns(feats, list(feats), None, None) == ("pixel_values", "target")
    with pytest.raises(ScanError, match="--image-column"):
        data_hf._detect_columns({"a": None, "label": None}, ["a", "label"], None, None)


def test_streamed_parquet_holds_out_validation_by_content_hash(tmp_path, hf_cache):
    path = tmp_path / "s.parquet"
    hf_dataset(40).to_parquet(str(path))
    d = load_data(str(path), data_config=HALF, train_transform="none", val_fraction=0.25, streaming=True)
    assert d.streaming and d.split_sizes == {"train": None, "val": None}
    assert d.classes == ["cat", "dog", "eel"]
    train = [(x.numpy().tobytes(), y) for xb, yb in make_loader(d.train, batch_size=8, shuffle=False, num_workers=0) for x, y in zip(xb, yb.tolist())]
    val = [(x.numpy().tobytes(), y) for xb, yb in make_loader(d.val, batch_size=8, shuffle=False, num_workers=0) for x, y in zip(xb, yb.tolist())]
    assert len(train) + len(val) == 40 and 3 <= len(val) <= 20
    assert not {t for t, _ in train} & {t for t, _ in val}
    again = [x.numpy().tobytes() for xb, _ in make_loader(d.val, batch_size=8, shuffle=True, epoch=3, num_workers=0) for x in xb]
    assert set(again) == {t for t, _ in val}  # same membership whatever the order
    # two DDP ranks see disjoint parts that together are the whole train side
    parts = [list(d.train.configured(rank=r, world_size=2)) for r in (0, 1)]
    seen = [x.numpy().tobytes() for p in parts for x, _ in p]
    assert len(seen) == len(train) and set(seen) == {t for t, _ in train}


def test_streamed_source_without_classlabel_is_refused(tmp_path, hf_cache):
    path = tmp_path / "s.parquet"
    hf_dataset(6, label_feature="string").to_parquet(str(path))
    with pytest.raises(ScanError, match="drop --streaming"):
        load_data(str(path), streaming=True)


# --------------------------------------------------------------------------- the Hub (offline)


def test_aliases_resolve_without_network():
    assert resolve_alias("imagenet") == "ILSVRC/imagenet-1k"
    assert resolve_alias("CIFAR10") == "uoft-cs/cifar10"
    assert resolve_alias("cifar100") == "uoft-cs/cifar100"
    assert resolve_alias("someone/thing") == "someone/thing"
    assert resolve_alias("fashion-mnist") == "zalando-datasets/fashion_mnist" and resolve_alias("mnist") == "ylecun/mnist"
    assert set(DATASET_ALIASES.values()) == {"ILSVRC/imagenet-1k", "uoft-cs/cifar10", "uoft-cs/cifar100",
                                             "zalando-datasets/fashion_mnist", "ylecun/mnist"}


def test_paths_and_hub_ids_are_told_apart():
    for path in ("./x", "/abs", "~/x", "a/b/c", "x.parquet", "pics.jpg", "a\\b", "my folder"):
        assert looks_like_path(path), path
    for hub in ("cifar10", "uoft-cs/cifar10", "ILSVRC/imagenet-1k", "mnist"):
        assert not looks_like_path(hub), hub


@pytest.mark.parametrize("spec, repo", [("cifar100", "uoft-cs/cifar100"), ("someone/unknown-set", "someone/unknown-set")])
def test_offline_hub_id_fails_fast_with_one_line(monkeypatch, spec, repo):
    import datasets.config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    t = time.monotonic()
    with pytest.raises(ScanError) as err:
        load_data(spec)
    assert time.monotonic() - t < 5
    assert str(err.value) == (
        f"dataset '{repo}' is not available offline: download it first or pass a local folder/--data path"
    )


def test_unreachable_hub_fails_fast_and_restores_online_mode(monkeypatch):
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(data_hub, "_hub_reachable", lambda timeout=3.0: False)
    t = time.monotonic()
    with pytest.raises(ScanError, match="not available offline"):
        load_data("uoft-cs/cifar10", streaming=True)
    assert time.monotonic() - t < 5
    assert datasets.config.HF_HUB_OFFLINE is False and constants.HF_HUB_OFFLINE is False


# --------------------------------------------------------------------------- loaders


class Indexed:
    """Map-style dataset whose item is its index plus a random number from the worker's RNG."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import torch

        return i, torch.rand(()).item()


def order(loader):
    return [int(i) for batch in loader for i in batch[0]]


def test_make_loader_order_is_a_function_of_seed_and_epoch():
    ds = Indexed(64)
    a = order(make_loader(ds, batch_size=8, shuffle=True, seed=1, epoch=2, num_workers=0))
    b = order(make_loader(ds, batch_size=8, shuffle=True, seed=1, epoch=2, num_workers=0))
    c = order(make_loader(ds, batch_size=8, shuffle=True, seed=1, epoch=3, num_workers=0))
    assert a == b and sorted(a) == list(range(64))
    assert a != c
    assert order(make_loader(ds, batch_size=8, shuffle=False, num_workers=0)) == list(range(64))


def test_make_loader_worker_randomness_is_a_function_of_seed_and_epoch():
    ds = Indexed(16)

    def draws(epoch):
        return [float(v) for batch in make_loader(ds, batch_size=4, shuffle=True, seed=0, epoch=epoch, num_workers=2) for v in batch[1]]

    first = draws(5)
    assert first == draws(5)
    assert first != draws(6)


def test_make_loader_distributed_ranks_split_the_data(monkeypatch):
    from torch.utils.data.distributed import DistributedSampler

    ds = Indexed(20)
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = make_loader(ds, batch_size=5, shuffle=True, seed=7, epoch=1, distributed=True, num_workers=0)
        assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.epoch == 1
        seen.append(order(loader))
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(20))


def test_default_num_workers():
    assert 0 <= D.default_num_workers() <= 4


# pinned head / sum of the digits test rows (see test_digits_split_is_stable_and_ignores_seed)
TEST_HEAD = [0, 4, 20, 25, 33]
TEST_SUM = 340178


# --------------------------------------------------------------------------- a run's data again


def test_every_command_rebuilds_the_validation_set_fit_held_out(tmp_path):
    """calibrate/evaluate (run_split) and profile (validation_batches) go through one function and
    get exactly the images load_data held out at fit time, from the artifact's recipe or recipe.json."""
    import json
    from types import SimpleNamespace

    import torch

    from scan_cli.data import run_split, validation_batches

    make_class_tree(tmp_path / "d", ["a", "b", "c"], 10)
    recipe = {"data": str(tmp_path / "d"), "val_fraction": 0.3, "seed": 5}
    fit = load_data(recipe["data"], data_config=HALF, train_transform="none", val_fraction=0.3, seed=5)
    want = torch.stack([x for x, _ in all_items(fit.val)])
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.json").write_text(json.dumps(recipe))
    for stored in (recipe, None):  # the artifact's own recipe, else recipe.json
        info = SimpleNamespace(recipe=stored, data_config=HALF, input_size=16, classes=["a", "b", "c"])
        val, _ = run_split(run, info, "val")
        assert torch.equal(torch.stack([x for x, _ in all_items(val)]), want)
        batches, reason = validation_batches(run, info, batch_size=4)
        assert reason is None and torch.equal(torch.cat(batches), want)


# --------------------------------------------------------------------------- symlinks in image folders


def test_symlink_loops_and_duplicates_in_a_folder_keep_every_label_right(tmp_path, caplog):
    """3 files once became 243 entries with wrong labels: a loop is never followed, a file reached
    twice is listed once, and a val/ file that is a train file is left out of val."""
    root = tmp_path / "f"
    make_class_tree(root / "train", ["a", "b"], 3)
    (root / "train" / "a" / "up").symlink_to(root / "train")  # loop, and a way into class b
    (root / "train" / "b" / "dup.png").symlink_to(root / "train" / "a" / "img000.png")
    make_class_tree(root / "val", ["a", "b"], 2, seed=1)
    (root / "val" / "a" / "leak.png").symlink_to(root / "train" / "a" / "img001.png")
    with caplog.at_level(logging.WARNING):
        d = load_data(str(root), data_config=HALF)
    assert d.split_sizes == {"train": 6, "val": 4}
    for p, lab in d.train.samples:
        assert Path(p).relative_to(root / "train").parts[0] == d.classes[lab] and "up" not in Path(p).parts
    train_files = {str(Path(p).resolve()) for p in d.train.paths}
    assert len(train_files) == 6 and not train_files & {str(Path(p).resolve()) for p in d.val.paths}
    assert "dup.png" in caplog.text and "leak.png" in caplog.text

"""The export's numpy + Pillow preprocessing (inference/preprocess.py) against the run's eval transform.

The manifest describes the eval transform (`export.describe_transform`); `Preprocessing` rebuilt from
that description, fed the same files (JPEG draft mode included), must give bit for bit the tensors
torchvision gives, for every data config `scan fit` can record and for images of every shape.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

sys.path.insert(0, str(Path(__file__).parent))
from test_prediction import make_bad_files, make_images  # noqa: E402

CONFIGS = [
    (32, {"crop_pct": 0.875, "interpolation": "bilinear"}),
    (32, {"crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.5], "std": [0.5]}),
    (48, {"crop_pct": 0.9, "interpolation": "bicubic", "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3]}),
    (40, {"crop_pct": 0.95, "crop_mode": "squash", "interpolation": "bilinear"}),
    (24, {"crop_pct": 0.875, "interpolation": "nearest"}),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("pre")
    paths = make_images(folder, n=12, seed=5)
    rng = np.random.default_rng(0)
    for name, (w, h) in {"big.jpg": (900, 610), "tall.jpg": (300, 1001), "tiny.png": (5, 9), "wide.png": (97, 31)}.items():
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / name, quality=90)  # big photos go through JPEG draft mode
        paths.append(folder / name)
    return paths


def reference(paths, transform):
    """What the torch engine's per-image path gives (ImageFiles: open_rgb with draft mode + the transform)."""
    from scan_cli.data.images import ImageFiles

    items = [ImageFiles(paths, transform)[i] for i in range(len(paths))]
    return [(i, t.numpy() if t is not None else None, e) for i, t, e in items]


@pytest.mark.parametrize("size,config", CONFIGS, ids=[f"{s}-{c.get('crop_mode', 'center')}-{c['interpolation']}"
                                                       for s, c in CONFIGS])
def test_numpy_preprocessing_is_the_eval_transform_bit_for_bit(files, size, config):
    from scan_cli.data import eval_transform
    from scan_cli.inference.export import describe_transform
    from scan_cli.inference.preprocess import Preprocessing, batches

    transform = eval_transform(config, size)
    pre = Preprocessing(describe_transform(transform), [None, 3, size, size])
    assert pre.size == (size, size)
    ref = reference(files, transform)
    got = {}
    for indices, batch, errors in batches(files, pre, batch_size=5, threads=2):
        assert not errors and batch.dtype == np.uint8
        x = pre.normalize(batch)
        assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape[1:] == (3, size, size)
        got.update(zip(indices, x))
    assert sorted(got) == list(range(len(files)))
    for i, tensor, _ in ref:
        assert np.array_equal(got[i], tensor), (files[i].name, float(np.abs(got[i] - tensor).max()))
    # one image without batches: the same
    from scan_cli.data.images import open_rgb

    assert np.array_equal(pre(open_rgb(files[-1], draft=pre.draft)), ref[-1][1])


def test_unreadable_files_are_error_rows_and_the_rest_keep_their_rows(files, tmp_path):
    from scan_cli.data import eval_transform
    from scan_cli.inference.export import describe_transform
    from scan_cli.inference.preprocess import Preprocessing, batches

    bad = sorted(make_bad_files(tmp_path / "bad"))
    paths = [files[0], bad[0], files[1], bad[1], files[2], files[3]]
    transform = eval_transform({"crop_pct": 0.875}, 32)
    pre = Preprocessing(describe_transform(transform))
    seen_errors, rows = [], {}
    for indices, batch, errors in batches(paths, pre, batch_size=3, threads=1, prefetch=False):
        seen_errors += [i for i, _ in errors]
        if batch is not None:
            assert len(batch) == len(indices)
            rows.update(zip(indices, pre.normalize(batch)))
    assert seen_errors == [1, 3] and sorted(rows) == [0, 2, 4, 5]
    ref = reference(paths, transform)
    for i in rows:
        assert np.array_equal(rows[i], ref[i][1])


def test_a_description_it_cannot_reproduce_is_one_line():
    from scan_cli.errors import ScanError
    from scan_cli.inference.preprocess import Preprocessing

    with pytest.raises(ScanError, match="export again") as info:
        Preprocessing({"resize_shorter_side": 36, "interpolation": "area-magic", "center_crop": [32, 32]})
    assert "\n" not in str(info.value)
    with pytest.raises(ScanError, match="no fixed size"):
        Preprocessing({"resize_shorter_side": 36})

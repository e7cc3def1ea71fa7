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


DESCRIBED = CONFIGS + [
    (28, {"input_size": [3, 28, 28], "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616],
          "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}),  # a CIFAR run's
    (224, {}),  # the defaults: ImageNet mean/std, crop_pct 0.875
    (33, {"crop_pct": 0.9, "interpolation": "random", "crop_mode": "squash"}),
    (64, {"crop_pct": 0.875, "interpolation": "lanczos", "mean": [0.1, 0.2, 0.30000001]}),
    (17, {"crop_pct": 1.0, "interpolation": "hamming", "crop_mode": None, "std": [1 / 3, 0.2, 0.7]}),
]


@pytest.mark.parametrize("size,config", DESCRIBED)
def test_the_eval_transform_is_worked_out_from_the_data_config_without_building_it(size, config):
    """`scan predict` on a run preprocesses from its data config (no timm, no torchvision: issue 21):
    the description is the built transform's, and the float32 mean and std are its Normalize's."""
    from scan_cli.data import eval_transform
    from scan_cli.data.transforms import eval_preprocessing
    from scan_cli.inference.export import describe_transform
    from scan_cli.inference.file_batches import steps_of
    from scan_cli.inference.torch_engine import run_steps

    transform = eval_transform(config, size)
    assert eval_preprocessing(config, size) == describe_transform(transform)
    mine, built = run_steps(config, size), steps_of(transform)
    assert mine.size == built.size and mine.draft == built.draft
    for a, b in ((mine.mean, built.mean), (mine.std, built.std)):
        assert torch.equal(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32))


@pytest.mark.parametrize("config", [{"crop_mode": "border"}, {"interpolation": "nearest-exact"}])
def test_what_the_data_config_alone_cannot_say_is_left_to_the_transform(config):
    from scan_cli.data.transforms import eval_preprocessing
    from scan_cli.inference.torch_engine import run_steps

    assert eval_preprocessing(config, 32) is None and run_steps(config, 32) is None


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

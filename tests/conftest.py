import os

# Hermetic: never reach the network, never write into the checkout.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("SCAN_PROGRESS", "0")
if "SCAN_CACHE_DIR" not in os.environ:  # scan's own cache (timm's model list) goes to a temporary folder
    import tempfile

    os.environ["SCAN_CACHE_DIR"] = tempfile.mkdtemp(prefix="scan-cache-")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("SCAN_RUNS_DIR", str(tmp_path / "runs"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a whole test module (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): tiny convolutions and batch-1 forwards on a shared
    2-core machine run many times faster on one thread than on two OpenMP threads spinning against
    other processes, and are immune to busy neighbours. The previous count is restored after."""
    from scan_cli.devices import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture
def run_cli(capsys):
    """Run `scan ARGS` in-process; returns (exit_code, stdout, stderr)."""
    from scan_cli.cli import main

    def run(*args):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def make_color_folder(root, per_class=10, classes=("blue", "green", "red"), size=16, mislabel=0, seed=0):
    """Colour-coded classes with noise; ``mislabel`` images per class carry another class's colour."""
    import numpy as np
    from PIL import Image

    colors = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 40, 220)}
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            color = colors[classes[(c + 1) % len(classes)]] if i < mislabel else colors[name]
            img = np.clip(np.array(color, dtype=np.float32) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype("uint8")
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A small real run: resnet10_cifar trained 2 epochs on a train/val/test colour folder."""
    from scan_cli.training.recipes import Recipe
    from scan_cli.training.loop import FitOptions, fit

    base = tmp_path_factory.mktemp("colors")
    for split, n, bad, seed in (("train", 16, 1, 0), ("val", 10, 1, 1), ("test", 10, 1, 2)):
        make_color_folder(base / split, per_class=n, mislabel=bad, seed=seed)
    recipe = Recipe(data=str(base), img_size=16, epochs=2, batch_size=8, lr=0.05, schedule="constant",
                    augment="none", hflip=False, workers=0, mode="joint")
    out = tmp_path_factory.mktemp("runs") / "run"
    fit(FitOptions(backbone="resnet10_cifar", recipe=recipe, out=out))
    return out


@pytest.fixture
def scan_log():
    """Messages the scan_cli logger emits during the test (warnings included), as strings."""
    import logging

    records = []

    class _Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("scan_cli")
    handler = _Keep(level=logging.DEBUG)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def copy_of(run_dir, tmp_path):
    """A copy of a (session-wide) run for one test to change or damage."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def without_run_line(err: str) -> str:
    """stderr without the first line that names the run a command used (every command that uses a run
    says which): what is left of a failure must be one line."""
    lines = err.splitlines(keepends=True)
    return "".join(lines[1:]) if lines and lines[0].startswith("run ") else err


def tiny_calibrated_model(num_splits: int, thresholds: list):
    """(model, info): test_resnet at 16 px with ``num_splits`` exits' split points, 3 classes, random
    weights (seed 0) and ``thresholds`` stored as its calibration; for export tests."""
    import torch

    from scan_cli import artifact
    from scan_cli.backbones.registry import default_registry
    from scan_cli.model import HeadConfig, build_scan_model

    torch.manual_seed(0)
    registry = default_registry()
    spec = registry.get("test_resnet")
    model = build_scan_model(spec, num_classes=3, head=HeadConfig.preset("slim"), input_size=16,
                             split_modules=[s.module for s in spec.split_points][:num_splits]).eval()
    config = {"mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear", "crop_pct": 1.0,
              "crop_mode": "center", "input_size": [3, 16, 16]}
    info = artifact.info_for(model, spec, registry, classes=["a", "b", "c"], data_config=config, input_size=16)
    info.calibration = {"thresholds": list(thresholds), "score": "max_softmax", "fallback": "last"}
    return model, info

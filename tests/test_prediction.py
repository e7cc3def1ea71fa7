"""scan_cli.inference.torch_engine: thresholds, real early exit on files, equivalence with the plain backbone and
with the cascade simulation, bad files.

The model is an untrained test_resnet whose weights and BN statistics are scrambled so that its
exits disagree with each other and predict different classes for different images: otherwise a
wrong exit or a constant prediction could pass the equivalence checks by luck (the tests assert
that they cannot).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from scan_cli.errors import ScanError, UsageError  # noqa: E402

BACKBONE = "test_resnet"
SIZE = 48
CLASSES = ["cat", "dog", "owl"]
DATA_CONFIG = {"input_size": [3, SIZE, SIZE], "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.25, 0.25],
               "interpolation": "bilinear", "crop_pct": 0.9, "crop_mode": "center"}


# -- helpers shared with test_cli_predict.py ------------------------------------------------------
def scramble(model, seed: int = 0) -> None:
    """Random weights and BN statistics so that exits give varied, disagreeing predictions."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
            elif isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))


def make_run(folder: Path, calibration=None, seed: int = 0) -> Path:
    """A run folder holding an untrained (scrambled) SCAN test_resnet for 3 classes at SIZE px."""
    from scan_cli import artifact
    from scan_cli.model import HeadConfig, build_scan_model
    from scan_cli.backbones.registry import default_registry

    torch.manual_seed(seed)
    registry = default_registry()
    spec = registry.get(BACKBONE)
    model = build_scan_model(spec, num_classes=len(CLASSES), head=HeadConfig(), input_size=SIZE)
    scramble(model, seed)
    info = artifact.info_for(model, spec, registry, classes=CLASSES, data_config=DATA_CONFIG, input_size=SIZE)
    info.calibration = calibration
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    artifact.save(model, info, folder / "model.safetensors")
    return folder


def make_images(folder: Path, n: int = 24, seed: int = 0) -> list:
    """Varied small images: RGB, grayscale, RGBA and palette, several sizes, nested folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(30, 80)), int(rng.integers(30, 80))
        base = rng.random(3) * 255
        arr = np.clip(base + rng.normal(0, 40 + 10 * (i % 5), (h, w, 3)), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        mode = ("RGB", "L", "RGBA", "P")[i % 4]
        if mode != "RGB":
            img = img.convert(mode)
        sub = folder / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img{i:03d}.{'png' if i % 3 else 'jpg'}"
        if path.suffix == ".jpg" and mode in ("RGBA", "P"):
            img = img.convert("RGB")
        img.save(path)
        paths.append(path)
    return paths


def make_bad_files(folder: Path) -> dict:
    """{path: expected words in the error}: a text file named .png, a truncated PNG, an empty JPEG."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "notes.png"
    text.write_text("this is not an image\n")
    good = folder / "full.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated = folder / "truncated.png"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    good.unlink()
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    return {text: "not an image", truncated: "truncated", empty: "not an image"}


def decoded_batch(paths, info):
    """The images exactly as predict preprocesses them, stacked."""
    from scan_cli.data import eval_transform
    from scan_cli.data.images import open_rgb

    transform = eval_transform(info.data_config, info.input_size)
    return torch.stack([transform(open_rgb(p)) for p in paths])


def simulate_cascade(logits, thresholds, score="max_softmax", fallback="last"):
    """Reference exit rule on all exits' logits [n, K, C]: first exit k < K-1 with score >= t_k,
    else the last exit (or the mean of all exits' logits with fallback='ensemble').
    Returns (predicted class [n], exit index [n])."""
    from scan_cli.scoring import confidence

    n, K, _ = logits.shape
    preds = np.empty(n, dtype=np.int64)
    exits = np.empty(n, dtype=np.int64)
    scores = torch.stack([confidence(logits[:, k], score) for k in range(K)], dim=1).numpy()
    final = logits.mean(dim=1) if fallback == "ensemble" else logits[:, K - 1]
    for i in range(n):
        for k in range(K - 1):
            t = thresholds[k]
            if t is not None and scores[i, k] >= t:
                preds[i], exits[i] = int(logits[i, k].argmax()), k
                break
        else:
            preds[i], exits[i] = int(final[i].argmax()), K - 1
    return preds, exits


def spread_thresholds(logits, score="max_softmax"):
    """Thresholds that send some images out at each shallow exit, placed midway between two
    distant scores so that float noise from different batch compositions cannot flip a decision."""
    from scan_cli.scoring import confidence

    n, K, _ = logits.shape
    remaining = np.ones(n, dtype=bool)
    thresholds = []
    for k in range(K - 1):
        s = np.sort(confidence(logits[:, k], score).numpy()[remaining])
        if len(s) < 4:
            thresholds.append(None)
            continue
        # fire for roughly the top third of the images still running
        gaps = [(s[j + 1] - s[j], j) for j in range(len(s) * 2 // 3 - 1, len(s) - 1)]
        gap, j = max(gaps)
        assert gap > 1e-4
        t = float((s[j] + s[j + 1]) / 2)
        thresholds.append(t)
        remaining &= ~(confidence(logits[:, k], score).numpy() >= t)
    return thresholds


# -- fixtures ---------------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def loaded(run_dir):
    from scan_cli.artifact import load
    from scan_cli.data import eval_transform

    model, info = load(run_dir / "model.safetensors")
    return model, info, eval_transform(info.data_config, info.input_size)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"))


COSTS = [10.0, 20.0, 30.0, 45.0]
BACKBONE_MACS = 40.0


def _predict(loaded, paths, thresholds, fallback="last", score="max_softmax", **kw):
    from scan_cli.inference.torch_engine import predict_paths
    from scan_cli.policy import ExitPolicy

    model, info, transform = loaded
    policy = ExitPolicy(list(thresholds), score, fallback, source="test")
    kw.setdefault("progress", False)
    return predict_paths(model, paths, transform, policy, classes=info.classes, costs=COSTS,
                         backbone_macs=BACKBONE_MACS, **kw)


# -- thresholds ---------------------------------------------------------------------------------------
def test_parse_thresholds():
    from scan_cli.policy import parse_thresholds

    assert parse_thresholds("0.9,0.8,0.95", 4) == [0.9, 0.8, 0.95]
    assert parse_thresholds("none, inf ,0.5", 4) == [None, None, 0.5]
    assert parse_thresholds("0.9,never,0.5,none", 4) == [0.9, None, 0.5]  # a K-th 'none' is allowed
    for bad in ("0.9,0.8", "0.9,0.8,0.7,0.6", "0.9,x,0.7", "nan,0.1,0.2"):
        with pytest.raises(UsageError):
            parse_thresholds(bad, 4)



def exit_policy(info, run_dir, num_exits, *, device="auto", **kw):
    """The call both engines make: the run's stored calibration, and a recalibration on the run's
    validation data (not saved) for --target-acc or another --fallback."""
    import importlib

    from scan_cli.inference.plan import exit_policy as policy_for_call
    from scan_cli.policy import Calibration

    def recalibrate(**settings):
        run = importlib.import_module("scan_cli.calibration.run")
        return run.calibrate_run(run_dir, save=False, device=device, **settings)

    return policy_for_call(Calibration.from_metadata(info.calibration, num_exits), num_exits,
                           recalibrate=recalibrate, **kw)


def test_exit_policy_sources(run_dir, caplog):
    from scan_cli.artifact import read_info

    info = read_info(run_dir / "model.safetensors")
    info.calibration = None
    with caplog.at_level(logging.WARNING, logger="scan_cli"):
        p = exit_policy(info, run_dir, 4)
    assert p.thresholds == [None, None, None] and "not calibrated" in caplog.text

    # as the calibration module writes them: never-firing exits are inf (JSON Infinity)
    info.calibration = {"thresholds": [float("inf"), 0.6, 0.5, None], "score": "max_softmax", "fallback": "last"}
    assert exit_policy(info, run_dir, 4).thresholds == [None, 0.6, 0.5]
    info.calibration = {"thresholds": [0.7, 0.6, 0.5, None], "score": "margin", "fallback": "ensemble"}
    p = exit_policy(info, run_dir, 4)
    assert (p.thresholds, p.score, p.fallback, p.source) == ([0.7, 0.6, 0.5], "margin", "ensemble", "calibration")
    p = exit_policy(info, run_dir, 4, thresholds="0.1,none,0.3", fallback="last")
    assert (p.thresholds, p.score, p.fallback, p.source) == ([0.1, None, 0.3], "margin", "last", "--thresholds")
    with pytest.raises(UsageError, match="calibrated for score 'margin'"):
        exit_policy(info, run_dir, 4, score="max_softmax")
    with pytest.raises(UsageError):
        exit_policy(info, run_dir, 4, thresholds="0.1,0.2,0.3", target_acc=0.9)
    with pytest.raises(UsageError):
        exit_policy(info, run_dir, 4, fallback="vote")


def test_target_acc_calibrates_without_saving(run_dir, monkeypatch):
    import sys
    import types

    from scan_cli.artifact import read_info

    calls = []

    def calibrate_run(run, **kw):
        calls.append((Path(run), kw))
        return {"thresholds": [0.8, float("inf"), 0.6, None], "score": "max_softmax", "fallback": "ensemble"}

    monkeypatch.setitem(sys.modules, "scan_cli.calibration.run", types.SimpleNamespace(calibrate_run=calibrate_run))
    info = read_info(run_dir / "model.safetensors")
    p = exit_policy(info, run_dir, 4, target_acc=0.93)
    assert calls == [(run_dir, {"target_acc": 0.93, "save": False, "device": "auto"})]
    assert (p.thresholds, p.fallback) == ([0.8, None, 0.6], "ensemble")
    with pytest.raises(UsageError):
        exit_policy(info, run_dir, 4, target_acc=93)


# -- equivalence --------------------------------------------------------------------------------------
def test_never_firing_thresholds_equal_the_plain_backbone(loaded, images):
    model, info, _ = loaded
    report = _predict(loaded, images, [None, None, None], batch_size=7)
    x = decoded_batch(images, info)
    with torch.no_grad():
        plain = model.backbone(x).argmax(-1).tolist()
        first_exit = model(x)[0].argmax(-1).tolist()
    # the check can fail: classes vary and the first exit disagrees with the backbone somewhere
    assert len(set(plain)) > 1 and first_exit != plain
    assert [p.class_index for p in report.predictions] == plain
    assert [p.label for p in report.predictions] == [CLASSES[c] for c in plain]
    assert {p.exit_index for p in report.predictions} == {3}
    assert [p.path for p in report.predictions] == [str(p) for p in images]
    assert report.summary["exit_counts"] == [0, 0, 0, len(images)]
    assert report.summary["avg_macs"] == COSTS[-1] and report.exit_code == 0


@pytest.mark.parametrize("fallback", ["last", "ensemble"])
def test_given_thresholds_equal_the_cascade_simulation(loaded, images, fallback):
    model, info, _ = loaded
    x = decoded_batch(images, info)
    with torch.no_grad():
        logits = torch.stack([o.float() for o in model(x)], dim=1)
    thresholds = spread_thresholds(logits)
    ref_pred, ref_exit = simulate_cascade(logits, thresholds, fallback=fallback)
    assert len(set(ref_exit.tolist())) >= 3  # several exits really used

    report = _predict(loaded, images, thresholds, fallback=fallback, batch_size=5)
    assert [p.class_index for p in report.predictions] == ref_pred.tolist()
    assert [p.exit_index for p in report.predictions] == ref_exit.tolist()
    assert [p.exit for p in report.predictions] == (ref_exit + 1).tolist()
    assert [p.macs for p in report.predictions] == [COSTS[e] for e in ref_exit]
    counts = np.bincount(ref_exit, minlength=4)
    assert report.summary["exit_counts"] == counts.tolist()
    assert report.summary["avg_macs"] == pytest.approx(float((counts * np.array(COSTS)).sum() / len(images)))
    assert report.summary["macs_ratio"] == pytest.approx(report.summary["avg_macs"] / BACKBONE_MACS)

    # the same routing through the calibration module's simulation (what calibrate/evaluate promise):
    # with 'correct' meaning "equals predict's answer", every image must be correct at its exit
    from scan_cli.calibration import CascadeData, simulate
    from scan_cli.exit_outputs import exit_correctness

    answers = torch.tensor([p.class_index for p in report.predictions])
    scores, correct = exit_correctness(logits, answers, "max_softmax", fallback)
    shallow = [float("inf") if t is None else t for t in thresholds]
    exit_index, agrees, cost = simulate(CascadeData(scores, correct, np.array(COSTS)), shallow + [None])
    assert exit_index.tolist() == [p.exit_index for p in report.predictions]
    assert agrees.all()
    assert cost.tolist() == [p.macs for p in report.predictions]


def test_channels_last_gives_the_same_answers(run_dir, images):
    from scan_cli.artifact import load
    from scan_cli.data import eval_transform
    from scan_cli.devices import use_channels_last

    model, info = load(run_dir / "model.safetensors")  # its own copy: the layout is changed in place
    x = decoded_batch(images, info)
    with torch.no_grad():
        logits = torch.stack([o.float() for o in model(x)], dim=1)
    thresholds = spread_thresholds(logits)
    ref_pred, ref_exit = simulate_cascade(logits, thresholds)
    loaded = (model, info, eval_transform(info.data_config, info.input_size))
    report = _predict(loaded, images, thresholds, batch_size=8, channels_last=True)
    assert report.summary["channels_last"] is True
    assert any(p.dim() == 4 and p.shape[2] > 1 and not p.is_contiguous()
               and p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters())
    assert [p.class_index for p in report.predictions] == ref_pred.tolist()
    assert [p.exit_index for p in report.predictions] == ref_exit.tolist()
    assert use_channels_last("auto", model) is True and use_channels_last("off", model) is False
    with pytest.raises(UsageError):
        use_channels_last("sometimes", model)


def test_results_do_not_depend_on_the_batch_size(loaded, images):
    model, info, _ = loaded
    x = decoded_batch(images, info)
    with torch.no_grad():
        logits = torch.stack([o.float() for o in model(x)], dim=1)
    thresholds = spread_thresholds(logits)
    one = _predict(loaded, images, thresholds, batch_size=1)
    many = _predict(loaded, images, thresholds, batch_size=64)
    assert [(p.class_index, p.exit_index) for p in one.predictions] == [(p.class_index, p.exit_index) for p in many.predictions]
    for a, b in zip(one.predictions, many.predictions):
        assert a.confidence == pytest.approx(b.confidence, abs=1e-4)


def test_top_k_and_confidence(loaded, images):
    report = _predict(loaded, images[:6], [None, None, None], top_k=5)
    for p in report.predictions:
        assert len(p.top_k) == 3  # clamped to the number of classes
        probs = [t["probability"] for t in p.top_k]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert p.top_k[0] == {"label": p.label, "probability": p.confidence}
        assert sorted(t["label"] for t in p.top_k) == sorted(CLASSES)
        assert p.score == pytest.approx(p.confidence)  # max_softmax


# -- bad files ----------------------------------------------------------------------------------------
def test_bad_files_are_reported_and_the_rest_predicted(loaded, images, tmp_path):
    bad = make_bad_files(tmp_path / "bad")
    paths = list(images[:3]) + list(bad) + list(images[3:6])
    report = _predict(loaded, paths, [None, None, None], batch_size=4, workers=1)
    assert [p.path for p in report.predictions] == [str(p) for p in images[:6]]
    assert [e["path"] for e in report.errors] == [str(p) for p in bad]
    for e, words in zip(report.errors, bad.values()):
        assert words in e["error"]
    assert report.summary["images"] == 9 and report.summary["errors"] == 3 and report.summary["predicted"] == 6
    assert report.exit_code == 3

    only_bad = _predict(loaded, list(bad), [None, None, None])
    assert only_bad.predictions == [] and len(only_bad.errors) == 3 and only_bad.exit_code == 1
    assert only_bad.summary["avg_macs"] == 0.0


def test_summary_lines_and_csv(loaded, images, tmp_path):
    import csv

    from scan_cli.inference.report import summary_lines, write_csv

    bad = make_bad_files(tmp_path / "bad")
    report = _predict(loaded, list(images[:5]) + list(bad)[:1], [0.0, None, None], top_k=2)
    assert report.summary["exit_shares"] == [1.0, 0.0, 0.0, 0.0]  # threshold 0 fires for everyone
    text = "\n".join(summary_lines(report.summary))
    assert "1/4: 100.0%" in text and "1 error" in text and "counted speed-up 4.00x" in text  # 10 of 40 MACs
    out = tmp_path / "out" / "pred.csv"
    write_csv(report, out, top_k=2)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6
    assert rows[0]["exit"] == "1" and rows[0]["exit_index"] == "0" and rows[0]["top2_label"] in CLASSES
    assert rows[-1]["error"] and not rows[-1]["label"]
    assert not list(out.parent.glob(".*tmp*"))


@pytest.mark.parametrize("cpus, processes", [(1, 0), (2, 0), (3, 2), (8, 4)])
def test_default_workers(monkeypatch, cpus, processes):
    from scan_cli.data import loader
    from scan_cli.inference.plan import workers_for as _workers_for

    monkeypatch.setattr(loader, "usable_cpus", lambda: cpus)
    assert loader.default_num_workers() == max(0, min(4, cpus - 1))
    assert _workers_for(None, 10, 64) == 0  # one batch: nothing to overlap
    # several batches: decoding processes, except on 2 CPUs or fewer, where a thread decodes (no core to spare)
    assert _workers_for(None, 200, 64) == processes
    assert _workers_for(3, 10, 64) == 3  # an explicit --workers always wins


def test_find_images_errors_are_one_line(tmp_path):
    from scan_cli.data.images import find_images

    (tmp_path / "empty").mkdir()
    for arg in (str(tmp_path / "empty"), str(tmp_path / "*.png"), str(tmp_path / "missing")):
        with pytest.raises(ScanError) as exc:
            find_images([arg])
        assert "\n" not in str(exc.value)


def test_another_fallback_recalibrates_for_it(run_dir, monkeypatch):
    """Thresholds searched for --fallback last do not keep their promise under ensemble: recalibrate."""
    import sys
    import types

    from scan_cli.artifact import read_info, update_metadata

    calls = []

    def calibrate_run(run, **kw):
        calls.append(kw)
        return {"thresholds": [0.7, 0.7, 0.7, None], "score": "max_softmax", "fallback": kw["fallback"]}

    update_metadata(run_dir / "model.safetensors", calibration={
        "thresholds": [0.9, 0.9, 0.9, None], "score": "max_softmax", "fallback": "last",
        "settings": {"target_acc": None, "max_drop": 0.01, "budget": None, "confidence": None}})
    monkeypatch.setitem(sys.modules, "scan_cli.calibration.run", types.SimpleNamespace(calibrate_run=calibrate_run))
    info = read_info(run_dir / "model.safetensors")
    same = exit_policy(info, run_dir, 4, fallback="last")
    assert calls == [] and same.thresholds == [0.9, 0.9, 0.9]
    other = exit_policy(info, run_dir, 4, fallback="ensemble")
    assert calls == [{"save": False, "score": "max_softmax", "fallback": "ensemble", "device": "auto", "max_drop": 0.01}]
    assert other.thresholds == [0.7, 0.7, 0.7] and other.fallback == "ensemble" and "recalibrated" in other.source


# -- from files to answers (issue 10 item 5) -------------------------------------------------------
def test_uint8_batches_normalised_on_the_device_are_bit_for_bit_the_per_image_transform(loaded, images, tmp_path):
    from scan_cli.data.transforms import batch_preprocessing
    from scan_cli.inference.file_batches import to_model_input, uint8_batches

    model, info, transform = loaded
    pil_steps, size, mean, std = batch_preprocessing(transform)
    assert size == (SIZE, SIZE)
    make_bad_files(tmp_path / "bad")
    paths = list(images[:7]) + sorted((tmp_path / "bad").iterdir()) + list(images[7:])
    mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    for workers in (0, 2):
        got, errors = {}, {}
        for indices, u8, errs in uint8_batches(paths, pil_steps, size, batch_size=5, workers=workers, pin=False):
            assert u8 is None or (u8.dtype == torch.uint8 and u8.shape[1:] == (SIZE, SIZE, 3))
            errors.update(dict(errs))
            if u8 is not None:
                x = to_model_input(u8, mean, std, "cpu", torch.channels_last)
                assert x.is_contiguous(memory_format=torch.channels_last)
                got.update({i: x[r] for r, i in enumerate(indices)})
        assert sorted(errors) == [7, 8, 9]
        want = decoded_batch([paths[i] for i in sorted(got)], info)
        assert torch.equal(torch.stack([got[i] for i in sorted(got)]), want)  # not approx: the same bits


def test_batch_preprocessing_only_splits_what_it_can_reproduce():
    from scan_cli.data import train_transform
    from scan_cli.data.transforms import batch_preprocessing

    cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    assert batch_preprocessing(train_transform(cfg, "rrc")) is None  # random steps: per image
    assert batch_preprocessing(train_transform(cfg, "pad_crop")) is None
    assert batch_preprocessing(lambda img: img) is None


@pytest.mark.parametrize("workers, channels_last, steps", [(0, True, "transform"), (0, False, "transform"),
                                                           (2, True, "transform"), (0, True, "data config"),
                                                           (2, False, "data config")])
def test_predictions_are_those_of_the_per_image_path(loaded, images, tmp_path, workers, channels_last, steps):
    """The uint8 path gives the answers (labels, exits, confidences: equal, not close) that the
    per-image float path gave before it, bad files included; with its steps split from the eval
    transform, or worked out from the run's data config without timm or torchvision (what `scan
    predict` does, issue 21)."""
    from scan_cli.inference.file_batches import BatchSteps
    from scan_cli.inference.torch_engine import run_steps

    model, info, transform = loaded
    make_bad_files(tmp_path / "bad")
    paths = list(images[:5]) + sorted((tmp_path / "bad").iterdir()) + list(images[5:])
    x = decoded_batch(images, info)
    with torch.no_grad():
        thresholds = spread_thresholds(torch.stack([o.float() for o in model(x)], dim=1))
    per_image = (model, info, lambda img: transform(img))  # not splittable: the DataLoader over ImageFiles
    kw = dict(batch_size=6, workers=workers, channels_last=channels_last)
    before = _predict(per_image, paths, thresholds, **kw)
    if steps == "data config":
        loaded = (model, info, run_steps(info.data_config, info.input_size))
        assert isinstance(loaded[2], BatchSteps)
    after = _predict(loaded, paths, thresholds, **kw)
    rows = lambda r: [(p.path, p.class_index, p.exit_index, p.confidence, p.score) for p in r.predictions]  # noqa: E731
    assert rows(after) == rows(before) and len(rows(after)) == len(images)
    assert after.errors == before.errors and len(after.errors) == 3
    assert len({p.exit_index for p in after.predictions}) >= 3  # the check can fail: exits really differ
    model.to(memory_format=torch.contiguous_format)

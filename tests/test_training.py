"""Training: the SCAN loss, schedules, a real fit on a tiny image folder, exact resume, heads-only."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scan_cli.errors import ScanError
from scan_cli.training.recipes import Recipe, load_recipe
from scan_cli.training.loop import FitOptions, fit
from scan_cli.training.loss import scan_loss
from scan_cli.training.schedule import lr_at

COLORS = [(220, 30, 30), (30, 200, 40), (40, 40, 220)]


def make_folder(root: Path, per_class: int = 14, classes=("red", "green", "blue"), size: int = 20) -> Path:
    """Colour-coded classes with noise: learnable in an epoch or two."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.array(COLORS[c % 3], dtype=np.float32)
            img = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype("uint8")
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def tiny_recipe(**kw) -> Recipe:
    base = dict(data=None, img_size=16, epochs=2, batch_size=8, lr=0.05, schedule="constant", augment="none",
                hflip=False, workers=0, val_fraction=0.25, mode="joint")
    base.update(kw)
    return Recipe(**base)


# -- loss --------------------------------------------------------------------------------------
def _logits(n=6, c=4, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, generator=g) for _ in range(k)]


def test_loss_without_kd_and_hint_is_weighted_cross_entropy():
    import torch.nn.functional as F

    z = _logits()
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    r = Recipe(kd=False, feature_hint=False)
    loss, _ = scan_loss(z, None, y, r)
    expected = F.cross_entropy(z[-1], y) + sum(F.cross_entropy(q, y) for q in z[:-1])
    assert torch.allclose(loss, expected)


# The KD and hint terms are checked against hand-computed values in test_loss.py.


def test_paper_schedule():
    r = load_recipe("cifar100-resnet18-paper")
    assert (r.lr, r.momentum, r.weight_decay, r.batch_size, r.epochs) == (0.1, 0.9, 5e-4, 128, 200)
    assert lr_at(r, 0) == pytest.approx(0.1)
    assert lr_at(r, 75) == pytest.approx(0.01)
    assert lr_at(r, 130) == pytest.approx(0.001)
    assert lr_at(r, 199) == pytest.approx(0.0001)
    c = Recipe(lr=1.0, schedule="cosine", epochs=10, warmup_epochs=0)
    assert lr_at(c, 0) == pytest.approx(1.0) and lr_at(c, 5) == pytest.approx(0.5) and lr_at(c, 10) == pytest.approx(0.0, abs=1e-9)


# -- recipes ----------------------------------------------------------------------------------------
def test_recipe_precedence_and_unknown_key(tmp_path):
    r = load_recipe("digits-cpu", {"epochs": 3, "lr": None})
    assert r.epochs == 3 and r.lr == 0.1 and r.backbone == "resnet10_cifar"
    assert load_recipe(None).epochs == Recipe().epochs
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = 2\nlearning_rate = 0.1\n")
    with pytest.raises(ScanError, match="learning_rate"):
        load_recipe(str(bad))


def test_every_shipped_recipe_validates():
    from scan_cli.training.recipes import available

    names = available()
    assert {"digits-cpu", "cifar100-resnet18-paper", "imagenet-resnet50-heads"} <= set(names)
    for name in names:
        load_recipe(name).validate()


# -- fitting ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("imgs"))


def test_fit_writes_a_complete_run(folder, tmp_path):
    out = tmp_path / "run"
    summary = fit(FitOptions(backbone="resnet10_cifar", recipe=tiny_recipe(data=str(folder)), out=out))
    assert (out / "model.safetensors").is_file() and (out / "recipe.json").is_file()
    assert json.loads((out / "recipe.json").read_text())["backbone"] == "resnet10_cifar"
    assert len(summary["val"]["exits"]) == 4 and summary["val"]["n"] > 0
    assert len(summary["history"]) == 2
    latest = Path(os.environ["SCAN_RUNS_DIR"])
    from scan_cli import artifact

    model, info = artifact.load(out / "model.safetensors")
    assert info.classes == ["blue", "green", "red"] and info.recipe["epochs"] == 2
    assert (latest / "latest").resolve() == out.resolve()  # latest lives in the runs root, wherever the run is
    del model


def test_resume_ends_with_identical_weights(folder, tmp_path):
    recipe = tiny_recipe(data=str(folder), epochs=2)
    straight = tmp_path / "straight"
    fit(FitOptions(backbone="resnet10_cifar", recipe=recipe, out=straight))

    broken = tmp_path / "broken"

    def interrupt(epoch, history):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(FitOptions(backbone="resnet10_cifar", recipe=recipe, out=broken), on_epoch=interrupt)
    assert (broken / "checkpoint.safetensors").is_file() and not (broken / "model.safetensors").exists()
    fit(FitOptions(backbone="resnet10_cifar", recipe=recipe, resume=broken))

    from safetensors.torch import load_file

    a, b = load_file(str(straight / "model.safetensors")), load_file(str(broken / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_training_set_smaller_than_the_batch_still_trains(folder, tmp_path, scan_log):
    # 42 images, a quarter held out: ~31 to train on, the default batch is 64 (full batches only)
    out = tmp_path / "small"
    summary = fit(FitOptions(backbone="resnet10_cifar", recipe=tiny_recipe(data=str(folder), epochs=1, batch_size=64, lr=None),
                             out=out))
    train = summary["split_sizes"]["train"]
    assert summary["history"][0]["images"] == train < 64
    saved = json.loads((out / "recipe.json").read_text())
    assert saved["batch_size"] == train and saved["lr"] < 0.4 * 64 / 256  # the auto lr follows the smaller batch
    line = next(m for m in scan_log if m.startswith("recipe "))
    assert f"batch {train} (the whole training set; 64 asked)" in line


def test_heads_mode_keeps_the_backbone_fixed(folder, tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    weights = tmp_path / "w.pth"
    from scan_cli.backbones.registry import default_registry

    backbone = default_registry().get("resnet10_cifar").build(num_classes=10)
    torch.save(backbone.model.state_dict(), weights)  # a 10-class checkpoint: the classifier is replaced
    out = tmp_path / "heads"
    summary = fit(FitOptions(backbone="resnet10_cifar", recipe=tiny_recipe(data=str(folder), epochs=1, mode="auto"), out=out, weights=weights))
    assert summary["mode"] == "heads"
    trained = load_file(str(out / "model.safetensors"))
    original = backbone.model.state_dict()
    for k, v in original.items():
        if k.startswith("fc."):
            continue
        assert torch.equal(trained[f"backbone.model.{k}"], v), k  # weights and BN statistics untouched
    assert trained["backbone.model.fc.weight"].shape[0] == 3


def test_bad_data_leaves_no_run_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ScanError):
        fit(FitOptions(backbone="resnet10_cifar", recipe=tiny_recipe(data=str(empty))))
    one = make_folder(tmp_path / "one", classes=("only",), per_class=4)
    with pytest.raises(ScanError):
        fit(FitOptions(backbone="resnet10_cifar", recipe=tiny_recipe(data=str(one))))
    runs = Path(os.environ["SCAN_RUNS_DIR"])
    assert not runs.exists() or not any(runs.iterdir())


def test_weights_that_do_not_fit_are_refused(folder, tmp_path):
    from safetensors.torch import save_file

    w = tmp_path / "other.safetensors"
    save_file({"conv.weight": torch.zeros(3, 3)}, str(w))
    with pytest.raises(ScanError, match="does not fit"):
        fit(FitOptions(backbone="resnet10_cifar", recipe=tiny_recipe(data=str(folder)), weights=w, out=tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_cli_fit_json_and_print_recipe(run_cli, folder, tmp_path):
    code, out, err = run_cli("fit", "--recipe", "digits-cpu", "--epochs", "1", "--print-recipe")
    assert code == 0 and json.loads(out)["epochs"] == 1 and json.loads(out)["backbone"] == "resnet10_cifar"
    code, out, err = run_cli("fit", "resnet10_cifar", "--data", str(folder), "--epochs", "1", "--img-size", "16",
                             "--batch-size", "8", "--workers", "0", "--out", str(tmp_path / "cli"), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["backbone"] == "resnet10_cifar" and len(doc["val"]["exits"]) == 4
    code, out, err = run_cli("fit", "resnet10_cifar", "--data", str(tmp_path / "nope"))
    assert code == 1 and err.startswith("error:") and "Traceback" not in err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_two_processes_gloo(folder, tmp_path):
    """torchrun with 2 CPU processes: DDP + distributed sampler; only rank 0 writes."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "scan_cli", "fit", "resnet10_cifar", "--data", str(folder), "--epochs", "1", "--img-size", "16",
           "--batch-size", "4", "--workers", "0", "--out", str(out), "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(res.stdout)  # exactly one JSON document: rank 1 prints nothing
    assert doc["world_size"] == 2
    assert (out / "model.safetensors").is_file()


def test_heads_mode_keeps_a_matching_classifier(folder, tmp_path, monkeypatch):
    """Weights already made for these 3 classes: the backbone (classifier included) stays as it was,
    and the exit heads are trained: they moved away from the weights they were built with (not
    just "non-zero", which any random initialisation is)."""
    from safetensors.torch import load_file, save_file

    import scan_cli.model
    from scan_cli.backbones.registry import default_registry

    torch.manual_seed(1)
    backbone = default_registry().get("resnet10_cifar").build(num_classes=3)
    weights = tmp_path / "w3.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.model.state_dict().items()}, str(weights))
    built = {}
    real_build = scan_cli.model.build_scan_model

    def build_and_remember(*args, **kwargs):
        model = real_build(*args, **kwargs)
        built.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(scan_cli.model, "build_scan_model", build_and_remember)
    out = tmp_path / "heads3"
    fit(FitOptions(backbone="resnet10_cifar", recipe=tiny_recipe(data=str(folder), epochs=1, mode="heads"), out=out, weights=weights))
    trained = load_file(str(out / "model.safetensors"))
    for name, value in backbone.model.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(trained[f"backbone.model.{name}"], value), name  # frozen, BN statistics included
    for k in range(3):
        for part in ("fc.weight", "fc.bias"):
            key = f"heads.{k}.{part}"
            assert not torch.equal(trained[key], built[key]), f"{key} was not trained"


def test_pretrained_offline_fails_at_once(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ScanError, match="--weights FILE"):
        fit(FitOptions(backbone="test_resnet", recipe=tiny_recipe(data=str(folder), pretrained=True), out=tmp_path / "p"))
    assert not (tmp_path / "p").exists()

"""`scan fit`'s first mistakes are answered before torch, timm or `datasets` is imported (issue 24),
with the messages and exit codes the full run gives. Each command runs in a process where
importing torch, timm or `datasets` fails, so reaching them would change the error.
(Speed is measured in bench/bench_startup.py, never asserted here.)"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scan_cli.errors import ScanError

BLOCKED = ("torch", "timm", "datasets")


@pytest.fixture
def blocked_env(tmp_path):
    """Environment whose torch, timm and datasets fail to import, with empty Hugging Face caches."""
    fakes = tmp_path / "blocked"
    for name in BLOCKED:
        (fakes / name).mkdir(parents=True)
        (fakes / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked by the test')\n")
    hf = tmp_path / "hf"
    path = os.pathsep.join(p for p in (str(fakes), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, HF_HOME=str(hf), HF_HUB_CACHE=str(hf / "hub"),
                HF_DATASETS_CACHE=str(hf / "datasets"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                SCAN_RUNS_DIR=str(tmp_path / "runs"))


def _fit(env, *args):
    res = subprocess.run([sys.executable, "-m", "scan_cli", "fit", *args], capture_output=True, text=True, env=env,
                         timeout=120)
    return res.returncode, res.stderr


def test_the_blocked_process_really_cannot_import_torch(blocked_env):
    res = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=blocked_env)
    assert res.returncode != 0 and "blocked by the test" in res.stderr


@pytest.mark.parametrize("args, code, words", [
    (["resnet50", "--data", "/nonexistent/folder"], 1, ["no such folder or file", "/nonexistent/folder"]),
    (["resnet50", "--data", "imagenet"], 1, ["'ILSVRC/imagenet-1k' is not available offline"]),
    (["test_resnet", "--data", "cifar10"], 1, ["'uoft-cs/cifar10' is not available offline"]),
    (["test_resnet", "--data", "digits", "--splits", "bogus"], 2,
     ["split point(s) bogus are not units of backbone 'test_resnet'", "choose from layer1, layer2, layer3"]),
    (["resnet50", "--pretrained", "--data", "digits"], 1,
     ["pretrained weights for resnet50 are not cached and HF_HUB_OFFLINE=1", "--weights FILE"]),
    (["test_resnet", "--weights", "/nonexistent.pth"], 2, ["--weights /nonexistent.pth: no such file"]),
])
def test_first_mistakes_are_answered_without_torch(blocked_env, args, code, words):
    got, err = _fit(blocked_env, *args)
    assert got == code, err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)


def test_image_folder_mistakes_are_answered_without_torch(blocked_env, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    one = tmp_path / "one"
    (one / "cat").mkdir(parents=True)
    (one / "cat" / "a.png").write_bytes(b"not decoded here")
    hollow = tmp_path / "hollow"
    for c in ("cat", "dog"):
        (hollow / c).mkdir(parents=True)
    (hollow / "cat" / "a.png").write_bytes(b"x")
    for folder, words in ((empty, "no images found in"), (one, "only one class ('cat')"),
                          (hollow, "class folder(s) 'dog'")):
        code, err = _fit(blocked_env, "test_resnet", "--data", str(folder))
        assert code == 1 and words in err and len(err.strip().splitlines()) == 1, (folder, err)


def test_print_recipe_does_not_look_at_the_data(blocked_env):
    code, err = _fit(blocked_env, "test_resnet", "--data", "/nonexistent/folder", "--print-recipe")
    assert code == 0, err


# -- the cheap decisions themselves ------------------------------------------------------------
def test_a_cached_dataset_is_left_to_the_load(tmp_path, monkeypatch):
    from scan_cli.data import hub

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    with pytest.raises(ScanError, match="not available offline"):
        hub.check_hub("cifar10")
    (tmp_path / "datasets" / "uoft-cs___cifar10").mkdir(parents=True)
    hub.check_hub("cifar10")  # may be loadable: the load decides


def test_an_unreachable_hub_is_offline(tmp_path, monkeypatch):
    from scan_cli.data import hub

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setattr(hub, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ScanError, match="'someone/set' is not available offline"):
        hub.check_hub("someone/set")
    monkeypatch.setattr(hub, "_hub_reachable", lambda timeout=3.0: True)
    hub.check_hub("someone/set")  # reachable: the load says whether it exists


def test_pretrained_weights_in_the_cache_are_found_without_timm(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from scan_cli.backbones.timm_families import pretrained_cached

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert pretrained_cached("resnet50") is False
    assert pretrained_cached("some_unlisted_resnet") is None  # its weights may live under another repo
    snap = tmp_path / "models--timm--resnet50.a1_in1k" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    assert pretrained_cached("resnet50") is False  # a folder without weights
    (snap / "model.safetensors").write_bytes(b"")
    assert pretrained_cached("resnet50") is True and pretrained_cached("resnet50.a1_in1k") is True
    assert pretrained_cached("resnet18") is False  # another model's weights do not count


def test_declared_units_must_hold_the_split_points_and_match_the_build():
    from dataclasses import replace

    from scan_cli.backbones.contract import validate_spec
    from scan_cli.backbones.registry import default_registry
    from scan_cli.backbones.verify import declaration_problems

    spec = default_registry().get("test_resnet")
    assert spec.unit_names == ("layer1", "layer2", "layer3", "layer4")
    with pytest.raises(ValueError, match="not among unit_names"):
        validate_spec(replace(spec, unit_names=("layer1", "layer2", "layer3")))
    shapes = {"layer1": (32, 40), "layer2": (48, 20), "layer3": (192, 10)}
    problems = declaration_problems(spec, ["layer1", "layer2", "layer3", "layer4", "layer5"], shapes, 160)
    assert any("declares units layer1, layer2, layer3, layer4" in p for p in problems), problems


def test_check_folder_passes_a_good_folder_and_the_imagenet_layout(tmp_path):
    from scan_cli.data.folder import check_folder

    for c in ("a", "b"):
        (tmp_path / "train" / c / "deep").mkdir(parents=True)
        (tmp_path / "train" / c / "deep" / "x.jpg").write_bytes(b"x")
    check_folder(tmp_path)
    check_folder(tmp_path / "train")
    (tmp_path / "train" / "c").mkdir()
    with pytest.raises(ScanError, match="'c'"):
        check_folder(Path(tmp_path))


def test_pretrained_weights_need_the_cache_or_a_reachable_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from scan_cli.backbones.registry import default_registry
    from scan_cli.data import hub
    from scan_cli.training.preflight import check_pretrained

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    spec = default_registry().get("resnet50")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ScanError, match="not cached and HF_HUB_OFFLINE=1"):
        check_pretrained(spec)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ScanError, match="unreachable.*--weights FILE"):
        check_pretrained(spec)
    monkeypatch.setattr(hub, "_hub_reachable", lambda timeout=3.0: True)
    check_pretrained(spec)  # the download itself is the run's

"""--weights: the formats users bring (timm training checkpoints with EMA, state dicts, safetensors),
never running code from the file, and heads-only training that leaves the given network untouched."""

import argparse
import pickle
from pathlib import Path

import pytest
import torch

from scan_cli.errors import ScanError
from scan_cli.backbones.weights import load_backbone_weights, read_state_dict


def _timm_model(num_classes=3, seed=0):
    import timm

    torch.manual_seed(seed)
    return timm.create_model("test_resnet", num_classes=num_classes).eval()


def _timm_checkpoint(path: Path, model, ema_model) -> Path:
    """What timm's train.py CheckpointSaver writes (utils/checkpoint_saver.py)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    torch.save({"epoch": 3, "arch": "test_resnet", "optimizer": opt.state_dict(), "version": 2,
                "args": argparse.Namespace(model="test_resnet", lr=0.1, epochs=4),
                "state_dict": model.state_dict(), "state_dict_ema": ema_model.state_dict(), "metric": 81.5,
                "saver": {"checkpoint_files": [], "best_epoch": 3, "best_metric": 81.5, "pending": (3, 81.5)}}, path)
    return path


def test_timm_training_checkpoint_and_its_ema(tmp_path):
    model, ema = _timm_model(seed=0), _timm_model(seed=1)
    ckpt = _timm_checkpoint(tmp_path / "checkpoint-3.pth.tar", model, ema)
    state, source = read_state_dict(ckpt)
    assert source == "state_dict" and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    state, source = read_state_dict(ckpt, ema=True)
    assert source == "state_dict_ema" and all(torch.equal(state[k], v) for k, v in ema.state_dict().items())


def test_plain_state_dict_ddp_prefix_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    model = _timm_model()
    sd = model.state_dict()
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "ddp.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    for name in ("ddp.pth", "w.safetensors"):
        state, _ = read_state_dict(tmp_path / name)
        assert state.keys() == sd.keys() and all(torch.equal(state[k], sd[k]) for k in sd)
    with pytest.raises(ScanError, match="drop --ema"):
        read_state_dict(tmp_path / "w.safetensors", ema=True)
    torch.save({"state_dict": sd}, tmp_path / "no_ema.pth")
    with pytest.raises(ScanError, match="no EMA weights"):
        read_state_dict(tmp_path / "no_ema.pth", ema=True)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would run code
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"state_dict": _timm_model().state_dict(), "hook": _Evil(str(marker))}, f)
    assert not marker.exists()
    with pytest.raises(ScanError, match="never unpickles"):
        read_state_dict(bad)
    assert not marker.exists()


def test_weights_of_another_architecture_are_refused(tmp_path):
    import timm

    from scan_cli.backbones.registry import default_registry

    other = timm.create_model("test_efficientnet", num_classes=3)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    backbone = default_registry().get("test_resnet").build(num_classes=3)
    with pytest.raises(ScanError, match="does not fit this backbone"):
        load_backbone_weights(backbone, tmp_path / "other.pth")


def test_heads_only_keeps_the_given_network_exactly(tmp_path):
    """Deepest exit after heads-only training == the plain timm model with the same weights file."""
    import timm

    from conftest import make_color_folder
    from scan_cli import artifact
    from scan_cli.training.recipes import Recipe
    from scan_cli.training.loop import FitOptions, fit

    model, ema = _timm_model(seed=0), _timm_model(seed=1)
    ckpt = _timm_checkpoint(tmp_path / "ckpt.pth.tar", model, ema)
    data = make_color_folder(tmp_path / "data", per_class=8, size=32)
    recipe = Recipe(data=str(data), img_size=32, epochs=1, batch_size=8, workers=0, mode="heads", augment="none")
    out = tmp_path / "run"
    summary = fit(FitOptions(backbone="test_resnet", recipe=recipe, out=out, weights=ckpt, ema=True))
    assert summary["mode"] == "heads"
    scan_model, _ = artifact.load(out / "model.safetensors")

    plain = timm.create_model("test_resnet", num_classes=3).eval()
    plain.load_state_dict(torch.load(ckpt, weights_only=False)["state_dict_ema"])  # our own file: trusted here
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        ours = scan_model(x)[-1]
        theirs = plain(x)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))

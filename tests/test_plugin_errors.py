"""Issue 12, "Wrong behaviour": a third-party plugin that gets something wrong is told which plugin,
what is wrong and what to change, when the model is built (fit and load), not only by `backbones check`.

The plugin is ``tinyplug`` (package ``scan-tinyplug``) providing the backbone ``tinynet``: provider
name, package and backbone id differ, so each assertion shows which one a message names.
"""

import json

import pytest

import fakeplugins as fp
from conftest import make_color_folder


@pytest.fixture
def colors(tmp_path):
    return make_color_folder(tmp_path / "colors", per_class=4, size=16)


def _fit_args(colors, out, *extra):
    return ("fit", "tinynet", "--data", str(colors), "--img-size", "16", "--epochs", "1", "--batch-size", "8",
            "--workers", "0", "--out", str(out), *extra)


def _save_artifact(path, splits=None, input_size=32):
    """A tinynet SCAN model as `scan fit` would save it (random weights), with the current plugin."""
    from scan_cli import artifact
    from scan_cli.model import HeadConfig, build_scan_model
    from scan_cli.backbones.registry import default_registry

    reg = default_registry()
    spec = reg.get("tinynet")
    model = build_scan_model(spec, num_classes=3, head=HeadConfig(), split_modules=splits, input_size=input_size).eval()
    info = artifact.info_for(model, spec, reg, classes=["a", "b", "c"], data_config={"input_size": [3, 32, 32]},
                             input_size=input_size, recipe={"splits": splits})
    artifact.save(model, info, path)
    return path


# -- 1. declared shapes are checked when the model is built --------------------------------------
def test_fit_refuses_declared_channels_that_a_dry_run_contradicts(monkeypatch, run_cli, colors, tmp_path):
    fp.install(monkeypatch, fp.provider(fp.spec(splits=[("stage1", 8, 2), ("stage2", 48, 4), ("stage3", 32, 8)])))
    code, out, err = run_cli(*_fit_args(colors, tmp_path / "run"))
    assert code == 1 and err.count("\n") == 1, err
    assert "tinyplug" in err and "scan-tinyplug" in err  # the plugin, by name and package
    assert "stage2" in err and "declares 48 channels" in err and "measures 16" in err
    assert "scan backbones check tinynet" in err  # what to run after changing it
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_fit_refuses_a_declared_reduction_that_a_dry_run_contradicts(monkeypatch, run_cli, colors, tmp_path):
    fp.install(monkeypatch, fp.provider(fp.spec(splits=[("stage1", 8, 2), ("stage2", 16, 8), ("stage3", 32, 16)])))
    code, _, err = run_cli(*_fit_args(colors, tmp_path / "run"))
    assert code == 1 and "tinyplug" in err and "stage2" in err and "1/8" in err and "1/4" in err


def test_declared_split_point_that_is_no_unit_fails_at_fit_naming_the_plugin(monkeypatch, run_cli, colors, tmp_path):
    fp.install(monkeypatch, fp.provider(fp.spec(splits=[("stage1", 8, 2), ("layer2", 16, 4)])))
    code, _, err = run_cli(*_fit_args(colors, tmp_path / "run"))
    assert code == 1, err  # the plugin's bug, not a usage error
    assert "tinyplug" in err and "'layer2'" in err and "stage1, stage2, stage3, stage4" in err


def test_load_refuses_a_declaration_that_a_dry_run_contradicts(monkeypatch, tmp_path):
    from scan_cli import artifact
    from scan_cli.errors import ScanError

    fp.install(monkeypatch, fp.provider())
    path = _save_artifact(tmp_path / "model.safetensors")
    fp.install(monkeypatch, fp.provider(fp.spec(splits=[("stage1", 8, 2), ("stage2", 16, 4), ("stage3", 40, 8)])),
               version="0.4.0")
    with pytest.raises(ScanError) as exc:
        artifact.load(path)
    msg = str(exc.value)
    assert "tinyplug" in msg and "scan-tinyplug 0.4.0" in msg and "stage3" in msg and "40" in msg and "32" in msg


def test_load_refuses_a_declared_module_that_is_missing(monkeypatch, tmp_path):
    from scan_cli import artifact
    from scan_cli.errors import ScanError

    fp.install(monkeypatch, fp.provider())
    path = _save_artifact(tmp_path / "model.safetensors")
    fp.install(monkeypatch, fp.provider(fp.spec(splits=[("stage1", 8, 2), ("stage2", 16, 4), ("stage3b", 32, 8)])))
    with pytest.raises(ScanError) as exc:
        artifact.load(path)
    assert "tinyplug" in str(exc.value) and "'stage3b'" in str(exc.value) and "not a unit" in str(exc.value)


def test_load_refuses_when_the_models_exit_modules_are_gone(monkeypatch, tmp_path):
    from scan_cli import artifact
    from scan_cli.errors import ScanError

    fp.install(monkeypatch, fp.provider())
    path = _save_artifact(tmp_path / "model.safetensors")
    renamed = [("block1", 8, 2), ("block2", 16, 4), ("block3", 32, 8)]
    fp.install(monkeypatch, fp.provider(fp.spec(splits=renamed, build=fp.builder(prefix="block"))), version="0.4.0")
    with pytest.raises(ScanError) as exc:
        artifact.load(path)
    msg = str(exc.value)
    assert "stage1" in msg and "tinyplug" in msg and "scan-tinyplug==0.3.0" in msg  # the version it was trained with


# -- 2. uninstalled or disabled plugins: name the package --------------------------------------
def test_resume_with_the_plugin_uninstalled_names_the_package(monkeypatch, run_cli, colors, tmp_path):
    fp.install(monkeypatch, fp.provider())
    code, _, err = run_cli(*_fit_args(colors, tmp_path / "run", "--epochs", "2"))
    assert code == 0, err
    fp.uninstall(monkeypatch)
    code, out, err = run_cli("fit", "--resume", str(tmp_path / "run"), "--epochs", "3")  # extend the run
    assert code == 1 and out == "" and err.count("error:") == 1, err
    err = err.splitlines()[-1]
    assert "pip install" in err and "scan-tinyplug" in err and "tinyplug" in err and "did you mean" not in err


def test_load_with_the_plugin_uninstalled_names_the_package(monkeypatch, tmp_path):
    from scan_cli import artifact
    from scan_cli.errors import ScanError

    fp.install(monkeypatch, fp.provider())
    path = _save_artifact(tmp_path / "model.safetensors")
    fp.uninstall(monkeypatch)
    with pytest.raises(ScanError, match=r"pip install 'scan-tinyplug==0\.3\.0'"):
        artifact.load(path)


def test_load_with_the_plugin_disabled_says_how_to_enable_it(monkeypatch, tmp_path):
    from scan_cli import artifact
    from scan_cli.errors import ScanError

    fp.install(monkeypatch, fp.provider())
    path = _save_artifact(tmp_path / "model.safetensors")
    monkeypatch.setenv("SCAN_DISABLE_PLUGINS", "tinyplug")
    fp.install(monkeypatch, fp.provider())
    with pytest.raises(ScanError) as exc:
        artifact.load(path)
    assert "tinyplug" in str(exc.value) and "SCAN_DISABLE_PLUGINS" in str(exc.value)
    assert "pip install" not in str(exc.value)


def test_show_of_a_backbone_whose_provider_is_disabled_names_it(monkeypatch, run_cli):
    monkeypatch.setenv("SCAN_DISABLE_PLUGINS", "tinyplug")
    fp.install(monkeypatch, fp.provider())
    code, out, err = run_cli("backbones", "show", "tinynet")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "tinyplug" in err and "SCAN_DISABLE_PLUGINS" in err


def test_resume_with_the_plugin_disabled_says_how_to_enable_it(monkeypatch, run_cli, colors, tmp_path):
    fp.install(monkeypatch, fp.provider())
    assert run_cli(*_fit_args(colors, tmp_path / "run", "--epochs", "2"))[0] == 0
    monkeypatch.setenv("SCAN_PLUGINS", "timm,cifar")
    fp.install(monkeypatch, fp.provider())
    code, _, err = run_cli("fit", "--resume", str(tmp_path / "run"), "--epochs", "3")
    assert code == 1 and "tinyplug" in err and "SCAN_PLUGINS" in err


# -- 3. changed split points are flagged at load ---------------------------------------------------
def test_changed_split_points_warn_at_load(monkeypatch, tmp_path, scan_log):
    import torch

    from scan_cli import artifact

    fp.install(monkeypatch, fp.provider())
    path = _save_artifact(tmp_path / "model.safetensors")
    fp.install(monkeypatch, fp.provider(fp.spec(splits=[("stage1", 8, 2), ("stage3", 32, 8)])), version="0.4.0")
    model, info = artifact.load(path)
    assert model.num_exits == 4  # the model keeps the exits it was trained with ...
    warning = [m for m in scan_log if "split points" in m]
    assert len(warning) == 1, scan_log  # ... and says so
    assert "tinyplug" in warning[0] and "stage1, stage2, stage3" in warning[0] and "stage1, stage3" in warning[0]
    assert "retrain" in warning[0]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32))[0].shape == (1, 3)


def test_same_split_points_do_not_warn(monkeypatch, tmp_path, scan_log):
    from scan_cli import artifact

    fp.install(monkeypatch, fp.provider())
    path = _save_artifact(tmp_path / "model.safetensors")
    artifact.load(path)
    assert not [m for m in scan_log if "split points" in m]


def test_own_split_points_are_compared_with_the_declaration_at_training(monkeypatch, tmp_path, scan_log):
    """--splits stage2 is the user's choice, not a changed declaration."""
    from scan_cli import artifact

    fp.install(monkeypatch, fp.provider())
    path = _save_artifact(tmp_path / "model.safetensors", splits=["stage2"])
    model, _ = artifact.load(path)
    assert model.num_exits == 2 and not [m for m in scan_log if "split points" in m]


# -- 4. --pretrained keeps the plugin's own error -----------------------------------------------
def test_pretrained_offline_keeps_the_plugins_error(monkeypatch, run_cli, colors, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fp.install(monkeypatch, fp.provider())
    code, _, err = run_cli(*_fit_args(colors, tmp_path / "run", "--pretrained"))
    assert code == 1 and err.count("\n") == 1, err
    assert "tinynet has no pretrained weights" in err and "tinyplug" in err
    assert "not cached" not in err and "--pretrained" in err


def test_pretrained_offline_still_checks_the_hub_cache_for_timm(run_cli, colors, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli("fit", "resnet18", "--data", str(colors), "--img-size", "16", "--pretrained",
                           "--out", str(tmp_path / "r"))
    assert code == 1 and "not cached and HF_HUB_OFFLINE=1" in err, err


# -- 5. messages -------------------------------------------------------------------------------
def test_fit_split_point_error_names_the_provider(monkeypatch, run_cli, colors, tmp_path):
    fp.install(monkeypatch, fp.provider())
    code, _, err = run_cli(*_fit_args(colors, tmp_path / "run", "--splits", "stage9"))
    assert code == 2 and err.count("\n") == 1
    assert "tinyplug" in err and "tinynet" in err and "stage1, stage2, stage3" in err and "this backbone" not in err


def test_profile_labels_the_reference_row_with_the_real_provider(monkeypatch, run_cli):
    fp.install(monkeypatch, fp.provider())
    code, out, err = run_cli("profile", "tinynet", "--no-latency")
    assert code == 0, err
    plain = [line for line in out.splitlines() if line.strip().startswith("plain")]
    assert plain and "(tinyplug)" in plain[0] and "(timm)" not in out
    code, out, _ = run_cli("profile", "tinynet", "--no-latency", "--json")
    assert json.loads(out)["source"]["provider"] == "tinyplug"


def test_profile_of_a_bare_backbone_checks_the_declaration_too(monkeypatch, run_cli):
    fp.install(monkeypatch, fp.provider(fp.spec(splits=[("stage1", 8, 2), ("stage2", 48, 4)])))
    code, out, err = run_cli("profile", "tinynet", "--no-latency")
    assert code == 1 and out == "" and "tinyplug" in err and "declares 48 channels" in err

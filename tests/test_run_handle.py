"""A command opens its run once: the artifact's header is read once (``artifact.read_info``; writing
the calibration re-reads it only to rewrite it) and its model loaded once, also when
`scan predict --target-acc` calibrates first and nothing is cached yet (issue 18)."""

from __future__ import annotations

import shutil

import pytest
from conftest import make_color_folder

from scan_cli import artifact


@pytest.fixture
def counts(monkeypatch):
    seen = {"header": [], "load": []}
    read_info, load = artifact.read_info, artifact.load

    def counting_read_info(path, *a, **kw):
        seen["header"].append(str(path))
        return read_info(path, *a, **kw)

    def counting_load(path, *a, **kw):
        seen["load"].append(str(path))
        return load(path, *a, **kw)

    monkeypatch.setattr(artifact, "read_info", counting_read_info)
    monkeypatch.setattr(artifact, "load", counting_load)
    return seen


@pytest.fixture
def fresh_run(trained_run, tmp_path):
    """The trained run without its caches: outputs and MACs have to be computed again."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("cache"))
    return run


def test_predict_with_target_acc_on_a_cache_miss_opens_the_run_once(run_cli, fresh_run, counts, tmp_path):
    make_color_folder(tmp_path / "imgs", per_class=2)
    code, out, err = run_cli("predict", str(tmp_path / "imgs"), "--run", str(fresh_run), "--target-acc", "0.5",
                             "--json")
    assert code == 0, err
    model_file = str(fresh_run / "model.safetensors")
    assert counts == {"header": [model_file], "load": [model_file]}


def test_calibrate_on_a_cache_miss_opens_the_run_once(run_cli, fresh_run, counts):
    code, out, err = run_cli("calibrate", "--run", str(fresh_run), "--max-drop", "0.5", "--json")
    assert code == 0, err
    model_file = str(fresh_run / "model.safetensors")
    assert counts == {"header": [model_file], "load": [model_file]}


def test_evaluate_on_a_cache_miss_opens_the_run_once(run_cli, fresh_run, counts):
    code, out, err = run_cli("evaluate", "--run", str(fresh_run), "--json")
    assert code == 0, err
    model_file = str(fresh_run / "model.safetensors")
    assert counts == {"header": [model_file], "load": [model_file]}

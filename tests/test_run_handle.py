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


# -- the build's dry run, once per backbone (issue 21) ---------------------------------------------
@pytest.fixture
def traces(monkeypatch):
    """Every dry-run forward a model build makes (``backbones.shapes.trace_shapes``)."""
    from scan_cli.backbones import shapes

    seen = []
    trace = shapes.trace_shapes

    def counting(staged, size, *a, **kw):
        seen.append(size)
        return trace(staged, size, *a, **kw)

    monkeypatch.setattr(shapes, "trace_shapes", counting)
    return seen


def test_a_run_is_loaded_with_one_dry_run_then_none(fresh_run, traces):
    import torch

    from scan_cli.runs import Run

    first, _ = Run(fresh_run).load()
    assert len(traces) == 1  # the build's own: the load's check reuses its shapes
    assert (fresh_run / "cache" / "shapes-16.json").is_file()
    again, _ = Run(fresh_run).load()  # the next command: same backbone, same versions
    assert len(traces) == 1
    assert again.shapes == first.shapes
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        for a, b in zip(first(x), again(x)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("damage", ["key", "json", "incomplete", "not a count"])
def test_a_stored_dry_run_for_another_backbone_or_damaged_is_run_again(fresh_run, traces, damage):
    import json

    from scan_cli.runs import Run

    Run(fresh_run).load()
    cache = fresh_run / "cache" / "shapes-16.json"
    doc = json.loads(cache.read_text())
    if damage == "key":  # what another backbone, torch, timm or provider version gives
        doc["key"] = "0" * 16
    elif damage == "incomplete":
        del doc["shapes"]["layer2"]
    elif damage == "not a count":
        doc["shapes"]["layer2"] = [64, -1, 8]
    cache.write_text("{" if damage == "json" else json.dumps(doc))
    Run(fresh_run).load()
    assert len(traces) == 2
    assert json.loads(cache.read_text())["shapes"]["layer2"] == list(Run(fresh_run).load()[0].shapes["layer2"])
    assert len(traces) == 2  # rewritten: the third load traces nothing


def test_another_plugin_version_runs_the_dry_run_and_the_load_checks_again(monkeypatch, tmp_path, traces):
    import fakeplugins as fp

    from scan_cli.errors import ScanError
    from scan_cli.runs import Run
    from test_plugin_errors import _save_artifact

    fp.install(monkeypatch, fp.provider())
    (tmp_path / "run").mkdir()
    _save_artifact(tmp_path / "run" / "model.safetensors")
    traces.clear()  # the save's own build
    Run(tmp_path / "run").load()
    Run(tmp_path / "run").load()
    assert len(traces) == 1
    fp.install(monkeypatch, fp.provider(fp.spec(splits=[("stage1", 8, 2), ("stage2", 16, 4), ("stage3", 40, 8)])),
               version="0.4.0")
    with pytest.raises(ScanError, match="scan-tinyplug 0.4.0"):
        Run(tmp_path / "run").load()
    assert len(traces) == 2


def test_a_run_whose_cache_cannot_be_written_is_traced_each_time(fresh_run, traces, monkeypatch):
    from scan_cli import files
    from scan_cli.runs import Run

    def refuse(path, write):
        raise files.WriteError(f"{path}: read-only file system")

    monkeypatch.setattr(files, "atomic_write", refuse)
    Run(fresh_run).load()
    Run(fresh_run).load()
    assert len(traces) == 2 and not (fresh_run / "cache" / "shapes-16.json").exists()

"""An export folder is untrusted input (issue 20): hostile manifests and graphs, generated from one
real export, each give exit 1 or 2 and one line on stderr, no traceback, no raw exception name,
never blame a flag the user did not pass, and never open a file outside the folder (a sentinel
folder next to it holds the files the hostile manifests point at; every open is recorded)."""

from __future__ import annotations

import builtins
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from test_prediction import make_images  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
RAW = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b|Traceback")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A 3-exit test_resnet export (16 px, every head, thresholds that fire) and a few images."""
    from conftest import tiny_calibrated_model
    from scan_cli import artifact
    from scan_cli.inference.export import export_model

    model, info = tiny_calibrated_model(2, [0.5, 0.6, None])
    root = tmp_path_factory.mktemp("export")
    export_model(model, info, root / "good")
    artifact.save(model, info, root / "run" / "model.safetensors")
    make_images(root / "images", n=3, seed=1)
    return root


def _json(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _put(folder: Path, doc) -> None:
    (folder / "manifest.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))


def edit(change):
    """A variant that changes the manifest document in place."""
    def apply(folder, elsewhere):
        doc = _json(folder)
        change(doc, elsewhere)
        _put(folder, doc)
    return apply


def text(change):
    """A variant that rewrites the manifest's text (NaN, truncation, ...)."""
    def apply(folder, elsewhere):
        _put(folder, change((folder / "manifest.json").read_text()))
    return apply


def files(change):
    def apply(folder, elsewhere):
        change(folder, elsewhere)
    return apply


def _set(path: str, value):
    def change(doc, elsewhere):
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        target = doc
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value(elsewhere) if callable(value) else value
    return edit(change)


def _drop(path: str):
    def change(doc, elsewhere):
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        target = doc
        for k in keys[:-1]:
            target = target[k]
        del target[keys[-1]]
    return edit(change)


def _swap_files(a, b):
    def change(folder, elsewhere):
        (folder / a).rename(folder / "tmp")
        (folder / b).rename(folder / a)
        (folder / "tmp").rename(folder / b)
    return files(change)


def _truncate(name, keep=0.5):
    def change(folder, elsewhere):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: int(len(data) * keep)])
    return files(change)


def _link_piece(folder, elsewhere):
    (folder / "piece2.onnx").unlink()
    (folder / "piece2.onnx").symlink_to(elsewhere / "piece2.onnx")


def _link_manifest(folder, elsewhere):
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").symlink_to(elsewhere / "manifest.json")


def _external_weights(folder, elsewhere):
    """piece1.onnx with its largest weight moved to a file outside the folder."""
    from onnx.external_data_helper import set_external_data

    model = onnx.load(str(folder / "piece1.onnx"))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    (elsewhere / "weights.bin").write_bytes(tensor.raw_data)
    set_external_data(tensor, location="../elsewhere/weights.bin")
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    onnx.save(model, str(folder / "piece1.onnx"))


def _pieces_swapped(doc, elsewhere):
    doc["pieces"][0], doc["pieces"][1] = doc["pieces"][1], doc["pieces"][0]


def _truncated_network(doc, elsewhere):
    doc["num_exits"], doc["pieces"], doc["thresholds"] = 2, doc["pieces"][:2], doc["thresholds"][:2]
    doc["macs"]["exits_cumulative"] = doc["macs"]["exits_cumulative"][:2]


def _reversed_outputs(doc, elsewhere):
    doc["pieces"][0]["outputs"].reverse()


VARIANTS = {
    # paths
    "file ../": _set("pieces.0.file", "../elsewhere/piece1.onnx"),
    "file absolute": _set("pieces.1.file", lambda e: str(e / "piece2.onnx")),
    "file sub/../..": _set("pieces.1.file", "sub/../../elsewhere/piece2.onnx"),
    "file empty": _set("pieces.0.file", ""),
    "file dot": _set("pieces.0.file", "."),
    "file a number": _set("pieces.0.file", 5),
    "file NUL": _set("pieces.0.file", "piece1.onnx\u0000.txt"),
    "file missing": files(lambda f, e: (f / "piece3.onnx").unlink()),
    "piece a link out": files(_link_piece),
    "manifest a link out": files(_link_manifest),
    "full.file ../": _set("full", {"file": "../elsewhere/piece1.onnx", "input": "image", "outputs": ["x"]}),
    "weights in a file outside": files(_external_weights),
    # types
    "threshold a string": _set("thresholds.0", "0.5"),
    "threshold true": _set("thresholds.0", True),
    "threshold abc": _set("thresholds.0", "abc"),
    "threshold {}": _set("thresholds.0", {}),
    "thresholds a string": _set("thresholds", "0.5,0.5"),
    "format_version a string": _set("format_version", "1"),
    "format_version 2": _set("format_version", 2),
    "num_exits a string": _set("num_exits", "3"),
    "num_exits true": _set("num_exits", True),
    "num_exits 0": _set("num_exits", 0),
    "classes a string": _set("classes", "abc"),
    "class a number": _set("classes.0", 3),
    "score bogus": _set("score", "bogus"),
    "fallback bogus": _set("fallback", "bogus"),
    "calibrated yes": _set("calibrated", "yes"),
    "mean of two": _set("data_config.mean", [0.5, 0.5]),
    "std zero": _set("data_config.std.0", 0),
    "crop_pct a string": _set("data_config.crop_pct", "0.9"),
    "input batch fixed": _set("input.shape", [1, 3, 16, 16]),
    "input size a string": _set("input.shape", [None, 3, "a", 16]),
    "input size 1000": _set("input.shape", [None, 3, 1000, 1000]),
    "pieces an object": _set("pieces", {}),
    "piece a list": _set("pieces.1", []),
    # NaN and infinities (not plain JSON)
    "threshold NaN": text(lambda t: re.sub(r'("thresholds": \[\s*)[0-9.e-]+', r"\1NaN", t, count=1)),
    "threshold Infinity": text(lambda t: re.sub(r'"threshold": [0-9.e-]+', '"threshold": Infinity', t, count=1)),
    "macs -Infinity": text(lambda t: re.sub(r'"backbone": \d+', '"backbone": -Infinity', t, count=1)),
    "macs huge exponent": text(lambda t: re.sub(r'"backbone": \d+', '"backbone": 1e999', t, count=1)),
    # lengths
    "classes short": edit(lambda d, e: d["classes"].pop()),
    "classes long": edit(lambda d, e: d["classes"].append("d")),
    "classes empty": _set("classes", []),
    "exits_cumulative short": edit(lambda d, e: d["macs"]["exits_cumulative"].pop()),
    "thresholds long": edit(lambda d, e: d["thresholds"].append(0.5)),
    "truncated network": edit(_truncated_network),
    "pieces empty": _set("pieces", []),
    # missing and extra keys
    "no pieces": _drop("pieces"),
    "no classes": _drop("classes"),
    "no data_config": _drop("data_config"),
    "no macs": _drop("macs"),
    "piece without outputs": _drop("pieces.1.outputs"),
    "piece without file": _drop("pieces.0.file"),
    "extra key": _set("run_this", "../elsewhere/piece1.onnx"),
    "extra piece key": _set("pieces.0.weights", "../elsewhere/weights.bin"),
    # swapped pieces
    "pieces swapped in the list": edit(_pieces_swapped),
    "piece files swapped": _swap_files("piece1.onnx", "piece2.onnx"),
    "piece file replaced": files(lambda f, e: shutil.copy(f / "piece3.onnx", f / "piece2.onnx")),
    "input renamed": _set("pieces.1.input", "features_2"),
    "outputs reversed": edit(_reversed_outputs),
    "features shape wrong": edit(lambda d, e: d["pieces"][0]["features_shape"].__setitem__(1, 7)),
    # truncated and foreign files
    "manifest truncated": _truncate("manifest.json"),
    "manifest empty": _truncate("manifest.json", 0),
    "manifest a list": text(lambda t: "[]"),
    "manifest nested deep": text(lambda t: "[" * 100000 + "]" * 100000),
    "manifest not utf-8": files(lambda f, e: (f / "manifest.json").write_bytes(b"\xff\xfe{}")),
    "manifest another format": _set("format", "something-else"),
    "piece truncated": _truncate("piece2.onnx"),
    "piece empty": _truncate("piece1.onnx", 0),
    "piece not onnx": files(lambda f, e: (f / "piece3.onnx").write_text("hello")),
}


@pytest.fixture
def opened(monkeypatch):
    """Every path opened through Python (open, io.open, os.open) or given to ONNX Runtime."""
    seen = []

    def record(fn):
        def wrapper(path, *args, **kwargs):
            if isinstance(path, (str, bytes, os.PathLike)):
                seen.append(os.path.realpath(os.fsdecode(path)))
            return fn(path, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(builtins, "open", record(builtins.open))
    monkeypatch.setattr(io, "open", record(io.open))
    monkeypatch.setattr(os, "open", record(os.open))
    monkeypatch.setattr(ort, "InferenceSession", record(ort.InferenceSession))
    return seen


def hostile(export, tmp_path, variant):
    folder, elsewhere = tmp_path / "deploy", tmp_path / "elsewhere"
    shutil.copytree(export / "good", folder)
    shutil.copytree(export / "good", elsewhere)  # a valid export outside: what a hostile path points at
    VARIANTS[variant](folder, elsewhere)
    return folder, elsewhere


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_hostile_export_is_one_line_and_opens_nothing_outside(export, tmp_path, run_cli, opened, variant):
    folder, elsewhere = hostile(export, tmp_path, variant)
    opened.clear()  # only what the command opens
    code, out, err = run_cli("predict", str(export / "images"), "--run", str(folder), "--json")
    assert code in (1, 2) and out == "", (variant, code, err)
    assert err.count("\n") == 1 and err.startswith("error: "), (variant, err)
    assert not RAW.search(err), (variant, err)
    assert not err.startswith("error: --"), (variant, err)  # the manifest's fault, never a flag's
    outside = [p for p in opened if p.startswith(os.path.realpath(elsewhere))]
    assert outside == [], (variant, outside)


def test_the_suite_is_large_and_its_source_export_is_good(export, tmp_path, run_cli, opened):
    """The variants are ≥ 40, and the unchanged export predicts (so each failure is the variant's)."""
    assert len(VARIANTS) >= 40
    code, out, err = run_cli("predict", str(export / "images"), "--run", str(export / "good"), "--json")
    assert code == 0 and len(json.loads(out)["predictions"]) == 3, err
    assert any(p.startswith(os.path.realpath(export / "good")) for p in opened)  # the recorder records


def test_score_of_the_manifest_is_blamed_on_the_manifest(export, tmp_path, run_cli):
    folder, _ = hostile(export, tmp_path, "score bogus")
    code, _, err = run_cli("predict", str(export / "images"), "--run", str(folder))
    assert code == 1 and "manifest.json: score" in err and "export again" in err


def test_manifest_scores_are_the_scoring_modules():
    from scan_cli.inference.manifest import SCORES
    from scan_cli.scoring import SCORES as ALL

    assert tuple(SCORES) == tuple(ALL)


def test_manifest_constants_have_one_owner():
    from scan_cli.inference import export, manifest, onnx_engine

    assert export.MANIFEST_FILE is manifest.MANIFEST_FILE and export.FORMAT is manifest.FORMAT
    assert onnx_engine.MANIFEST_FILE is manifest.MANIFEST_FILE
    for module in (export, onnx_engine):
        src = Path(module.__file__).read_text()
        assert "FORMAT_VERSION = " not in src and 'MANIFEST_FILE = "' not in src


# -- the run's own cached export, and --out ------------------------------------------------------------
@pytest.mark.parametrize("damage", ["manifest truncated", "piece empty", "score bogus"])
def test_a_damaged_cached_export_is_rebuilt_once_saying_so(export, tmp_path, run_cli, damage):
    run = tmp_path / "run"
    shutil.copytree(export / "run", run)
    args = ("predict", str(export / "images"), "--run", str(run), "--engine", "onnxruntime", "--json")
    code, out, err = run_cli(*args)
    assert code == 0, err
    (cached,) = (run / "cache").glob("onnx-*")
    VARIANTS[damage](cached, tmp_path)
    code, out, err = run_cli(*args)
    assert code == 0 and len(json.loads(out)["predictions"]) == 3, err
    assert err.count("is damaged") == 1 and "exporting the run again" in err and "--out" not in err
    code, out, err = run_cli(*args)  # repaired: no second rebuild
    assert code == 0 and "is damaged" not in err


def test_out_that_cannot_be_replaced_is_refused_before_any_work(export, tmp_path, monkeypatch):
    import subprocess
    import sys

    here = tmp_path / "here"
    here.mkdir()
    for out in (".", str(tmp_path), "/"):
        res = subprocess.run([sys.executable, "-X", "importtime", "-m", "scan_cli", "export", "--run",
                              str(export / "run"), "--out", out], capture_output=True, text=True, cwd=here, timeout=120)
        err = [line for line in res.stderr.splitlines() if not line.startswith(("import time:", "run "))]
        assert res.returncode == 1 and len(err) == 1 and "cannot be replaced" in err[0], (out, err)
        assert "import time:" in res.stderr and "| torch" not in res.stderr  # refused before loading anything
    assert list(here.iterdir()) == []


def test_a_symlinked_out_is_updated_at_its_target(export, tmp_path, run_cli):
    target = tmp_path / "releases" / "v1"
    shutil.copytree(export / "good", target)
    link = tmp_path / "current"
    link.symlink_to(target)
    code, _, err = run_cli("export", "--run", str(export / "run"), "--out", str(link), "--all-exits")
    assert code == 0, err
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert [p.name for p in (tmp_path / "releases").iterdir()] == ["v1"]  # no leftovers beside it
    from scan_cli.inference import manifest

    manifest.read(link)


def test_weights_outside_the_folder_are_refused_without_importing_onnx(export, tmp_path):
    """The graph check on every predict from an export folder reads onnx's protobuf classes without
    `import onnx` (which costs a second): in a process that cannot import ml_dtypes (onnx's slow part)
    it still finds weights stored outside the folder, before any session exists."""
    import subprocess
    import sys

    folder, elsewhere = tmp_path / "export", tmp_path / "elsewhere"
    shutil.copytree(export / "good", folder)
    elsewhere.mkdir()
    _external_weights(folder, elsewhere)
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'ml_dtypes': raise ImportError('blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from scan_cli.inference.manifest import read\n"
            "try:\n"
            f"    read({str(folder)!r})\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__, exc)\n"
            "print('onnx' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert "keeps weights in another file" in lines[0], res.stdout
    assert lines[-1] == "False"  # onnx itself was never imported

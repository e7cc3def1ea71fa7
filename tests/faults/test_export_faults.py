"""`scan export` killed at random moments (issue 20): `--out` always holds the previous export or the
new one, whole (every file as one of the two exports wrote it, the manifest and graphs valid), and
the next export clears what the killed one left next to it.

The kill points are numbered by `fault_runner.py` (before and after each graph written or checked,
the manifest written, the fsync, the publishing exchange and the removal of the old folder); a
first run counts them, then each trial kills at a random one. Nothing depends on timing.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

sys.path.insert(0, str(Path(__file__).parent))
from test_faults import finish, scan  # noqa: E402

TRIALS = 20


def digest(folder: Path) -> dict:
    """Each file's hash; the manifest's content without the measured PyTorch differences (float
    noise that varies with the thread count between processes)."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.name == "manifest.json":
            doc = json.loads(p.read_text())
            for entry in doc["pieces"] + [doc.get("full") or {}]:
                entry.pop("max_abs_diff_vs_torch", None)
            out[p.name] = json.dumps(doc, sort_keys=True)
        else:
            out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A 2-exit run (random weights, calibrated) and an earlier export of it with full.onnx."""
    from conftest import tiny_calibrated_model
    from scan_cli import artifact
    from scan_cli.inference.export import export_model

    model, info = tiny_calibrated_model(1, [0.5, None])
    root = tmp_path_factory.mktemp("export-faults")
    run = root / "run"
    artifact.save(model, info, run / "model.safetensors")
    export_model(model, info, root / "old", fmt="onnx-full")
    return run, root / "old"


@pytest.mark.slow  # 21 exports in subprocesses
def test_a_killed_export_leaves_the_previous_or_the_new_export_whole(exports, tmp_path):
    from scan_cli.inference import manifest

    run, old = exports
    before = digest(old)
    out = tmp_path / "deploy"
    args = ("export", "--run", run, "--out", out)  # the new export has no full.onnx: tells it from the old
    count_file = tmp_path / "count"
    shutil.copytree(old, out)
    code, _, err = finish(scan(tmp_path, *args, fault={"at": "export_step", "nth": 0, "action": "kill",
                                                        "count_file": str(count_file)}))
    after = digest(out)  # every whole export writes these bytes
    assert code == 0 and after != before and "full.onnx" not in after, err[-2000:]
    points = int(count_file.read_text())
    assert points >= 12, points
    rng = random.Random()
    trials = rng.sample(range(1, points + 1), min(points, TRIALS))
    trials += [rng.randint(1, points) for _ in range(TRIALS - len(trials))]
    seen = {"old": 0, "new": 0}
    for nth in trials:
        shutil.rmtree(out)
        shutil.copytree(old, out)
        code, _, err = finish(scan(tmp_path, *args, fault={"at": "export_step", "nth": nth, "action": "kill"}))
        assert code == -signal.SIGKILL, f"point {nth}/{points}: {err[-2000:]}"
        state = digest(out)
        assert state in (before, after), f"point {nth}/{points}: {sorted(state)}"
        manifest.read(out)  # valid, graphs included
        seen["old" if state == before else "new"] += 1
    assert seen["old"] and seen["new"], seen  # the kills fell on both sides of the publishing step
    code, _, err = finish(scan(tmp_path, *args))
    assert code == 0 and digest(out) == after, err[-2000:]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".deploy.")] == []  # leftovers cleared

"""The fault suite (issue 11): what a crash, a kill, Ctrl-C or a full disk leaves behind.

* SIGKILL of `fit` at a random training step, then `--resume`: the same weights as a run never
  interrupted.
* SIGKILL in the middle of writing an artifact or a checkpoint: the previous file is intact and
  loadable; the next write clears the dead process's temporary file.
* SIGKILL while `calibrate` writes its thresholds: the previous thresholds stay.
* SIGINT (Ctrl-C, sent to the whole process group as a terminal does) in fit, calibrate,
  evaluate, profile and predict: one line on stderr, exit code 130, nothing half-written. The
  commands start with SIGINT at its default even where pytest was started with it ignored.
* A full disk while saving: a one-line error that names the file, the previous file intact.

The commands run as subprocesses of `fault_runner.py`, which injects the fault at a named point
(a kill at a training step, a pause inside a write, ...), so nothing depends on timing: the
tests wait for a marker file, never for a fixed time. CPU, one thread, tiny data and models.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from conftest import copy_of, make_color_folder, without_run_line  # noqa: E402

RUNNER = HERE / "fault_runner.py"
TIMEOUT = 240  # seconds for one command on a slow, loaded machine

FIT = ["--img-size", "16", "--batch-size", "4", "--workers", "0", "--lr", "0.05", "--schedule", "constant",
       "--augment", "none", "--no-hflip", "--epochs", "3"]
STEPS_PER_EPOCH = 3  # 12 training images in full batches of 4


def env(tmp: Path, **extra) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", SCAN_PROGRESS="0", SCAN_LOG_SECONDS="3600", HF_HUB_OFFLINE="1",
                HF_DATASETS_OFFLINE="1", SCAN_RUNS_DIR=str(tmp / "runs"), **extra)


def default_signals() -> None:
    """Runs in the child before exec: SIGINT and SIGQUIT at their defaults, whatever this process's.
    A background job of a non-interactive shell (`./run-tests.sh &`) starts with both ignored, and a
    Python started with SIGINT ignored never installs its KeyboardInterrupt handler: the Ctrl-C tests
    would test the caller's shell, not `scan`."""
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGQUIT})


def scan(tmp: Path, *args, fault: dict | None = None) -> subprocess.Popen:
    """`scan ARGS` in a new process group (so that SIGINT reaches it as Ctrl-C reaches a terminal's)."""
    cmd = [sys.executable, str(RUNNER)] if fault else [sys.executable, "-m", "scan_cli"]
    extra = {"SCAN_FAULT": json.dumps(fault)} if fault else {}
    return subprocess.Popen(cmd + [str(a) for a in args], env=env(tmp, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=default_signals)


def ignored(pid: int, sig: signal.Signals) -> str | None:
    """Why process `pid` cannot receive `sig` (it ignores it: SIG_IGN, not caught), or None. Linux's
    /proc only; elsewhere None (nothing checked)."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return None
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
    if int(fields["SigIgn"], 16) & 1 << (sig - 1):
        return (f"process {pid} ignores {sig.name} (SigIgn {fields['SigIgn'].strip()}): it was started with "
                f"{sig.name} ignored, as a background job of a non-interactive shell starts its commands, and a "
                f"Python started so never installs its KeyboardInterrupt handler")
    return None


def send(proc: subprocess.Popen, sig: signal.Signals) -> None:
    """`sig` to the process group, failing at once if the process would ignore it (instead of waiting
    TIMEOUT for a reaction that cannot come)."""
    why = ignored(proc.pid, sig)
    if why:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(why)
    os.killpg(proc.pid, sig)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out: {err[-2000:]}")
    return proc.returncode, out, err


def wait_for(marker: Path, proc: subprocess.Popen) -> None:
    """Until the process reached its fault point (it wrote `marker`); fails if it ended first."""
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"ended (code {proc.returncode}) before the fault point: {err[-2000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the fault point was never reached")
        time.sleep(0.05)


def temporaries(*folders: Path) -> list:
    return [p for f in folders if f.exists() for p in f.rglob("*") if ".tmp-" in p.name]


def tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("colors")
    for split, n, seed in (("train", 4, 0), ("val", 3, 1), ("test", 3, 2)):
        make_color_folder(base / split, per_class=n, mislabel=0, seed=seed)
    return base


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A finished, calibrated run (trained in this process: only the faults need a subprocess)."""
    from scan_cli.calibration.run import calibrate_run
    from scan_cli.training.recipes import Recipe
    from scan_cli.training.loop import FitOptions, fit

    out = tmp_path_factory.mktemp("finished") / "run"
    fit(FitOptions(backbone="resnet10_cifar", out=out, recipe=Recipe(
        data=str(data), img_size=16, epochs=1, batch_size=4, lr=0.05, schedule="constant", augment="none",
        hflip=False, workers=0, mode="joint")))
    calibrate_run(out, max_drop=0.5)
    return out


@pytest.fixture
def run(finished, tmp_path):
    """A copy of the finished run for one test to damage."""
    return copy_of(finished, tmp_path)


# -- SIGKILL ------------------------------------------------------------------------------------------
def test_fit_killed_at_a_random_step_then_resumed_equals_an_uninterrupted_run(data, tmp_path):
    step = random.Random().randint(STEPS_PER_EPOCH + 1, 3 * STEPS_PER_EPOCH)  # after the first checkpoint
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    ref = scan(tmp_path, "fit", "resnet10_cifar", "--data", data, *FIT, "--out", whole)
    victim = scan(tmp_path, "fit", "resnet10_cifar", "--data", data, *FIT, "--out", killed,
                  fault={"at": "train_step", "nth": step, "action": "kill"})
    code, _, err = finish(victim)
    assert code == -signal.SIGKILL, f"step {step}: {err[-2000:]}"
    assert (killed / "checkpoint.safetensors").is_file() and not (killed / "model.safetensors").exists()
    code, _, err = finish(scan(tmp_path, "fit", "--resume", killed))
    assert code == 0, f"step {step}: {err[-2000:]}"
    assert f"resuming {killed.resolve()} after epoch {(step - 1) // STEPS_PER_EPOCH}" in err
    code, _, err = finish(ref)
    assert code == 0, err[-2000:]
    a, b = tensors(whole / "model.safetensors"), tensors(killed / "model.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"killed at step {step}: {len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.parametrize("name", ["model.safetensors", "checkpoint.safetensors"])
def test_a_kill_in_the_middle_of_a_write_leaves_the_previous_file_loadable(run, tmp_path, name):
    from scan_cli.artifact import read_info
    from scan_cli.files import atomic_write
    from scan_cli.training.checkpoints import checkpoint_epoch

    target = run / name
    before = target.read_bytes()
    marker = tmp_path / "writing"
    proc = scan(tmp_path, fault={"at": "atomic_write", "path": str(target), "action": "pause", "marker": str(marker)})
    wait_for(marker, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    code, _, _ = finish(proc)
    assert code == -signal.SIGKILL
    assert target.read_bytes() == before
    if name == "model.safetensors":
        assert read_info(target).calibration is not None
    else:
        assert checkpoint_epoch(run) == 1
    assert len(temporaries(run)) == 1  # a killed process cleans nothing up ...
    atomic_write(run / name, lambda tmp: Path(tmp).write_bytes(before))
    assert temporaries(run) == []  # ... the next write of that file does


def test_a_kill_while_calibrate_writes_keeps_the_previous_thresholds(run, tmp_path):
    from scan_cli.artifact import load, read_info

    previous = read_info(run / "model.safetensors").calibration
    marker = tmp_path / "writing"
    proc = scan(tmp_path, "calibrate", "--run", run, "--max-drop", "0.0",
                fault={"at": "write", "name": "model.safetensors", "action": "pause", "marker": str(marker)})
    wait_for(marker, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL
    assert read_info(run / "model.safetensors").calibration == previous
    load(run / "model.safetensors")  # the tensors load too
    code, out, err = finish(scan(tmp_path, "calibrate", "--run", run, "--max-drop", "0.0", "--json"))
    assert code == 0, err[-2000:]
    assert read_info(run / "model.safetensors").calibration["settings"]["max_drop"] == 0.0
    assert temporaries(run) == []


# -- SIGINT (Ctrl-C) ----------------------------------------------------------------------------------
def ctrl_c(tmp_path, fault: dict, *args) -> tuple[int, str, str]:
    marker = tmp_path / "reached"
    proc = scan(tmp_path, *args, fault=dict(fault, action="pause", marker=str(marker)))
    wait_for(marker, proc)
    send(proc, signal.SIGINT)
    return finish(proc)


def assert_one_interrupted_line(code: int, err: str) -> str:
    assert code == 130, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "interrupted" in line.lower()]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err[-2000:]
    return lines[0]


@pytest.mark.parametrize("where", ["training", "writing the model"])
def test_ctrl_c_in_fit(data, tmp_path, where):
    from scan_cli.training.checkpoints import checkpoint_epoch

    out = tmp_path / "fit"
    fault = ({"at": "train_step", "nth": STEPS_PER_EPOCH + 2} if where == "training"
             else {"at": "write", "name": "model.safetensors"})
    code, _, err = ctrl_c(tmp_path, fault, "fit", "resnet10_cifar", "--data", data, *FIT, "--out", out)
    line = assert_one_interrupted_line(code, err)
    kept = 1 if where == "training" else 3
    assert f"epoch {kept}" in line and f"scan fit --resume {out.resolve()}" in line
    assert checkpoint_epoch(out) == kept and not (out / "model.safetensors").exists()
    assert temporaries(out) == []
    if where == "writing the model":  # what the line says works: the finished training gets its model
        code, _, err = finish(scan(tmp_path, "fit", "--resume", out))
        assert code == 0 and (out / "model.safetensors").is_file(), err[-2000:]


def test_ctrl_c_in_calibrate_keeps_the_previous_thresholds(run, tmp_path):
    from scan_cli.artifact import read_info

    before = (run / "model.safetensors").read_bytes()
    code, out, err = ctrl_c(tmp_path, {"at": "write", "name": "model.safetensors"},
                            "calibrate", "--run", run, "--max-drop", "0.0")
    assert_one_interrupted_line(code, err)
    assert (run / "model.safetensors").read_bytes() == before and read_info(run / "model.safetensors").calibration
    assert temporaries(run) == []


def test_ctrl_c_in_evaluate(run, tmp_path):
    code, out, err = ctrl_c(tmp_path, {"at": "collect"}, "evaluate", "--run", run)
    assert_one_interrupted_line(code, err)
    assert out == "" and temporaries(run) == []


def test_ctrl_c_in_profile(run, tmp_path):
    code, out, err = ctrl_c(tmp_path, {"at": "latency"}, "profile", "--run", run, "--iters", "1", "--warmup", "0")
    assert_one_interrupted_line(code, err)
    assert out == "" and temporaries(run) == []
    for cache in (run / "cache").glob("macs-*.json"):
        json.loads(cache.read_text())  # what was written is whole


@pytest.mark.parametrize("workers", ["0", "1"])  # a decoding thread, a decoding process
def test_ctrl_c_in_predict(run, data, tmp_path, workers):
    target = tmp_path / "out" / "predictions.csv"
    target.parent.mkdir()
    target.write_text("path,label\nold,row\n")
    code, out, err = ctrl_c(tmp_path, {"at": "early_exit"}, "predict", data / "test", "--run", run,
                            "--batch-size", "2", "--workers", workers, "--csv", target)
    assert_one_interrupted_line(code, err)
    assert target.read_text() == "path,label\nold,row\n" and temporaries(target.parent, run) == []


def ignore_signals() -> None:
    """As a background job of a non-interactive shell starts its commands."""
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_the_signal_check_finds_a_child_that_ignores_sigint():
    sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
    deaf = subprocess.Popen(sleep, preexec_fn=ignore_signals)
    # started from a parent that ignores both: default_signals gives the child back its defaults
    hearing = subprocess.Popen(sleep, preexec_fn=lambda: (ignore_signals(), default_signals()))
    try:
        assert "ignores SIGINT" in (ignored(deaf.pid, signal.SIGINT) or "")
        assert ignored(hearing.pid, signal.SIGINT) is None and ignored(hearing.pid, signal.SIGQUIT) is None
    finally:
        for proc in (deaf, hearing):
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_a_ctrl_c_test_passes_when_pytest_starts_with_sigint_ignored(tmp_path):
    """As `./run-tests.sh &` from a script starts pytest: SIGINT and SIGQUIT ignored."""
    inner = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path}",
                            f"{__file__}::test_ctrl_c_in_fit[training]"], cwd=HERE.parent.parent,
                           preexec_fn=ignore_signals, capture_output=True, text=True)
    last = inner.stdout.splitlines()[-1] if inner.stdout else ""
    assert inner.returncode == 0 and last.startswith("1 passed"), inner.stdout[-3000:] + inner.stderr[-2000:]


# -- a full disk ----------------------------------------------------------------------------------------
def disk_full_after_half(real):
    """A writer that writes half of the file, then finds the disk full."""

    def write(obj, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\0" * 64)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def assert_disk_full_error(code: int, out: str, err: str, path: Path) -> None:
    assert code == 1, err
    err = without_run_line(err)
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert str(path) in err and "no space left" in err.lower(), err


def test_disk_full_while_calibrate_saves(run_cli, run, monkeypatch):
    import shutil

    from scan_cli.artifact import read_info

    before = (run / "model.safetensors").read_bytes()

    def copy_until_full(src, dst, *args):  # the artifact's tensor bytes are copied behind the new header
        dst.write(src.read(100))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copyfileobj", copy_until_full)
    code, out, err = run_cli("calibrate", "--run", str(run), "--max-drop", "0.0")
    assert_disk_full_error(code, out, err, run / "model.safetensors")
    assert (run / "model.safetensors").read_bytes() == before and read_info(run / "model.safetensors").calibration
    assert temporaries(run) == []


def test_disk_full_while_fit_saves_a_checkpoint(run_cli, data, tmp_path, monkeypatch):
    import safetensors.torch

    from scan_cli.training.checkpoints import checkpoint_epoch

    real, calls = safetensors.torch.save_file, [0]

    def second_fails(tensors_, filename, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            return disk_full_after_half(real)(tensors_, filename)
        return real(tensors_, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", second_fails)
    out = tmp_path / "fit"
    code, stdout, err = run_cli("fit", "resnet10_cifar", "--data", str(data), *FIT, "--out", str(out))
    err = err.strip().splitlines()[-1] + "\n"  # fit's progress lines come first
    assert_disk_full_error(code, stdout, err, out / "checkpoint.safetensors")
    assert checkpoint_epoch(out) == 1 and temporaries(out) == []


def test_disk_full_while_predict_writes_its_csv(run_cli, run, data, tmp_path, monkeypatch):
    import csv

    target = tmp_path / "predictions.csv"
    target.write_text("old\n")

    def full(self, rows):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(csv.DictWriter, "writerows", full)
    code, out, err = run_cli("predict", str(data / "test"), "--run", str(run), "--workers", "0", "--csv", str(target))
    err = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and str(target) in err[0] and "no space left" in err[0].lower()
    assert code == 1 and target.read_text() == "old\n" and temporaries(tmp_path) == []

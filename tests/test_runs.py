"""Runs lose nothing: finished runs stay untouched, `latest` follows the newest run wherever it
lives and never points at itself, --resume keeps its settings, Ctrl-C says what was kept, and
artifact writes are atomic, durable and follow the umask."""

import json
import os
from pathlib import Path

import pytest

from conftest import make_color_folder, without_run_line

FIT = ["--img-size", "16", "--batch-size", "8", "--workers", "0", "--augment", "none"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_color_folder(tmp_path_factory.mktemp("imgs"), per_class=8)


def _runs() -> Path:
    return Path(os.environ["SCAN_RUNS_DIR"])


def test_resuming_a_finished_calibrated_run_leaves_it_untouched(run_cli, folder, tmp_path):
    from scan_cli import artifact

    code, out, err = run_cli("fit", "resnet10_cifar", "--data", str(folder), "--epochs", "1", *FIT)
    assert code == 0, err
    latest = _runs() / "latest"
    run = latest.resolve()
    artifact.update_metadata(run / "model.safetensors", calibration={"thresholds": [0.9, None, None, None]})
    before = (run / "model.safetensors").read_bytes()

    code, out, err = run_cli("fit", "--resume", str(latest))
    assert code == 1 and "finished" in err and "--epochs" in err, err
    assert (run / "model.safetensors").read_bytes() == before  # calibration kept
    assert os.readlink(latest) != "latest" and latest.resolve() == run

    code, out, err = run_cli("fit", "--resume", str(latest), "--epochs", "2", "--json")
    assert code == 0, err
    assert len(json.loads(out)["history"]) == 2 and "replaced" in err
    assert latest.resolve() == run and os.readlink(latest) != "latest"
    assert artifact.read_info(run / "model.safetensors").calibration is None  # new weights, old thresholds gone


def test_out_elsewhere_moves_latest_and_writes_nothing_in_the_working_folder(run_cli, folder, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    elsewhere = tmp_path / "elsewhere" / "myrun"
    code, out, err = run_cli("fit", "resnet10_cifar", "--data", str(folder), "--epochs", "1", "--out", str(elsewhere), *FIT)
    assert code == 0, err
    assert (_runs() / "latest").resolve() == elsewhere.resolve()
    assert not (work / "latest").exists() and not (work / "latest").is_symlink()
    assert not (elsewhere.parent / "latest").is_symlink()
    assert err.splitlines()[0].startswith("run ") and str(elsewhere.resolve()) in err.splitlines()[0]


def test_resume_refuses_settings_it_cannot_change(run_cli, folder, tmp_path):
    run = tmp_path / "r"
    code, _, err = run_cli("fit", "resnet10_cifar", "--data", str(folder), "--epochs", "1", "--out", str(run), *FIT)
    assert code == 0, err
    code, _, err = run_cli("fit", "--resume", str(run), "--lr", "0.3", "--batch-size", "4")
    assert code == 2 and "--lr" in err and "--batch-size" in err and "--epochs" in err


def test_ctrl_c_in_fit_names_the_run_and_the_resume_command(run_cli, folder, tmp_path, monkeypatch):
    from scan_cli.training import loop as training

    original = training._train_epoch
    calls = []

    def interrupted_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "_train_epoch", interrupted_in_epoch_two)
    run = tmp_path / "ctrlc"
    code, _, err = run_cli("fit", "resnet10_cifar", "--data", str(folder), "--epochs", "3", "--out", str(run), *FIT)
    assert code == 130
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted") and f"--resume {run.resolve()}" in last and "epoch 1" in last
    assert (run / "checkpoint.safetensors").is_file() and not (run / "model.safetensors").exists()


@pytest.mark.parametrize("where", ["search", "write"])
def test_ctrl_c_elsewhere_is_one_line_and_exit_130(run_cli, trained_run, monkeypatch, tmp_path, where):
    """A real SIGINT inside the real calibrate: during the threshold search, or while the model file
    is being rewritten with the thresholds. The model file stays as it was, no temporary is left."""
    import signal

    import scan_cli.calibration.choose as choosing
    from conftest import copy_of

    run = copy_of(trained_run, tmp_path)
    before = (run / "model.safetensors").read_bytes()
    ctrl_c = lambda: os.kill(os.getpid(), signal.SIGINT)  # noqa: E731  (Python raises KeyboardInterrupt next)
    if where == "search":
        real = choosing.calibrate
        monkeypatch.setattr(choosing, "calibrate", lambda *a, **k: (ctrl_c(), real(*a, **k))[1])
    else:
        real_fsync = os.fsync

        def fsync(fd):
            if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(".model.safetensors.tmp-"):
                ctrl_c()
            return real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    # Python's own handler, whatever pytest inherited (a background job starts with SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, out, err = run_cli("calibrate", "--run", str(run), "--max-drop", "0.01")
    finally:
        signal.signal(signal.SIGINT, previous)
    # a warning calibrate gave before the interrupt may stand above it (whether the tiny run's deepest
    # exit is its weakest varies with the CPU's float sums); the failure itself is one line
    failure = [line for line in without_run_line(err).splitlines() if not line.startswith("warning: ")]
    assert code == 130 and failure == ["interrupted"] and out == ""
    assert (run / "model.safetensors").read_bytes() == before
    assert not list(run.rglob("*.tmp-*"))


def test_atomic_write_follows_the_umask_and_keeps_the_old_file_on_failure(tmp_path):
    from safetensors.torch import save_file
    import torch

    from scan_cli.files import atomic_write

    target = tmp_path / "m.safetensors"
    old = os.umask(0o027)
    try:
        atomic_write(target, lambda tmp: save_file({"x": torch.zeros(2)}, str(tmp)))
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o640
    before = target.read_bytes()

    def disk_full(tmp):
        Path(tmp).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, disk_full)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind


def test_without_a_terminal_training_logs_lines_with_a_run_eta(monkeypatch, caplog):
    import logging

    from scan_cli import progress

    now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    clock = progress.StepClock(total_steps=20, done_steps=10, every=5.0, log=True)  # resumed half-way
    with caplog.at_level(logging.INFO, logger="scan_cli"):
        for _ in range(4):
            now[0] += 2.0  # 2 s per step
            clock.tick("epoch 2/2 step x")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("epoch 2/2")  # one line per 5 s, not one per step
    assert clock.eta_seconds() == pytest.approx(6 * 2.0)  # 6 steps left at 2 s each
    assert "ETA 0:00:14" in lines[0]  # logged after 3 steps: 7 left at 2 s
    assert progress.StepClock(None).eta_seconds() is None



@pytest.mark.parametrize("command", [["calibrate", "--max-drop", "0.01", "--dry-run"], ["evaluate"],
                                     ["profile", "--no-latency"], ["predict", "IMAGES", "--thresholds", "none,none,none"]])
def test_every_command_names_the_run_it_used_first(run_cli, trained_run, command, tmp_path):
    from scan_cli.runs import mark_latest

    mark_latest(trained_run)  # no --run: the latest run, which must be named
    imgs = make_color_folder(tmp_path / "imgs", per_class=1)
    code, out, err = run_cli(*[str(imgs) if c == "IMAGES" else c for c in command])
    assert code == 0, err
    first = err.splitlines()[0]
    assert first == f"run {trained_run.resolve()} ({_runs() / 'latest'})", first

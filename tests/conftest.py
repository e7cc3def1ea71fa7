import os

# Hermetic: never reach the network, never write into the checkout.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("SCAN_PROGRESS", "0")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("SCAN_RUNS_DIR", str(tmp_path / "runs"))


@pytest.fixture
def run_cli(capsys):
    """Run `scan ARGS` in-process; returns (exit_code, stdout, stderr)."""
    from scan_cli.cli import main

    def run(*args):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run

"""Run one `scan` command in this process with a fault injected at one point (the fault tests
start it as a subprocess). Configured by SCAN_FAULT, a JSON object:

* ``at``: where: ``train_step`` (before the optimiser step of training step number ``nth``,
  counted from 1 over the whole run), ``write`` (inside `artifact.atomic_write`, with the new
  file half-written under its temporary name; ``name`` picks the file, e.g. model.safetensors),
  ``collect`` (every exit's outputs being collected: evaluate), ``early_exit`` (predict's
  model call), ``latency`` (profile's timing, after its MAC counts were cached), ``export_step`` (point
  number ``nth`` of `scan export`: before and after each graph written or checked, the manifest
  written, the fsync, the publishing rename and the removal of the old folder; ``nth`` 0 kills
  nowhere and writes the number of points to ``count_file``), or ``atomic_write`` (a plain call of
  `artifact.atomic_write(path, slow writer)`, no command at all).
* ``action``: ``kill`` (SIGKILL this process there) or ``pause`` (create ``marker``, then sleep
  until a signal arrives: the test sends SIGINT or SIGKILL).

Everything else on the command line is passed to `scan`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

FAULT = json.loads(os.environ["SCAN_FAULT"])


def fault() -> None:
    if FAULT["action"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    Path(FAULT["marker"]).write_text(str(os.getpid()))
    deadline = time.monotonic() + float(FAULT.get("timeout", 120))
    while time.monotonic() < deadline:  # interrupted here by the test's signal
        time.sleep(0.05)
    sys.exit("fault_runner: no signal came")


def half_written(write, name):
    """A writer that writes the file, then cuts it in half before the fault: the moment a crash
    or Ctrl-C hurts most, with a damaged file under the temporary name."""

    def writer(tmp):
        write(tmp)
        if Path(tmp).name.startswith(f".{name}.tmp-"):
            data = Path(tmp).read_bytes()
            Path(tmp).write_bytes(data[: len(data) // 2])
            fault()

    return writer


def install() -> None:
    at = FAULT["at"]
    if at == "train_step":
        from scan_cli.training import loop as training

        real, calls = training._train_step, [0]

        def step(*args, **kwargs):
            calls[0] += 1
            if calls[0] == int(FAULT["nth"]):
                fault()
            return real(*args, **kwargs)

        training._train_step = step
    elif at == "write":
        from scan_cli import files

        real_write = files.atomic_write
        files.atomic_write = lambda path, write: real_write(path, half_written(write, FAULT["name"]))
    elif at == "collect":
        from scan_cli import exit_outputs

        real_collect = exit_outputs.collect_exit_outputs

        def collect(model, loader, *args, **kwargs):
            fault()
            return real_collect(model, loader, *args, **kwargs)

        exit_outputs.collect_exit_outputs = collect
    elif at == "early_exit":
        from scan_cli.model import ScanModel

        real_exit = ScanModel.early_exit

        def early_exit(self, *args, **kwargs):
            fault()
            return real_exit(self, *args, **kwargs)

        ScanModel.early_exit = early_exit
    elif at == "latency":
        import scan_cli.profiling as profiling

        real_measure = profiling.measure_latency

        def measure(*args, **kwargs):
            fault()
            return real_measure(*args, **kwargs)

        profiling.measure_latency = measure
    elif at == "export_step":
        install_export_points()
    else:
        raise SystemExit(f"fault_runner: unknown fault point {at!r}")


def install_export_points() -> None:
    """Number the moments of an export (before and after each step that writes or moves files)."""
    import atexit
    import shutil

    from scan_cli import files
    from scan_cli.inference import export, manifest

    seen = [0]

    def point() -> None:
        seen[0] += 1
        if seen[0] == int(FAULT["nth"]):
            fault()

    def around(owner, name):
        real = getattr(owner, name)

        def wrapped(*args, **kwargs):
            point()
            result = real(*args, **kwargs)
            point()
            return result

        setattr(owner, name, wrapped)

    for owner, name in ((export, "export_graph"), (export, "check_graph"), (manifest, "write"),
                        (files, "fsync_tree"), (files, "replace_folder"), (files, "_exchange"), (shutil, "rmtree")):
        around(owner, name)
    if int(FAULT["nth"]) == 0:
        atexit.register(lambda: Path(FAULT["count_file"]).write_text(str(seen[0])))


def main() -> None:
    if FAULT["at"] == "atomic_write":
        from scan_cli.files import atomic_write

        def slow(tmp):
            Path(tmp).write_bytes(b"new contents, half of them")
            fault()

        atomic_write(Path(FAULT["path"]), slow)
        return
    install()
    from scan_cli.cli import main as scan

    scan(sys.argv[1:])


if __name__ == "__main__":
    main()

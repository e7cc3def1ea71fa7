"""Run folders: `runs/<time>-<backbone>/` with the model, the resolved recipe and caches.

`runs/latest` points to the newest run; calibrate, evaluate, profile and predict use it when no
--run is given. The runs root is ./runs, or $SCAN_RUNS_DIR.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from .errors import ScanError

MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
RECIPE_FILE = "recipe.json"
CACHE_DIR = "cache"


def runs_root() -> Path:
    return Path(os.environ.get("SCAN_RUNS_DIR", "runs"))


def new_run_dir(backbone_id: str, root: Optional[Path] = None) -> Path:
    root = Path(root) if root else runs_root()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / f"{stamp}-{backbone_id}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{backbone_id}-{n}"
    return path


def latest_link(root: Optional[Path] = None) -> Path:
    return (Path(root) if root else runs_root()) / "latest"


def check_new_run_dir(out) -> None:
    """``fit --out``: never the ``latest`` link's own path (a real folder there would break every
    later ``fit`` at its very end)."""
    from .errors import UsageError

    if out is not None and os.path.abspath(out) == os.path.abspath(latest_link()):
        raise UsageError(f"--out {out} is the link scan points at the newest run: give another folder, "
                         "e.g. --out runs/my-run")


def mark_latest(run_dir: Path, root: Optional[Path] = None) -> None:
    """Point ``<runs root>/latest`` at ``run_dir``, wherever the run lives (``--out`` included).

    The link is replaced atomically; it is relative when the run is inside the root, absolute
    otherwise, and never points at itself (``run_dir`` is resolved first)."""
    link = latest_link(root)
    target = Path(run_dir).resolve()
    link.parent.mkdir(parents=True, exist_ok=True)
    if target == link.absolute() or target == link.resolve():
        return  # already the latest run (e.g. --resume runs/latest)
    parent = link.parent.resolve()
    value = target.name if target.parent == parent else str(target)
    tmp = link.parent / f".latest.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(value, tmp)
    os.replace(tmp, link)


def resolve_run(run: Optional[str]) -> Path:
    """The run folder for --run (a folder or its model file), or the latest run."""
    if run is None:
        latest = latest_link()
        if not latest.exists():
            if latest.is_symlink():
                raise ScanError(f"{latest} points to {os.readlink(latest)}, which is gone: pass --run DIR")
            raise ScanError(f"no run found at {latest}: run 'scan fit' first or pass --run DIR")
        path = latest.resolve()
    else:
        path = Path(run).resolve()
        if path.is_file():
            path = path.parent
    if not (path / MODEL_FILE).is_file():
        raise ScanError(f"{path} holds no {MODEL_FILE}: pass --run with a folder written by 'scan fit'")
    _announce(path, via_latest=run is None)
    return path


_ANNOUNCED: set = set()  # runs named by the command now running (main() clears it per command)


def forget_announced() -> None:
    _ANNOUNCED.clear()


def _announce(path: Path, via_latest: bool) -> None:
    """Name the run a command uses, once, on stderr: its first line (never a silent 'latest')."""
    if path in _ANNOUNCED:
        return
    _ANNOUNCED.add(path)
    import logging

    logging.getLogger("scan_cli").info(f"run {path}" + (f" ({latest_link()})" if via_latest else ""))


def model_path(run_dir: Path) -> Path:
    return Path(run_dir) / MODEL_FILE

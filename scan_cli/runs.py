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


def mark_latest(run_dir: Path) -> None:
    """Point <root>/latest at run_dir (atomically replace the link)."""
    run_dir = Path(run_dir)
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, link)


def resolve_run(run: Optional[str]) -> Path:
    """The run folder for --run (a folder or its model file), or the latest run."""
    if run is None:
        latest = runs_root() / "latest"
        if not latest.exists():
            raise ScanError(f"no run found at {latest}: run 'scan fit' first or pass --run DIR")
        path = latest.resolve()
    else:
        path = Path(run)
        if path.is_file():
            path = path.parent
    if not (path / MODEL_FILE).is_file():
        raise ScanError(f"{path} holds no {MODEL_FILE}: pass --run with a folder written by 'scan fit'")
    return path


def model_path(run_dir: Path) -> Path:
    return Path(run_dir) / MODEL_FILE

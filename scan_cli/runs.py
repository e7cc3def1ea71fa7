"""Run folders: `runs/<time>-<backbone>/` with the model, the resolved recipe and caches.

`runs/latest` points to the newest run; calibrate, evaluate, profile and predict use it when no
--run is given. The runs root is ./runs, or $SCAN_RUNS_DIR.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from .errors import ScanError, UsageError

MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
RECIPE_FILE = "recipe.json"
CACHE_DIR = "cache"
METRICS_FILE = "metrics.json"


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

    if out is not None and os.path.abspath(out) == os.path.abspath(latest_link()):
        raise UsageError(f"--out {out} is the link scan points at the newest run: give another folder, "
                         "e.g. --out runs/my-run")
    if out is None:
        return
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a folder for the new run")
    if (out / MODEL_FILE).exists() or (out / CHECKPOINT_FILE).exists():  # found before the data and model load
        raise UsageError(f"--out {out} already holds a run: pick another --out, or --resume {out}")


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


class Run:
    """One run folder as a command uses it: the folder, its files, every cache name, the artifact's
    header read once and the model loaded once (per device). ``calibrate``, ``evaluate``, ``profile``,
    ``predict`` and ``export`` take one; ``Run.of`` accepts a folder too (the Python API)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._info = None
        self._fingerprint = None
        self._models: dict = {}

    @classmethod
    def open(cls, run: Optional[str]) -> "Run":
        """The run --run names (a folder or its model file), or the latest run; named on stderr."""
        return cls(resolve_run(run))

    @classmethod
    def of(cls, run) -> "Run":
        return run if isinstance(run, Run) else cls(Path(run))

    def __fspath__(self) -> str:  # a Run is also its folder: Path(run), open(...) keep working
        return str(self.folder)

    # -- files --------------------------------------------------------------------------------------
    @property
    def model_file(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def checkpoint_file(self) -> Path:
        return self.folder / CHECKPOINT_FILE

    @property
    def recipe_file(self) -> Path:
        return self.folder / RECIPE_FILE

    @property
    def metrics_file(self) -> Path:
        return self.folder / METRICS_FILE

    @property
    def cache_dir(self) -> Path:
        return self.folder / CACHE_DIR

    # -- the artifact -------------------------------------------------------------------------------
    @property
    def info(self):
        """The artifact's metadata (``ArtifactInfo``), read once."""
        if self._info is None:
            from .artifact import read_info

            self._info = read_info(self.model_file)
        return self._info

    def metadata_changed(self, info) -> None:
        """After this command rewrote the metadata (calibrate): keep the new header, no re-read."""
        self._info = info

    @property
    def num_exits(self) -> int:
        return len(self.info.split_points) + 1

    @property
    def fingerprint(self) -> str:
        """The tensors' fingerprint: metadata changes (calibration) keep the caches valid."""
        if self._fingerprint is None:
            from .artifact import artifact_fingerprint

            self._fingerprint = artifact_fingerprint(self.model_file)
        return self._fingerprint

    def load(self, device="cpu", write: bool = True):
        """(model, info) on ``device``, built and loaded once per device for the whole command.
        ``write=False`` (a dry run): the build's shapes are traced, not read from or kept in the cache."""
        key = str(device)
        if key not in self._models:
            from .artifact import load

            model, _ = load(self.model_file, device=device, info=self.info,
                            shapes_cache=self.shapes_cache(self.info.input_size) if write else None)
            self._models[key] = model
        return self._models[key], self.info

    # -- caches: every name built here ----------------------------------------------------------------
    def outputs_cache(self, split: str, digest: str) -> Path:
        """Exit outputs of a split, per artifact and per data (``data.split_digest``: for validation the
        membership digest), so outputs of different data are never mixed."""
        return self.cache_dir / f"{split}-outputs-v3-{self.fingerprint}-{digest}.safetensors"

    def shapes_cache(self, input_size: int) -> Path:
        """The backbone's dry-run shapes, keyed inside by its structure and versions (``backbones.shapes``)."""
        return self.cache_dir / f"shapes-{int(input_size)}.json"

    def macs_cache(self, input_size: int) -> Path:
        return self.cache_dir / f"macs-{self.fingerprint}-{int(input_size)}.json"

    def onnx_cache(self, heads: Optional[list], precision: str = "float32") -> Path:
        """The run's cached ONNX export with these shallow heads (one bool each). int8: ``heads`` None is
        the quantized source with every head (``inference/quantize.py``), else a copy with only ``heads``."""
        base = f"onnx-{self.fingerprint}" if precision == "float32" else f"onnx-{self.fingerprint}-{precision}"
        if heads is None and precision != "float32":
            return self.cache_dir / base
        tag = "".join("1" if h else "0" for h in heads)
        return self.cache_dir / f"{base}-{tag}"

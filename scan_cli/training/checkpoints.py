"""Checkpoints: model and optimiser state with the resolved recipe in one safetensors file, written
atomically after every epoch; reading them back for an exact resume, and what may be resumed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .. import files
from ..errors import ScanError
from ..runs import CHECKPOINT_FILE, MODEL_FILE
from .recipes import Recipe

log = logging.getLogger("scan_cli")


def save_checkpoint(path: Path, model, optimizer, epoch: int, recipe: Recipe, history: list, extra: dict) -> None:
    from safetensors.torch import save_file


    tensors = {f"model.{k}": v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    layout = {}
    for idx, st in opt_state["state"].items():
        layout[str(idx)] = {}
        for name, value in st.items():
            if hasattr(value, "shape"):
                tensors[f"opt.{idx}.{name}"] = value.detach().contiguous().clone()
                layout[str(idx)][name] = "tensor"
            else:
                layout[str(idx)][name] = value
    meta = {"epoch": str(epoch), "recipe": json.dumps(recipe.to_dict()), "history": json.dumps(history),
            "opt_layout": json.dumps(layout), "opt_groups": json.dumps(opt_state["param_groups"]),
            "extra": json.dumps(extra)}
    files.atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_checkpoint(path: Path, model, optimizer) -> tuple[int, list, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    layout = json.loads(meta["opt_layout"])
    state = {}
    for idx, entries in layout.items():
        state[int(idx)] = {name: tensors[f"opt.{idx}.{name}"] if kind == "tensor" else kind
                           for name, kind in entries.items()}
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["opt_groups"])})
    return int(meta["epoch"]), json.loads(meta["history"]), json.loads(meta.get("extra", "{}"))


def read_checkpoint_recipe(run_dir: Path) -> tuple[Recipe, dict]:
    """The resolved recipe a run was trained with, and its extra metadata (backbone, recipe name)."""
    from safetensors import safe_open

    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise ScanError(f"nothing to resume in {run_dir}: no {CHECKPOINT_FILE} (start a new run without --resume)")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    return Recipe(**json.loads(meta["recipe"])), json.loads(meta.get("extra", "{}"))




def checkpoint_epoch(run_dir: Path) -> int:
    """Epochs done according to the run's checkpoint (its header only)."""
    from safetensors import safe_open

    with safe_open(str(Path(run_dir) / CHECKPOINT_FILE), framework="pt") as f:
        return int(f.metadata()["epoch"])


def check_resumable(run_dir: Path, recipe: Recipe) -> None:
    """A finished run is left untouched; extending one drops its calibration (new weights)."""
    if not (run_dir / CHECKPOINT_FILE).is_file():
        raise ScanError(f"nothing to resume in {run_dir}: no {CHECKPOINT_FILE} (start a new run without --resume)")
    done, total = checkpoint_epoch(run_dir), recipe.epochs + (recipe.heads_epochs or 0)  # the heads phase too
    if done >= total and not (run_dir / MODEL_FILE).is_file():
        log.info(f"{run_dir} finished training ({done} epochs) but its model was not written: writing it")
        return
    if done >= total:
        more = ("its backbone is final after its heads phase: start a new run with more --epochs" if recipe.heads_epochs
                else f"to train it longer, pass --epochs N with N > {done}")
        raise ScanError(f"{run_dir} is finished ({done} of {total} epochs) and was left untouched: {more}")
    if (run_dir / MODEL_FILE).is_file():
        log.warning(f"{run_dir} is extended from {done} to {total} epochs: its model and any calibration "
                    "are replaced at the end (run 'scan calibrate' again)")



"""Backbone weights the user already has: ``scan fit --weights FILE [--ema]``.

Accepted, all without running code from the file:

* a ``.safetensors`` file (a plain state dict, or a SCAN ``model.safetensors``: its backbone is taken);
* a checkpoint written by timm's ``train.py`` (a dict with ``state_dict``, optionally
  ``state_dict_ema``, ``args`` (an ``argparse.Namespace``), ``optimizer``, ``epoch``, ...);
  ``--ema`` picks the EMA weights;
* a dict with ``model`` / ``model_ema`` (other trainers), or a plain ``state_dict`` saved with
  ``torch.save``.

Pickle-based files are read with ``torch.load(weights_only=True)``, whose unpickler only builds
tensors and plain containers; ``argparse.Namespace`` is allowed as well because timm stores its
arguments in one (a bag of attributes: building it runs no code). Anything else in the file is
refused with one line, before any object in it is built.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ScanError

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers
SCAN_BACKBONE_PREFIX = "backbone.model."  # a SCAN artifact's backbone


def read_state_dict(path, ema: bool = False) -> tuple[dict, str]:
    """The tensors of a weights file as a flat state dict, and which part of the file they came from."""
    path = Path(path)
    if not path.is_file():
        raise ScanError(f"--weights {path}: no such file")
    if path.suffix == ".safetensors":
        state, source = _read_safetensors(path), "safetensors"
    else:
        state, source = _pick(_torch_load(path), path, ema)
    if ema and source in ("safetensors", "state dict"):
        raise ScanError(f"--weights {path} holds one set of weights, no EMA copy: drop --ema")
    state = _strip_prefixes(state)
    return state, source


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise ScanError(f"--weights {path} is not a readable safetensors file ({_first_line(exc)}): "
                        "re-save it with safetensors.torch.save_file") from None


def _torch_load(path: Path):
    import argparse
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        unsafe = _unsafe_globals(path)
        what = f" ({', '.join(unsafe[:3])})" if unsafe else ""
        raise ScanError(f"--weights {path} contains pickled Python objects other than tensors{what}, which scan "
                        "never unpickles: save the weights with torch.save(model.state_dict(), ...) or as "
                        ".safetensors") from None
    except Exception as exc:
        raise ScanError(f"--weights {path} cannot be read ({_first_line(exc)}): give a .safetensors file, a "
                        "state_dict saved with torch.save, or a timm training checkpoint") from None


def _unsafe_globals(path: Path) -> list[str]:
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        return []


def _is_state_dict(obj) -> bool:
    import torch

    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _pick(obj, path: Path, ema: bool) -> tuple[dict, str]:
    """The state dict inside a checkpoint: timm's keys first, then other trainers' common ones."""
    if _is_state_dict(obj):
        return obj, "state dict"
    if not isinstance(obj, dict):
        raise ScanError(f"--weights {path} holds a {type(obj).__name__}, not a state dict or checkpoint: "
                        "save model.state_dict()")
    ema_keys = [k for k in ("state_dict_ema", "model_ema") if _is_state_dict(obj.get(k))]
    main_keys = [k for k in ("state_dict", "model") if _is_state_dict(obj.get(k))]
    if ema:
        if not ema_keys:
            raise ScanError(f"--weights {path} has no EMA weights (no state_dict_ema or model_ema): drop --ema")
        return obj[ema_keys[0]], ema_keys[0]
    if main_keys:
        if ema_keys:
            import logging

            logging.getLogger("scan_cli").info(
                f"--weights: using '{main_keys[0]}'; the checkpoint also holds EMA weights ('{ema_keys[0]}'): "
                "pass --ema to use them")
        return obj[main_keys[0]], main_keys[0]
    if ema_keys:
        return obj[ema_keys[0]], ema_keys[0]
    keys = ", ".join(sorted(map(str, obj))[:6])
    raise ScanError(f"--weights {path} is a dict without weights under state_dict, state_dict_ema, model or "
                    f"model_ema (keys: {keys}): save model.state_dict()")


def _strip_prefixes(state: dict) -> dict:
    if any(k.startswith(SCAN_BACKBONE_PREFIX) for k in state):  # a SCAN artifact: keep its backbone
        return {k[len(SCAN_BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(SCAN_BACKBONE_PREFIX)}
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if k.startswith(prefix):
                    k, changed = k[len(prefix):], True
        out[k] = v
    return out


def load_backbone_weights(backbone, path, ema: bool = False) -> list[str]:
    """Load a weights file into the backbone's network. Returns the classifier tensors left out
    because their class count differs (they stay freshly initialised); any other mismatch is an error."""
    state, _ = read_state_dict(path, ema=ema)
    target = getattr(backbone, "model", backbone)
    own = target.state_dict()
    classifier = _classifier_keys(backbone, target)
    unknown = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if unknown or [k for k in missing if k not in classifier]:
        detail = "; ".join(part for part in (
            f"{len(missing)} tensors missing (e.g. {', '.join(missing[:2])})" if missing else "",
            f"{len(unknown)} unknown (e.g. {', '.join(unknown[:2])})" if unknown else "") if part)
        raise ScanError(f"--weights {path} does not fit this backbone ({detail}): pass weights saved from the "
                        "same architecture")
    skipped = [k for k, v in state.items() if own[k].shape != v.shape]
    if any(k not in classifier for k in skipped):
        bad = next(k for k in skipped if k not in classifier)
        raise ScanError(f"--weights {path} has a tensor of another shape than this backbone ({bad}: "
                        f"{tuple(state[bad].shape)} vs {tuple(own[bad].shape)}): pass weights saved from the "
                        "same architecture")
    skipped += [k for k in missing if k in classifier]
    target.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    return skipped


def _classifier_keys(backbone, target) -> set[str]:
    try:
        clf = backbone.classifier()
    except Exception:
        return set()
    names = {id(t): n for n, t in target.state_dict(keep_vars=True).items()}
    return {names[id(t)] for t in list(clf.parameters()) + list(clf.buffers()) if id(t) in names}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__

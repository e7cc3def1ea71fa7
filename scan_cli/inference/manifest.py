"""The export manifest (``manifest.json``): its format, the one reader and the one writer.

An export folder is untrusted input (it may come from anywhere), so ``read`` checks everything the
engines use before any ONNX Runtime session exists: plain JSON (no NaN/Infinity), every key's type,
length and range, the pieces' order and tensor names, every file named staying inside the folder
(symbolic links resolved), and each graph's declared inputs and outputs (parsed with onnx's
protobuf classes, without the external data: a graph that stores its weights in other files is
refused, so nothing outside the folder is ever opened). Every problem is one ``ScanError`` naming
the key and the fix; nothing here blames a command-line flag.

Nothing here imports onnx (or torch) at module level: the CLI imports this module cheaply.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

from ..errors import ScanError

MANIFEST_FILE = "manifest.json"
FORMAT = "scan-onnx-cascade"
FORMAT_VERSION = 1
MAX_BYTES = 64 << 20  # a manifest is a few KiB (21k class names: ~1 MiB); never read a huge file whole
MAX_EXITS = 64
SCORES = ("max_softmax", "margin", "neg_entropy")  # = scoring.SCORES (checked by a test; no import: stay light)
FALLBACKS = ("last", "ensemble")
FIX = "export again with 'scan export'"
# every key a format-1 manifest may hold: anything else is refused (a key added here is a format change)
KEYS = {"format", "format_version", "producer", "backbone", "num_exits", "classes", "input", "data_config",
        "thresholds", "score", "fallback", "calibrated", "drift_reference", "macs", "pieces", "full", "plain",
        "precision", "quantization"}  # the last two: `scan export --quantize int8` (inference/quantize.py)
PRECISIONS = ("float32", "int8")
PIECE_KEYS = {"file", "exit", "input", "input_shape", "outputs", "features", "features_shape", "logits",
              "max_abs_diff_vs_torch", "threshold", "macs_cumulative"}


class ManifestError(ScanError):
    """The export folder is damaged or not ours (exit 1): never a usage error."""


# -- reading -------------------------------------------------------------------------------------------
def read(folder, *, graphs: bool = True) -> dict:
    """The validated manifest of the export ``folder``; ``graphs``: also check every piece's ONNX
    graph against it (needs the ``onnx`` package; without it ``check_sessions`` does it later)."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    doc = _load_json(folder, path)
    check(doc, folder)
    if graphs:
        check_graphs(doc, folder)
    return doc


def _load_json(folder: Path, path: Path) -> dict:
    if not path.exists() and not path.is_symlink():
        raise ManifestError(f"no {MANIFEST_FILE} in {folder}: point --run at a folder written by 'scan export'")
    _inside(folder, MANIFEST_FILE, MANIFEST_FILE, path)  # a link out of the folder is refused
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ManifestError(f"{path} is larger than {MAX_BYTES >> 20} MiB, not a scan manifest: {FIX}")
        text = path.read_bytes().decode("utf-8")
        doc = json.loads(text, parse_constant=_no_constant)
    except ManifestError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        why = getattr(exc, "strerror", None) or (str(exc).splitlines() or ["unreadable"])[0][:120]
        raise ManifestError(f"{path} is not readable JSON ({why}): {FIX}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ManifestError(f"{path} is not a scan export manifest: point --run at a folder written by 'scan export'")
    return doc


def _no_constant(name: str):
    raise ValueError(f"{name} is not plain JSON")


# -- the schema ----------------------------------------------------------------------------------------
class _Checker:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, problem: str):
        raise ManifestError(f"{self.path}: {key} {problem}: {FIX}")

    def get(self, doc: dict, key: str, where: str = ""):
        if key not in doc:
            self.fail(f"{where}{key}", "is missing")
        return doc[key]

    def integer(self, value, key: str, low: int = 0, high: Optional[int] = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"is {_show(value)}, not a whole number")
        if value < low or (high is not None and value > high):
            self.fail(key, f"is {value}, outside [{low}, {high if high is not None else 'inf'}]")
        return value

    def number(self, value, key: str, low: float = -math.inf, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(key, f"is {_show(value)}, not a finite number")
        if value < low or (positive and value <= 0):
            self.fail(key, f"is {value}, out of range")
        return float(value)

    def string(self, value, key: str, choices: Optional[tuple] = None, empty: bool = False) -> str:
        if not isinstance(value, str) or (not empty and not value):
            self.fail(key, f"is {_show(value)}, not a non-empty string")
        if choices is not None and value not in choices:
            self.fail(key, f"is '{value[:40]}', not one of {', '.join(choices)}")
        return value

    def listing(self, value, key: str, length: Optional[int] = None) -> list:
        if not isinstance(value, list):
            self.fail(key, f"is {_show(value)}, not a list")
        if length is not None and len(value) != length:
            self.fail(key, f"has {len(value)} entries where num_exits says {length}" if key in _PER_EXIT
                      else f"has {len(value)} entries, not {length}")
        return value

    def mapping(self, value, key: str) -> dict:
        if not isinstance(value, dict):
            self.fail(key, f"is {_show(value)}, not an object")
        return value

    def shape(self, value, key: str, rank: Optional[int] = None) -> list:
        dims = self.listing(value, key, rank)
        if not dims or dims[0] is not None:
            self.fail(key, "must start with null (the batch axis)")
        for i, d in enumerate(dims[1:], 1):
            self.integer(d, f"{key}[{i}]", 1, 1 << 20)
        return dims


_PER_EXIT = ("thresholds", "pieces", "macs.exits_cumulative")


def _show(value) -> str:
    text = json.dumps(value, allow_nan=True) if not isinstance(value, (dict, list)) else type(value).__name__
    kind = {bool: "a boolean", str: "a string", type(None): "null", dict: "an object", list: "a list"}.get(type(value))
    return f"{kind} {text[:40]}" if kind in ("a string", "a boolean") else kind or text[:40]


def check(doc: dict, folder: Path) -> None:
    """The schema: every key the engines read, with types, lengths, ranges and piece names."""
    c = _Checker(Path(folder) / MANIFEST_FILE)
    version = c.get(doc, "format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        c.fail("format_version", f"is {_show(version)}, not a whole number")
    if version != FORMAT_VERSION:
        raise ManifestError(f"{c.path} has export format {version}, this scan_cli reads {FORMAT_VERSION}: "
                            "export again with this version ('scan export')")
    _known(c, doc, KEYS, "")
    if doc.get("precision", "float32") not in PRECISIONS:
        c.fail("precision", f"is {str(doc.get('precision'))[:20]!r}, not one of {', '.join(PRECISIONS)}")
    if "quantization" in doc:
        c.mapping(doc["quantization"], "quantization")
    K = c.integer(c.get(doc, "num_exits"), "num_exits", 1, MAX_EXITS)
    classes = c.listing(c.get(doc, "classes"), "classes")
    if not classes:
        c.fail("classes", "is empty")
    for i, name in enumerate(classes):
        c.string(name, f"classes[{i}]", empty=True)
    backbone = c.mapping(c.get(doc, "backbone"), "backbone")
    c.string(c.get(backbone, "id", "backbone."), "backbone.id")
    inp = c.mapping(c.get(doc, "input"), "input")
    c.string(c.get(inp, "name", "input."), "input.name", ("image",))
    shape = c.shape(c.get(inp, "shape", "input."), "input.shape", 4)
    if shape[1] != 3 or shape[2] != shape[3]:
        c.fail("input.shape", f"is {shape}, not [null, 3, S, S]")
    _check_data_config(c, c.mapping(c.get(doc, "data_config"), "data_config"), shape[-1])
    thresholds = c.listing(c.get(doc, "thresholds"), "thresholds", K)
    for k, t in enumerate(thresholds):
        if t is not None:
            c.number(t, f"thresholds[{k}]")
    c.string(c.get(doc, "score"), "score", SCORES)
    c.string(c.get(doc, "fallback"), "fallback", FALLBACKS)
    if not isinstance(c.get(doc, "calibrated"), bool):
        c.fail("calibrated", f"is {_show(doc['calibrated'])}, not true or false")
    if doc.get("drift_reference") is not None:  # optional: what predict's drift alarm compares with
        from ..calibration.drift import reference_problem

        problem = reference_problem(doc["drift_reference"], K)
        if problem:
            c.fail("drift_reference", problem)
    macs = c.mapping(c.get(doc, "macs"), "macs")
    c.number(c.get(macs, "backbone", "macs."), "macs.backbone", 0)
    for k, v in enumerate(c.listing(c.get(macs, "exits_cumulative", "macs."), "macs.exits_cumulative", K)):
        c.number(v, f"macs.exits_cumulative[{k}]", 0)
    pieces = c.listing(c.get(doc, "pieces"), "pieces", K)
    for k, piece in enumerate(pieces):
        _check_piece(c, Path(folder), c.mapping(piece, f"pieces[{k}]"), k, K)
    for key in ("full", "plain"):  # not run by the engines, but still files the folder names
        if key in doc:
            extra = c.mapping(doc[key], key)
            _inside(Path(folder), c.string(c.get(extra, "file", f"{key}."), f"{key}.file"), f"{key}.file", c.path)


def _known(c: _Checker, doc: dict, keys: set, where: str) -> None:
    for key in doc:
        if key not in keys:
            c.fail(f"{where}{str(key)[:40]}", "is not a key of export format 1 (written by another scan_cli?)")


def _check_data_config(c: _Checker, cfg: dict, size: int) -> None:
    dims = c.listing(c.get(cfg, "input_size", "data_config."), "data_config.input_size", 3)
    for i, d in enumerate(dims):
        c.integer(d, f"data_config.input_size[{i}]", 1, 1 << 20)
    if dims[0] != 3:
        c.fail("data_config.input_size", f"is {dims}, not [3, H, W]")
    for key in ("mean", "std"):
        for i, v in enumerate(c.listing(c.get(cfg, key, "data_config."), f"data_config.{key}", 3)):
            c.number(v, f"data_config.{key}[{i}]", positive=key == "std")
    if cfg.get("crop_pct") is not None:
        crop = c.number(cfg["crop_pct"], "data_config.crop_pct", positive=True)
        if crop > 4:
            c.fail("data_config.crop_pct", f"is {crop}, not a crop fraction")
    for key in ("interpolation", "crop_mode"):
        if cfg.get(key) is not None:
            c.string(cfg[key], f"data_config.{key}")
    if cfg.get("crop_mode") not in (None, "center", "squash", "border"):
        c.fail("data_config.crop_mode", f"is '{str(cfg['crop_mode'])[:40]}', not center, squash or border")


def _check_piece(c: _Checker, folder: Path, piece: dict, k: int, K: int) -> None:
    """Piece k: exit k+1, its input and outputs named as `scan export` names them, in order."""
    key = f"pieces[{k}]"
    _known(c, piece, PIECE_KEYS, f"{key}.")
    _inside(folder, c.string(c.get(piece, "file", f"{key}."), f"{key}.file"), f"{key}.file", c.path)
    if c.integer(c.get(piece, "exit", f"{key}."), f"{key}.exit", 1, MAX_EXITS) != k + 1:
        c.fail(f"{key}.exit", f"is {piece['exit']} where the pieces' order says {k + 1} (pieces out of order)")
    last = k == K - 1
    want_input = "image" if k == 0 else f"features_{k}"
    if c.string(c.get(piece, "input", f"{key}."), f"{key}.input") != want_input:
        c.fail(f"{key}.input", f"is '{piece['input'][:40]}', not '{want_input}'")
    features, logits = piece.get("features"), piece.get("logits")
    want_features = None if last else f"features_{k + 1}"
    if features != want_features:
        c.fail(f"{key}.features", f"is {_show(features)}, not {_show(want_features)}")
    if logits not in ((f"logits_{k + 1}",) if last else (f"logits_{k + 1}", None)):
        c.fail(f"{key}.logits", f"is {_show(logits)}, not 'logits_{k + 1}'{'' if last else ' or null'}")
    outputs = c.listing(c.get(piece, "outputs", f"{key}."), f"{key}.outputs")
    if outputs != [n for n in (features, logits) if n]:
        c.fail(f"{key}.outputs", f"is {[str(o)[:20] for o in outputs]}, not its features and logits in order")
    if k > 0 or "input_shape" in piece:
        c.shape(c.get(piece, "input_shape", f"{key}."), f"{key}.input_shape")
    if not last:
        c.shape(c.get(piece, "features_shape", f"{key}."), f"{key}.features_shape")


def _inside(folder: Path, name: str, key: str, where: Path) -> Path:
    """``folder/name`` if it stays inside ``folder`` once every link is resolved: no absolute paths,
    no '..', no link pointing out."""
    root = os.path.realpath(folder)
    shown = name[:60].encode("unicode_escape").decode()  # no control characters on the terminal
    if os.path.isabs(name) or "\x00" in name:
        raise ManifestError(f"{where}: {key} '{shown}' is not a file name inside the export folder: {FIX}")
    target = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, target]) != root or target == root:
        if key == MANIFEST_FILE:
            raise ManifestError(f"{where} is a link to a file outside the export folder: {FIX}")
        raise ManifestError(f"{where}: {key} '{shown}' points outside the export folder: {FIX}")
    return Path(target)


def piece_path(folder, piece: dict) -> Path:
    """Where a (checked) piece's graph is: always inside ``folder``."""
    return _inside(Path(folder), piece["file"], "file", Path(folder) / MANIFEST_FILE)


# -- the graphs ----------------------------------------------------------------------------------------
def expected_io(doc: dict, k: int) -> tuple[list, list]:
    """Piece k's declared (name, dims) inputs and outputs as the manifest says (None = any size)."""
    piece, classes = doc["pieces"][k], len(doc["classes"])
    in_dims = doc["input"]["shape"] if k == 0 else doc["pieces"][k - 1]["features_shape"]
    outputs = []
    if piece.get("features"):
        outputs.append((piece["features"], piece["features_shape"]))
    if piece.get("logits"):
        outputs.append((piece["logits"], [None, classes]))
    return [(piece["input"], in_dims)], outputs


def compare_io(doc: dict, folder: Path, k: int, inputs: list, outputs: list) -> None:
    """The graph's (name, dims) against the manifest's; a dim that is a string or None is symbolic."""
    want_in, want_out = expected_io(doc, k)
    file = doc["pieces"][k]["file"]
    for what, got, want in (("inputs", inputs, want_in), ("outputs", outputs, want_out)):
        if [n for n, _ in got] != [n for n, _ in want]:
            raise ManifestError(f"{Path(folder) / file} has {what} {[n for n, _ in got]} where the manifest's "
                                f"pieces[{k}] says {[n for n, _ in want]} (pieces swapped or replaced): {FIX}")
        for (name, dims), (_, wdims) in zip(got, want):
            fixed = [d if isinstance(d, int) and d > 0 else None for d in dims]
            if len(fixed) != len(wdims) or any(a is not None and b is not None and a != b
                                               for a, b in zip(fixed[1:], wdims[1:])):
                raise ManifestError(f"{Path(folder) / file}: {name} has shape {fixed} where the manifest says "
                                    f"{wdims}: {FIX}")


def check_graphs(doc: dict, folder: Path) -> None:
    """Each piece's graph, read without its external data: one input and the outputs the manifest
    names, with matching shapes, and every weight inside the file."""
    onnx_pb = _onnx_protos()
    if onnx_pb is None:
        return  # ONNX Runtime only: `check_sessions` compares the loaded sessions before anything runs
    for k, piece in enumerate(doc["pieces"]):
        path = piece_path(folder, piece)
        try:
            if path.stat().st_size == 0:
                raise ManifestError(f"{path} is empty (a truncated export): {FIX}")
            model = onnx_pb.ModelProto()
            model.ParseFromString(path.read_bytes())  # what onnx.load(load_external_data=False) does
        except FileNotFoundError:
            raise ManifestError(f"{folder} misses {piece['file']}: {FIX}") from None
        except ManifestError:
            raise
        except Exception as exc:  # protobuf's DecodeError and friends: a truncated or foreign file
            raise ManifestError(f"{path} is not a readable ONNX graph (truncated, or not ONNX): {FIX}") from None
        graph = model.graph
        stored = {t.name for t in graph.initializer}
        for tensor in graph.initializer:
            if tensor.data_location == onnx_pb.TensorProto.EXTERNAL:
                raise ManifestError(f"{path} keeps weights in another file ({tensor.name}); scan exports keep them "
                                    f"inside: {FIX}")
        inputs = [(v.name, _dims(v)) for v in graph.input if v.name not in stored]
        compare_io(doc, folder, k, inputs, [(v.name, _dims(v)) for v in graph.output])


def _onnx_protos():
    """onnx's generated protobuf classes (``onnx/onnx_ml_pb2.py``), or None without the onnx package.
    Read from that file unless onnx is imported already: ``import onnx`` imports ml_dtypes, 0.9 of
    its 1 s on 2 cores, for nothing this check reads, and the check runs on every predict from an
    export folder. Both share protobuf's default pool, so the classes are the same ones."""
    import importlib.util
    import sys

    global _ONNX_PB
    if "onnx" in sys.modules:
        try:
            return importlib.import_module("onnx.onnx_ml_pb2")
        except ImportError:
            return None
    if _ONNX_PB is None:
        spec = importlib.util.find_spec("onnx")  # finds the package without running its __init__
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / "onnx_ml_pb2.py"
        pb_spec = importlib.util.spec_from_file_location("_scan_onnx_ml_pb2", path)
        if pb_spec is None or not path.is_file():
            return None
        module = importlib.util.module_from_spec(pb_spec)
        try:
            pb_spec.loader.exec_module(module)
        except ImportError:  # e.g. a protobuf runtime this onnx does not support
            return None
        _ONNX_PB = module
    return _ONNX_PB


_ONNX_PB = None


def _dims(value_info) -> list:
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]


def check_sessions(doc: dict, folder: Path, sessions: list) -> None:
    """The same comparison from ONNX Runtime's view of each loaded graph, before anything runs."""
    for k, session in enumerate(sessions):
        io = [[(v.name, list(v.shape)) for v in vs] for vs in (session.get_inputs(), session.get_outputs())]
        compare_io(doc, folder, k, *io)


# -- writing -------------------------------------------------------------------------------------------
def write(folder, manifest: dict) -> Path:
    """``manifest.json`` into a folder being written (not yet published), fsync-ed."""
    path = Path(folder) / MANIFEST_FILE
    with open(path, "w") as f:
        f.write(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path


def publish(tmp, out, manifest: dict) -> None:
    """Finish an export written into ``tmp``: the manifest, every file on disk, then one atomic swap
    into ``out`` (the previous export there stays whole until that instant)."""
    from ..files import fsync_tree, replace_folder

    write(tmp, manifest)
    fsync_tree(tmp)
    replace_folder(tmp, out)


def is_export(folder) -> bool:
    """Whether ``folder`` holds a manifest that says it is a scan export (not validated)."""
    try:
        doc = json.loads((Path(folder) / MANIFEST_FILE).read_bytes()[:MAX_BYTES])
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT

"""`scan export`: a SCAN cascade as ONNX graphs, one per piece, plus a plain-JSON ``manifest.json``.

Piece ``k`` (0-based; files ``piece1.onnx`` .. ``pieceK.onnx``) is what the cascade runs between two
exit decisions, built only from the piece API of ``ScanModel`` (docs/ARCHITECTURE.md):

    piece 0:      image    -> stem -> section 0 -> (features, logits of exit 1)
    piece k:      features -> section k         -> (features, logits of exit k+1)
    piece K-1:    features -> section K-1       -> logits of the backbone's own head

so whatever the exit heads do inside (``model.exit_logits``) is exported as it is. A shallow exit
that never fires (threshold null/inf) is exported without its head: the piece returns only the
features, and nothing of that head is computed at run time. With ``fallback='ensemble'`` every head is
kept (the mean of all exits' logits needs them), and ``all_exits=True`` keeps them all too, so that
other thresholds can be used later.

The batch axis is dynamic (exported at batch 2, checked at batch 3); each graph passes
``onnx.checker`` and is compared with PyTorch on the same input before the export is kept. The folder
is written under a temporary name and renamed into place, so a failed export leaves nothing behind.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript), the default and only
maintained exporter since torch 2.9; the TorchScript exporter is deprecated. Imports of torch/onnx
happen inside functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

from ..errors import ScanError, UsageError
from ..policy import Calibration, ExitPolicy, costs_with_heads
from . import manifest as manifests
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST_FILE

OPSET = 20
FULL_FILE = "full.onnx"
PLAIN_FILE = "plain.onnx"
FORMATS = ("onnx", "onnx-full")
EXPORT_BATCH = 2  # never 1: torch.export specialises size-1 dimensions
CHECK_BATCH = 3  # another batch size than the export's, so a baked-in batch fails the check
CHECK_ATOL = 1e-3  # PyTorch vs ONNX Runtime on the check batch (float32; typical differences are ~1e-6)
EXTRA_HINT = "pip install 'scan-cli[onnx]'"


# -- optional dependencies ----------------------------------------------------------------------------
def require(modules: tuple, what: str) -> None:
    """A one-line ScanError naming the missing extras, before any work is done."""
    import importlib

    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ScanError(f"{what} needs the ONNX extras ({', '.join(missing)} not installed): {EXTRA_HINT}")


def require_export() -> None:
    require(("onnx", "onnxscript", "onnxruntime"), "scan export")
    import torch

    major, minor = (int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if (major, minor) < (2, 6):
        raise ScanError(f"scan export needs torch >= 2.6 (its torch.export-based ONNX exporter), found {torch.__version__}: "
                        "pip install -U torch")


# -- what the manifest says about inputs ---------------------------------------------------------------
def describe_transform(transform) -> dict:
    """The eval transform as plain data a reader can reproduce without scan or torch:
    RGB -> resize -> center crop -> /255 -> (x - mean) / std, NCHW float32."""
    steps = getattr(transform, "transforms", [transform])
    out: dict = {"color": "RGB"}
    for step in steps:
        name = type(step).__name__
        if name == "EnsureRGB":
            continue
        if name == "Resize":
            if getattr(step, "max_size", None) is not None:
                raise ScanError("the run's eval transform resizes with max_size, which the manifest cannot describe")
            size = step.size
            if isinstance(size, int) or (isinstance(size, (list, tuple)) and len(size) == 1):
                out["resize_shorter_side"] = int(size if isinstance(size, int) else size[0])
            else:
                out["resize"] = [int(size[0]), int(size[1])]
            out["interpolation"] = getattr(step.interpolation, "value", str(step.interpolation))
        elif name == "CenterCrop":
            out["center_crop"] = [int(s) for s in step.size]
        elif name in ("ToTensor", "MaybeToTensor"):
            out["divide_by"] = 255
        elif name == "Normalize":
            # float32 in the transform: 7 significant digits give back the same float32 (0.4, not 0.4000000059604645)
            out["mean"] = [float(f"{float(v):.7g}") for v in step.mean]
            out["std"] = [float(f"{float(v):.7g}") for v in step.std]
        else:
            raise ScanError(f"the run's eval transform has a step the manifest cannot describe ({name}): "
                            "use crop_mode 'center' or 'squash' in the data config")
    return out


def _shape(t) -> list:
    return [None] + [int(s) for s in t.shape[1:]]


# -- the pieces ----------------------------------------------------------------------------------------
def piece_module(model, k: int, head: bool):
    """Piece ``k`` as a module: (stem +) section k (+ exit k). Built from the piece API only."""
    import torch.nn as nn

    last = k == model.num_exits - 1

    class Piece(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            h = self.model.stem(x) if k == 0 else x
            h = self.model.section(k, h)
            if last:
                return self.model.exit_logits(k, h)
            if head:
                return h, self.model.exit_logits(k, h)
            return h

    return Piece().eval()


def full_module(model):
    """Every exit's logits from one graph (``model.forward`` runs the same piece API)."""
    import torch.nn as nn

    class Full(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return tuple(self.model(x))

    return Full().eval()


def plain_module(model):
    """The backbone alone, as a user would deploy it without exits (for comparisons)."""
    import torch.nn as nn

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = model.backbone

        def forward(self, x):
            return self.backbone(x)

    return Plain().eval()


@contextlib.contextmanager
def one_operator_registry():
    """Build torch.onnx's operator registry once for all the graphs of one export.

    ``torch.onnx.export(dynamo=True)`` rebuilds the registry of ONNX translations on every call
    (0.3-0.6 s, a fifth of a small piece's export); a cascade is K to K+2 calls in a row. The registry
    is only read during an export (it is written only for a ``custom_translation_table``, which is not
    used here). This touches a private torch API, so it is guarded: when the classmethod is not where
    it is expected, nothing is changed and every call builds its own registry as before."""
    try:
        from torch.onnx._internal.exporter import _registration

        owner = _registration.ONNXRegistry
        original = owner.__dict__.get("from_torchlib")
    except (ImportError, AttributeError):
        original = None
    if not isinstance(original, classmethod):
        yield
        return
    built: dict = {}

    def from_torchlib(cls, *args, **kwargs):
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in built:
            built[key] = original.__func__(cls, *args, **kwargs)
        return built[key]

    owner.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        owner.from_torchlib = original


def export_graph(module, example, path: Path, input_name: str, output_names: list, opset: int = OPSET) -> None:
    """torch.onnx.export (dynamo) with a dynamic batch axis, weights inside the file; then onnx.checker."""
    import warnings

    import onnx
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer chatter
        try:
            program = torch.onnx.export(module, (example,), None, dynamo=True, input_names=[input_name],
                                        output_names=list(output_names), dynamic_shapes=({0: "batch"},),
                                        opset_version=opset, external_data=False, verbose=False, optimize=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ScanError(f"torch.onnx.export failed for {path.name} ({first}): run with SCAN_DEBUG=1 for the trace "
                            "and report it with the backbone id") from exc
        program.save(str(path), external_data=False)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ScanError(f"{path.name} fails the ONNX checker ({str(exc).splitlines()[0]}): report it with the backbone id") from exc


def check_graph(path: Path, inputs, expected: list) -> float:
    """Run the graph with ONNX Runtime on ``inputs`` (one array); max abs difference to ``expected``."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(inputs)})
    worst = 0.0
    for g, e in zip(got, expected):
        if g.shape != e.shape:
            raise ScanError(f"{path.name} gives shape {list(g.shape)} where PyTorch gives {list(e.shape)}: "
                            "report it with the backbone id")
        worst = max(worst, float(np.max(np.abs(g - e))) if g.size else 0.0)
    scale = max([1.0] + [float(np.max(np.abs(e))) for e in expected if e.size])
    if not worst <= CHECK_ATOL * scale:
        raise ScanError(f"{path.name} differs from PyTorch by {worst:.3g} at batch {CHECK_BATCH}: "
                        "report it with the backbone id")
    return worst


# -- the whole export ----------------------------------------------------------------------------------
def _prepare_out(out: Path, *, owned: bool = False) -> Path:
    """--out must be a new folder, an empty one, or an earlier scan export (replaced in one atomic
    step, so never the current folder, one above it, or a mount point). ``owned``: a folder scan
    manages itself (the run's ONNX cache), replaced whatever it holds. Returns the folder to publish."""
    from ..files import recover_folder

    given, out = out, Path(os.path.realpath(out))  # a symbolic link's target is replaced, the link stays
    here = Path.cwd().resolve()
    if out == here or out in here.parents or os.path.ismount(out):
        what = "the current folder" if out == here else "a folder above the current one" if out in here.parents else "a mount point"
        raise ScanError(f"--out {given} cannot be replaced as a whole (it is {what}): give a new folder, e.g. --out deploy")
    recover_folder(out)  # what a killed export left next to it
    if out.exists() and not out.is_dir():
        raise ScanError(f"--out {given} is a file: give a folder (it is created)")
    if not owned and out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST_FILE).is_file():
            raise ScanError(f"--out {given} exists and is not a scan export: give a new or empty folder")
        if not manifests.is_export(out):
            raise ScanError(f"--out {given} holds a manifest.json that is not a scan export: give a new or empty folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScanError(f"cannot create --out {given} ({exc.strerror or exc}): choose a writable folder") from None
    if not os.access(out.parent, os.W_OK):
        raise ScanError(f"cannot write to {out.parent}: choose a writable folder for --out")
    return out


def export_model(model, info, out: Path, *, fmt: str = "onnx", all_exits: bool = False, plain: bool = False,
                 heads: Optional[list] = None, opset: int = OPSET, cache_dir: Optional[Path] = None,
                 log=None, owned: bool = False) -> dict:
    """Export a loaded ``ScanModel`` with its ``ArtifactInfo`` into ``out``; returns the manifest
    (also written there). Shallow heads: those whose exit can fire under the artifact's calibration
    (all with the ensemble fallback or ``all_exits``), or exactly ``heads`` (one bool per shallow
    exit) when given. ``cache_dir``: where MAC counts are cached (a run's ``cache/``). ``owned``: ``out``
    is scan's own cache folder, replaced whatever it holds."""
    import torch

    from ..data import eval_transform
    from ..profiling import profile_macs, structure_key

    if fmt not in FORMATS:
        raise UsageError(f"--format '{fmt}': use one of {', '.join(FORMATS)}")
    require_export()
    out = _prepare_out(Path(out), owned=owned)
    model = model.eval()
    K = model.num_exits
    size = int(info.input_size)
    cal = Calibration.from_metadata(info.calibration, K)
    policy = cal.policy() if cal else ExitPolicy([None] * (K - 1))
    if heads is None:
        heads = [all_exits or need for need in policy.heads()]
    elif len(heads) != K - 1:
        raise UsageError(f"heads: one value per shallow exit ({K - 1}), got {len(heads)}")
    heads = [bool(h) for h in heads] + [True]
    cache = Path(cache_dir) / f"macs-arch-{structure_key(model)}-{size}.json" if cache_dir else None
    report = profile_macs(model, size, cache_path=cache)  # the same cache file as cascade_costs
    # what answering at exit k costs in *this* export: heads that were left out cost nothing
    costs = [int(round(c)) for c in costs_with_heads(report.cumulative, report.shallow_heads, heads)]
    preprocessing = describe_transform(eval_transform(info.data_config, size))
    say = log or (lambda message: None)

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        gen = torch.Generator().manual_seed(0)
        x_export = torch.randn(EXPORT_BATCH, 3, size, size, generator=gen)
        x_check = torch.randn(CHECK_BATCH, 3, size, size, generator=gen)
        with one_operator_registry():
            pieces = _export_pieces(model, tmp, heads, x_export, x_check, opset, say)
            extra = {}
            if fmt == "onnx-full":
                names = [f"logits_{k + 1}" for k in range(K)]
                say(f"exporting {FULL_FILE} (every exit's logits)")
                extra["full"] = _export_whole(full_module(model), tmp / FULL_FILE, names, x_export, x_check, opset)
            if plain:
                say(f"exporting {PLAIN_FILE} (the backbone alone)")
                extra["plain"] = _export_whole(plain_module(model), tmp / PLAIN_FILE, ["logits"], x_export, x_check, opset)
                extra["plain"]["macs"] = int(report.backbone_macs)
        for piece, t, c in zip(pieces, list(policy.thresholds) + [None], costs):
            piece.update(threshold=t, macs_cumulative=c)
        manifest = _manifest(info, model, policy, cal is not None, preprocessing, report, costs, pieces, opset)
        manifest.update(extra)
        manifests.publish(tmp, out, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _export_pieces(model, folder: Path, heads: list, x_export, x_check, opset: int, say) -> list:
    """piece1.onnx .. pieceK.onnx, each fed the real output of the piece before it; their manifest entries."""
    import torch

    K = model.num_exits
    h_export, h_check = x_export, x_check
    pieces = []
    for k in range(K):
        last = k == K - 1
        module = piece_module(model, k, heads[k])
        input_name = "image" if k == 0 else f"features_{k}"
        features = None if last else f"features_{k + 1}"
        logits = f"logits_{k + 1}" if heads[k] else None
        outputs = [n for n in (features, logits) if n]
        path = folder / f"piece{k + 1}.onnx"
        what = "backbone head" if last else f"exit {k + 1}" if heads[k] else "no exit head"
        say(f"exporting piece {k + 1}/{K} ({'stem + ' if k == 0 else ''}section {k + 1} + {what})")
        export_graph(module, h_export, path, input_name, outputs, opset)
        with torch.no_grad():
            next_export, expected = module(h_export), module(h_check)
        expected = list(expected) if isinstance(expected, tuple) else [expected]
        diff = check_graph(path, h_check.numpy(), [t.numpy() for t in expected])
        pieces.append({"file": path.name, "exit": k + 1, "input": input_name, "input_shape": _shape(h_check),
                       "outputs": outputs, "features": features,
                       "features_shape": None if last else _shape(expected[0]), "logits": logits,
                       "max_abs_diff_vs_torch": diff})
        if not last:
            h_export = next_export[0] if isinstance(next_export, tuple) else next_export
            h_check = expected[0]
    return pieces


def _export_whole(module, path: Path, outputs: list, x_export, x_check, opset: int) -> dict:
    """One graph from the image (full.onnx, plain.onnx); its manifest entry."""
    import torch

    export_graph(module, x_export, path, "image", outputs, opset)
    with torch.no_grad():
        expected = module(x_check)
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    diff = check_graph(path, x_check.numpy(), [t.numpy() for t in expected])
    return {"file": path.name, "input": "image", "outputs": list(outputs), "max_abs_diff_vs_torch": diff}


def _manifest(info, model, policy, calibrated, preprocessing, report, costs, pieces, opset) -> dict:
    import torch

    from .. import __version__
    from ..data import effective_data_config

    size = int(info.input_size)
    cfg = effective_data_config(info.data_config, size)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "producer": {"name": "scan_cli", "version": __version__, "torch": torch.__version__,
                     "exporter": "torch.onnx.export(dynamo=True)", "opset": int(opset)},
        "backbone": {"id": info.backbone_id, "provider": info.provider,
                     "split_points": [s["module"] for s in info.split_points]},
        "num_exits": model.num_exits,
        "classes": [str(c) for c in info.classes],
        "input": {"name": "image", "shape": [None, 3, size, size], "dtype": "float32", "layout": "NCHW",
                  "preprocessing": preprocessing},
        "data_config": {"input_size": list(cfg["input_size"]), "mean": list(cfg["mean"]), "std": list(cfg["std"]),
                        "interpolation": cfg.get("interpolation"), "crop_pct": cfg.get("crop_pct"),
                        "crop_mode": cfg.get("crop_mode")},
        "thresholds": list(policy.thresholds) + [None],  # K entries: null = never fires; the last exit always answers
        "score": policy.score,
        "fallback": policy.fallback,
        "calibrated": calibrated,
        "drift_reference": policy.drift_reference,  # for predict's drift check (calibration/drift.py)
        "macs": {"units": "MACs (multiply-accumulates; fvcore, batch 1)", "backbone": int(report.backbone_macs),
                 "exits_cumulative": costs},
        "pieces": pieces,
    }


def export_run(run: Optional[str], out: Optional[str] = None, *, fmt: str = "onnx", all_exits: bool = False,
               plain: bool = False, opset: int = OPSET, log=None) -> tuple[dict, Path]:
    """`scan export`: load the run, export it into ``out`` (default ``RUN/onnx``). Returns (manifest, out)."""
    from ..runs import Run

    if fmt not in FORMATS:
        raise UsageError(f"--format '{fmt}': use one of {', '.join(FORMATS)}")
    if opset < 18:
        raise UsageError(f"--opset {opset}: the exporter writes opset 18 or newer")
    handle = Run.open(run)  # what needs no import is checked first: a wrong --run or --out is instant
    out_dir = Path(out) if out else handle.folder / "onnx"
    _prepare_out(out_dir)
    require_export()
    import onnx

    newest = onnx.defs.onnx_opset_version()  # above it the exporter falls back to 18 and says nothing
    if opset > newest:
        raise UsageError(f"--opset {opset}: the installed onnx writes opsets 18 to {newest}: give one of those")
    model, info = handle.load()
    if not all_exits and Calibration.from_metadata(info.calibration, len(info.split_points) + 1) is None:
        logging.getLogger(__name__).warning(
            "this run is not calibrated: the shallow exits are exported without their heads (the cascade is "
            "the plain backbone). Run 'scan calibrate' first, or pass --all-exits to keep them")
    manifest = export_model(model, info, out_dir, fmt=fmt, all_exits=all_exits, plain=plain, opset=opset,
                            cache_dir=handle.cache_dir, log=log)
    return manifest, out_dir

"""`scan export --quantize int8`: int8 pieces whose thresholds are searched again on their own outputs.

Every piece of the run's all-heads float export goes through ONNX Runtime's static quantization:
QDQ format, int8 weights per output channel, uint8 activations whose ranges are measured (min/max)
on the run's validation images (``data.run_split``, as ``scan fit`` held them out) — for piece k on
the features the float pieces before it produce. Quantization changes every exit's logits, so
thresholds searched on float outputs would no longer keep their promise: the int8 cascade's exit
outputs on the whole validation split go through the same search as ``scan calibrate``
(``calibration.run.calibrate_outputs``) for ``--target-acc`` when given (score and fallback the
run's calibration's, as ``scan predict --target-acc``), else for the run's stored target
(``--target-acc`` / ``--max-drop`` / ``--budget`` / ``--confidence``, score and fallback). Those
thresholds are the manifest's, with ``precision: "int8"`` and a ``quantization`` record (float vs
int8 validation accuracy per exit, the operating point and its promise). Then, as ``scan export``
does, the heads of exits that never fire under them are left out (``drop_heads``: the logits output
and every node only it needs are cut from the int8 graph; ``--all-exits`` keeps them).

``scan predict --engine onnxruntime --quantize int8 --run RUN`` uses the run's cached int8 *source*
(``RUN/cache/onnx-<fingerprint>-int8/``: every head, and the int8 exit outputs on the validation
split, ``validation-outputs.npz``): each call's thresholds come from those outputs (the run's target,
``--target-acc``, another ``--fallback``; ``plan.exit_policy``), and the call runs a copy without the
heads they never use (``onnx-<fingerprint>-int8-<heads>/``). onnxruntime, torch are imported inside.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

from ..errors import ScanError, UsageError
from ..policy import DEFAULT_FALLBACK, DEFAULT_SCORE, Calibration, costs_with_heads, heads_needed
from ..runs import Run

PRECISIONS = ("float32", "int8")
CALIBRATION_IMAGES = 256  # activation ranges: min/max over this many validation images (a few batches)
GOALS = ("target_acc", "max_drop", "budget", "confidence")  # what a threshold search is asked for
OUTPUTS_FILE = "validation-outputs.npz"  # the run cache's int8 source: its exit outputs on validation


def check_precision(quantize: Optional[str]) -> Optional[str]:
    """None (float32) or 'int8'; anything else is a usage error."""
    if quantize in (None, "", "float32", "none"):
        return None
    if quantize != "int8":
        raise UsageError(f"--quantize '{quantize}': use int8")
    return quantize


def require_quantization() -> None:
    try:
        from onnxruntime.quantization import quantize_static  # noqa: F401
    except ImportError as exc:
        raise ScanError(f"--quantize int8 needs onnxruntime's quantization tools (onnxruntime.quantization: {exc}): "
                        "pip install -U onnxruntime onnx") from None


def _validation(run: Run, batch_size: int = 64):
    """The run's validation images, eval-preprocessed, as numpy batches (x [n, 3, H, W], labels [n])."""
    from ..data import make_loader, run_split
    from ..data.dataset import SkippedImages

    dataset, _ = run_split(run.folder, run.info, "val", None)
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, skipped=SkippedImages())
    for images, labels in loader:
        yield images.numpy(), labels.numpy()


def search_target(run: Run, target_acc: Optional[float] = None, *, required: bool = True):
    """(settings, score, fallback) the int8 thresholds are searched for: ``target_acc`` with the run's
    calibrated score and fallback (the rule of ``scan predict --target-acc``), else the run's stored
    target. Settings None where there is no target and none is ``required``."""
    cal = Calibration.from_metadata(run.info.calibration, run.num_exits)
    score, fallback = (cal.score, cal.fallback) if cal else (DEFAULT_SCORE, DEFAULT_FALLBACK)
    if target_acc is not None:
        return {"target_acc": float(target_acc)}, score, fallback
    if cal is not None and cal.searched:
        return dict(cal.settings), score, fallback
    if required:
        raise ScanError(f"{run.folder} is not calibrated for a target: pass --target-acc, or run 'scan calibrate --run "
                        f"{run.folder} --max-drop 0.01' first; the int8 thresholds are searched for that target")
    return None, score, fallback


def search(run: Run, logits, labels, settings: dict, score: str, fallback: str) -> dict:
    """``scan calibrate``'s search on (int8) validation outputs: the calibration record, promise included."""
    from ..calibration.run import calibrate_outputs, costs_of

    goal = {k: settings.get(k) for k in GOALS}
    return calibrate_outputs(logits, labels, costs_of(run), score=score, fallback=fallback,
                             mode=(run.info.recipe or {}).get("mode"), **goal)[0]


def quantize_run(run: Run, out: Path, *, target_acc: Optional[float] = None, all_exits: bool = False,
                 source: bool = False, calibration_images: int = CALIBRATION_IMAGES, log=None,
                 owned: bool = False) -> dict:
    """Write the int8 export of ``run`` into ``out`` (replaced when it is an earlier export); its manifest.
    Heads: those the searched thresholds need (all with ``all_exits``). ``source``: the run cache's int8
    source for ``scan predict --quantize int8``: every head, the validation outputs kept, thresholds
    only where the run has a target."""
    import numpy as np

    from ..calibration.run import costs_of
    from . import manifest as manifests
    from .export import MANIFEST_FILE, _prepare_out
    from .onnx_engine import Cascade, cached_export

    say = log or (lambda message: None)
    require_quantization()
    K = run.num_exits
    settings, score, fallback = search_target(run, target_acc, required=not source)
    out = _prepare_out(Path(out), owned=owned)
    float_folder = cached_export(run, [True] * (K - 1), say)
    fcascade = Cascade(float_folder)
    # the calibration sample, and every piece's input on it (float features: the ranges int8 must cover)
    sample = []
    for x, _ in _validation(run):
        sample.append(x)
        if sum(len(b) for b in sample) >= calibration_images:
            break
    inputs = [sample]
    for k in range(K - 1):
        inputs.append([fcascade._run(k, b)[0] for b in inputs[-1]])
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        manifest = json.loads((float_folder / MANIFEST_FILE).read_text())
        for k, piece in enumerate(manifest["pieces"]):
            say(f"quantizing piece {k + 1}/{K} to int8 (QDQ, per-channel weights, ranges from "
                f"{sum(len(b) for b in sample)} validation images)")
            _quantize_piece(float_folder / piece["file"], tmp / piece["file"], piece["input"], inputs[k])
        shutil.copy(float_folder / MANIFEST_FILE, tmp / MANIFEST_FILE)
        icascade = Cascade(tmp)
        say("running the int8 cascade on the validation split to search its thresholds again")
        logits, flogits, labels = _outputs(run, icascade, fcascade)
        del icascade  # its sessions hold the int8 files open
        doc = None if settings is None else search(run, logits, labels, settings, score, fallback)
        thresholds = list(Calibration.from_metadata(doc, K).thresholds) if doc else [None] * (K - 1)
        float_acc = (flogits.argmax(-1) == labels[:, None]).mean(0)
        int8_acc = (logits.argmax(-1) == labels[:, None]).mean(0)
        float_cal = Calibration.from_metadata(run.info.calibration, K)
        manifest.update(
            precision="int8", calibrated=doc is not None, thresholds=thresholds + [None], score=score,
            fallback=fallback, drift_reference=doc["drift_reference"] if doc else None,
            quantization={
                "method": "onnxruntime.quantization.quantize_static", "format": "QDQ", "weights": "int8 per channel",
                "activations": "uint8, min/max ranges", "calibration_images": int(sum(len(b) for b in sample)),
                "n_val": int(len(labels)), "settings": doc["settings"] if doc else None,
                "float_thresholds": list(float_cal.thresholds) if float_cal else None,
                "exits": [{"exit": k + 1, "float_val_accuracy": float(float_acc[k]), "int8_val_accuracy": float(int8_acc[k]),
                           "max_abs_logit_diff": float(np.abs(logits[:, k] - flogits[:, k]).max())} for k in range(K)],
                "operating_point": {key: doc.get(key) for key in ("val_accuracy", "val_accuracy_interval", "expected_macs",
                                                                  "speedup", "exit_shares", "target")} if doc else None,
            })
        for piece, t in zip(manifest["pieces"], thresholds + [None]):
            piece["threshold"] = t
        heads = [True] * (K - 1) if all_exits or source else heads_needed(thresholds, fallback, K)
        drop_heads(tmp, manifest, heads, costs_of(run))
        if source:
            _save_outputs(tmp, logits, labels)
        manifests.publish(tmp, out, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _outputs(run: Run, cascade, float_cascade=None):
    """numpy ([n, K, C] logits of ``cascade``, the same of ``float_cascade`` or None, [n] labels) on
    the run's validation split."""
    import numpy as np

    logits, flogits, labels = [], [], []
    for x, y in _validation(run):
        logits.append(np.stack(cascade.exits(x), axis=1))
        if float_cascade is not None:
            flogits.append(np.stack(float_cascade.exits(x), axis=1))
        labels.append(y)
    return np.concatenate(logits), np.concatenate(flogits) if flogits else None, np.concatenate(labels)


def _save_outputs(folder: Path, logits, labels) -> None:
    import numpy as np

    tmp = folder / f".{OUTPUTS_FILE}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, logits=logits, labels=labels)
    os.replace(tmp, folder / OUTPUTS_FILE)


# -- leaving out heads that never fire -------------------------------------------------------------------
def drop_heads(folder: Path, manifest: dict, heads: list, costs) -> None:
    """In an export with every head being written in ``folder``, leave out the heads of the shallow
    exits ``heads`` (one bool per shallow exit) switches off, as ``scan export`` does: each such
    piece's graph loses its logits output and every node only that output needed (the features come
    from the very same nodes), and the manifest's pieces, thresholds and MACs (``costs``: the run's
    ``CascadeCosts``; a head left out costs nothing) say so."""
    K = int(manifest["num_exits"])
    pieces = manifest["pieces"]
    if len(heads) != K - 1 or any(p["logits"] is None for p in pieces):
        raise ValueError("drop_heads: one value per shallow exit, on an export with every head")
    for k, keep in enumerate(heads):
        if not keep:
            _drop_output(Path(folder) / pieces[k]["file"], pieces[k]["logits"])
            pieces[k].update(logits=None, outputs=[pieces[k]["features"]], threshold=None)
            manifest["thresholds"][k] = None
    cumulative = [int(round(c)) for c in costs_with_heads(costs.cumulative, costs.heads, list(heads))]
    manifest["macs"]["exits_cumulative"] = cumulative
    for piece, c in zip(pieces, cumulative):
        piece["macs_cumulative"] = c


def _drop_output(path: Path, name: str) -> None:
    """Remove graph output ``name`` and every node, weight and shape note that only it needed."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    outputs = [o for o in graph.output if o.name != name]
    del graph.output[:]
    graph.output.extend(outputs)
    needed = {o.name for o in outputs}
    kept = []
    for node in reversed(graph.node):  # graph.node is in topological order
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
            needed.update(_subgraph_names(node))
    del graph.node[:]
    graph.node.extend(reversed(kept))
    for field in (graph.initializer, graph.value_info):
        keep = [t for t in field if t.name in needed]
        del field[:]
        field.extend(keep)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _subgraph_names(node) -> set:
    """Every tensor name the node's subgraphs (If, Loop, Scan) read: they may come from outside."""
    import onnx

    names = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            for inner in g.node:
                names.update(i for i in inner.input if i)
                names.update(_subgraph_names(inner))
    return names

def _quantize_piece(src: Path, dst: Path, input_name: str, batches: list) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    # uint8 activations x int8 weights (U8S8): the x86 kernels' fast path (VNNI's u8 x s8 dot product);
    # int8 activations (S8S8) ran resnet50 slower than float32 here (bench/results/onnx.md)

    class Reader(CalibrationDataReader):  # one piece's input, batch by batch
        def __init__(self):
            self.batches = list(batches)

        def get_next(self):
            return {input_name: self.batches.pop(0)} if self.batches else None

    prepared = dst.with_name(dst.stem + ".pre.onnx")
    try:  # ONNX Runtime's recommended pre-processing: shape inference and graph optimisation first
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        src = prepared
    except Exception:  # noqa: BLE001 - an optimisation only: quantize the graph as exported
        pass
    try:
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    except Exception as exc:  # onnxruntime raises its own types
        raise ScanError(f"ONNX Runtime could not quantize {src.name} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
                        "export without --quantize") from None
    finally:
        prepared.unlink(missing_ok=True)


def quantize_export(run: Optional[str], out: Optional[str] = None, *, target_acc: Optional[float] = None,
                    all_exits: bool = False, log=None) -> tuple[dict, Path]:
    """`scan export --quantize int8 [--target-acc X] [--all-exits]`: (manifest, folder); ``out``
    defaults to ``RUN/onnx-int8``."""
    if target_acc is not None:
        from ..calibration.choose import check_goal

        check_goal(target_acc=target_acc)
    handle = Run.open(run)
    out_dir = Path(out) if out else handle.folder / "onnx-int8"
    from .export import _prepare_out, require_export

    _prepare_out(out_dir)  # a wrong --out is refused before anything is imported or run
    search_target(handle, target_acc)  # and a run without a target, before anything is quantized
    require_quantization()
    require_export()
    return quantize_run(handle, out_dir, target_acc=target_acc, all_exits=all_exits, log=log), out_dir


# -- scan predict --engine onnxruntime --quantize int8 --run RUN --------------------------------------
def int8_source(run: Optional[str], thresholds: Optional[str] = None, target_acc: Optional[float] = None,
                score: Optional[str] = None, fallback: Optional[str] = None, log=None):
    """(export folder, ExitPolicy, Run, rebuild) for one `scan predict --quantize int8` call: the
    thresholds searched on the run's int8 validation outputs (its target, or ``target_acc``, or
    another ``fallback``: the rules of ``plan.exit_policy``; not saved), or ``thresholds``; the folder
    holds only the heads they use. ``rebuild(why)``: that folder made again when it cannot be loaded."""
    from .onnx_engine import export_folder, read_manifest
    from .plan import check_flags, exit_policy

    check_flags(score=score, fallback=fallback, target_acc=target_acc, thresholds=thresholds)
    folder = export_folder(run)
    if folder is not None:
        raise UsageError(f"{run} is an export: its precision is its own ({read_manifest(folder).get('precision', 'float32')}): "
                         "drop --quantize, or pass the training run as --run")
    handle = Run.open(run)
    K = handle.num_exits
    source = cached_quantized(handle, log)
    outputs: list = []

    def recalibrate(**settings) -> dict:  # on the int8 cascade's own validation outputs
        if not outputs:
            outputs.extend(_source_outputs(handle, source))
        _, score_, fallback_ = search_target(handle, required=False)
        return search(handle, *outputs, settings, settings.get("score") or score_, settings.get("fallback") or fallback_)

    stored = _stored(handle, read_manifest(source), recalibrate)
    policy = exit_policy(stored, K, thresholds=thresholds, target_acc=target_acc, score=score, fallback=fallback,
                         recalibrate=recalibrate)
    heads = policy.heads()
    return int8_folder(handle, heads, log), policy, handle, lambda why: int8_folder(handle, heads, log, damaged=why)


def _stored(run: Run, manifest: dict, recalibrate) -> Optional[Calibration]:
    """The int8 thresholds for the run's calibration target: the source's when it was searched for
    that very target (score and fallback too), else searched now (the run was calibrated again)."""
    K = run.num_exits
    cal = Calibration.from_metadata(run.info.calibration, K)
    if cal is None or not cal.searched:
        return None
    searched = {k: v for k, v in ((manifest.get("quantization") or {}).get("settings") or {}).items() if v is not None}
    if manifest.get("calibrated") and searched == cal.settings and (manifest["score"], manifest["fallback"]) == (
            cal.score, cal.fallback):
        record = {key: manifest.get(key) for key in ("thresholds", "score", "fallback", "drift_reference")}
    else:
        record = recalibrate(score=cal.score, fallback=cal.fallback, **cal.settings)
    return Calibration.from_metadata(dict(record, settings=cal.settings), K)


def _source_outputs(run: Run, source: Path):
    """(logits, labels) of the int8 source on the validation split: kept with it, else run once and kept."""
    import numpy as np

    try:
        with np.load(source / OUTPUTS_FILE, allow_pickle=False) as kept:
            logits, labels = kept["logits"], kept["labels"]
        if logits.ndim == 3 and logits.shape[:2] == (len(labels), run.num_exits):
            return logits, labels
    except (OSError, ValueError, KeyError):
        pass
    from .onnx_engine import Cascade

    logits, _, labels = _outputs(run, Cascade(source))
    _save_outputs(source, logits, labels)
    return logits, labels


def cached_quantized(run: Run, log=None, damaged: Optional[str] = None) -> Path:
    """``RUN/cache/onnx-<fingerprint>-int8/``, the int8 source (every head, validation outputs kept),
    written on first use; rebuilt when it is not an int8 export (or, ``damaged``, failed to load)."""
    from .export import MANIFEST_FILE
    from .onnx_engine import read_manifest

    folder = run.onnx_cache(None, precision="int8")
    if damaged is None and (folder / MANIFEST_FILE).is_file():
        try:
            if read_manifest(folder).get("precision") == "int8":
                return folder
        except ScanError as exc:
            damaged = str(exc)
    if damaged is not None:
        import logging

        logging.getLogger(__name__).warning(f"the cached int8 export {folder} is damaged ({damaged}): quantizing again")
    elif log:
        log(f"quantizing the run to int8 once, into {folder}")
    quantize_run(run, folder, source=True, log=log, owned=True)
    return folder


def int8_folder(run: Run, heads: list, log=None, damaged: Optional[str] = None) -> Path:
    """The int8 source with only ``heads`` (one bool per shallow exit): the source itself when every
    head is used, else ``RUN/cache/onnx-<fingerprint>-int8-<heads>/``, cut from it once."""
    from . import manifest as manifests
    from .onnx_engine import read_manifest

    if all(heads):
        return cached_quantized(run, log, damaged=damaged)
    source = cached_quantized(run, log)
    folder = run.onnx_cache(heads, precision="int8")
    if damaged is None and folder.is_dir():
        try:
            if [p.get("logits") is not None for p in read_manifest(folder)["pieces"][:-1]] == list(heads):
                return folder
        except ScanError:
            pass  # rebuilt below
    from ..calibration.run import costs_of
    from .export import _prepare_out

    folder = _prepare_out(folder, owned=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(OUTPUTS_FILE))
    try:
        manifest = read_manifest(tmp)
        drop_heads(tmp, manifest, heads, costs_of(run))
        manifests.publish(tmp, folder, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder

"""`scan export --quantize int8`: int8 pieces whose thresholds are searched again on their own outputs.

Every piece of the run's float export (all heads kept: the recalibrated thresholds may use any exit)
goes through ONNX Runtime's static quantization: QDQ format, int8 weights per output channel, uint8
activations whose ranges are measured (min/max) on the run's validation images (``data.run_split``,
as ``scan fit`` held them out) — for piece k on the features the float pieces before it produce.
Quantization changes every exit's logits, so thresholds searched on float outputs would no longer
keep their promise: the int8 cascade's exit outputs on the whole validation split go through the
same search as ``scan calibrate`` (``calibration.run.calibrate_outputs``, the run's stored target:
``--target-acc`` / ``--max-drop`` / ``--budget`` / ``--confidence``, score and fallback), and those
thresholds are the manifest's, with ``precision: "int8"`` and a ``quantization`` record (float vs
int8 validation accuracy per exit, the operating point). onnxruntime, torch are imported inside.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

from ..errors import ScanError, UsageError
from ..policy import Calibration
from ..runs import Run

PRECISIONS = ("float32", "int8")
CALIBRATION_IMAGES = 256  # activation ranges: min/max over this many validation images (a few batches)


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


def quantize_run(run: Run, out: Path, *, calibration_images: int = CALIBRATION_IMAGES, log=None,
                 owned: bool = False) -> dict:
    """Write the int8 export of ``run`` into ``out`` (replaced when it is an earlier export); its manifest."""
    import numpy as np

    from ..calibration.run import calibrate_outputs, costs_of
    from . import manifest as manifests
    from .export import MANIFEST_FILE, _prepare_out
    from .onnx_engine import Cascade, cached_export

    say = log or (lambda message: None)
    require_quantization()
    K = run.num_exits
    cal = Calibration.from_metadata(run.info.calibration, K)
    if cal is None or not cal.searched:
        raise ScanError(f"{run.folder} is not calibrated for a target: run 'scan calibrate --run {run.folder} "
                        "--max-drop 0.01' (or --target-acc) first; the int8 thresholds are searched for the same target")
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
        logits, flogits, labels = [], [], []
        for x, y in _validation(run):
            logits.append(np.stack(icascade.exits(x), axis=1))
            flogits.append(np.stack(fcascade.exits(x), axis=1))
            labels.append(y)
        logits, flogits, labels = np.concatenate(logits), np.concatenate(flogits), np.concatenate(labels)
        doc, result = calibrate_outputs(logits, labels, costs_of(run), score=cal.score, fallback=cal.fallback,
                                        **{k: cal.settings.get(k) for k in ("target_acc", "max_drop", "budget",
                                                                            "confidence")})
        thresholds = list(Calibration.from_metadata(doc, K).thresholds)  # None where an exit never fires
        float_acc = (flogits.argmax(-1) == labels[:, None]).mean(0)
        int8_acc = (logits.argmax(-1) == labels[:, None]).mean(0)
        manifest.update(
            precision="int8", calibrated=True, thresholds=thresholds + [None], score=cal.score, fallback=cal.fallback,
            drift_reference=doc["drift_reference"],
            quantization={
                "method": "onnxruntime.quantization.quantize_static", "format": "QDQ", "weights": "int8 per channel",
                "activations": "uint8, min/max ranges", "calibration_images": int(sum(len(b) for b in sample)),
                "n_val": int(len(labels)), "settings": doc["settings"],
                "float_thresholds": list(cal.thresholds),
                "exits": [{"exit": k + 1, "float_val_accuracy": float(float_acc[k]), "int8_val_accuracy": float(int8_acc[k]),
                           "max_abs_logit_diff": float(np.abs(logits[:, k] - flogits[:, k]).max())} for k in range(K)],
                "operating_point": {key: doc.get(key) for key in ("val_accuracy", "val_accuracy_interval", "expected_macs",
                                                                  "speedup", "exit_shares", "target")},
            })
        for piece, t in zip(manifest["pieces"], thresholds + [None]):
            piece["threshold"] = t
        del icascade  # its sessions hold the int8 files open
        manifests.publish(tmp, out, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


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


def quantize_export(run: Optional[str], out: Optional[str] = None, log=None) -> tuple[dict, Path]:
    """`scan export --quantize int8`: (manifest, folder); ``out`` defaults to ``RUN/onnx-int8``."""
    handle = Run.open(run)
    out_dir = Path(out) if out else handle.folder / "onnx-int8"
    from .export import _prepare_out, require_export

    _prepare_out(out_dir)  # a wrong --out is refused before anything is imported or run
    require_quantization()
    require_export()
    return quantize_run(handle, out_dir, log=log), out_dir


def int8_source(run: Optional[str], target_acc=None, log=None) -> tuple[Path, Run]:
    """`scan predict --engine onnxruntime --quantize int8 --run RUN`: (the run's cached int8 export, the run)."""
    from .onnx_engine import export_folder, read_manifest

    if target_acc is not None:
        raise UsageError("--target-acc with --quantize int8: the int8 thresholds are searched for the run's own "
                         "calibration target; give --thresholds, or 'scan calibrate' the run for another target")
    folder = export_folder(run)
    if folder is not None:
        raise UsageError(f"{run} is an export: its precision is its own ({read_manifest(folder).get('precision', 'float32')}): "
                         "drop --quantize, or pass the training run as --run")
    handle = Run.open(run)
    return cached_quantized(handle, log), handle


def cached_quantized(run: Run, log=None) -> Path:
    """``RUN/cache/onnx-<fingerprint>-int8/``, written on first use (``scan predict --quantize int8``)."""
    from .export import MANIFEST_FILE
    from .onnx_engine import read_manifest

    folder = run.onnx_cache(None, precision="int8")
    if (folder / MANIFEST_FILE).is_file():
        try:
            if read_manifest(folder).get("precision") == "int8":
                return folder
        except ScanError:
            pass  # damaged: quantize again
    if log:
        log(f"quantizing the run to int8 once, into {folder}")
    quantize_run(run, folder, log=log, owned=True)
    return folder

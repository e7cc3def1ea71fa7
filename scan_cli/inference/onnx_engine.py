"""The ONNX Runtime engine: an exported cascade (``scan export``) with real early exit, in numpy.

``Cascade.early_exit`` is ``ScanModel.early_exit`` with ONNX Runtime sessions for the pieces and
numpy for the exit rule: piece k runs on the images still in the batch, the images whose exit fires
(score >= threshold, the score computed as ``scoring.confidence`` does) are answered and their rows
dropped, and only the rest go on to piece k+1; when none are left nothing more runs. Exits exported
without a head (they never fire) only pass the features on. ``fallback='ensemble'`` answers the
images that reach the end with the mean of all exits' logits.

``predict`` is ``scan predict --engine onnxruntime`` (or ``--run`` pointing at an export folder):
the same report as ``scan_cli.inference.torch_engine.predict`` (same schema, same exit codes). For a training
run, the run is exported once per set of exit heads its thresholds need (an exit that never fires
runs nothing, as in ``ScanModel.early_exit``) into ``RUN/cache/onnx-<fingerprint>-<heads>/`` and
reused; thresholds then come from the run, exactly as for the torch engine. For an export folder they
come from its manifest (``--thresholds`` may override them where the exits' heads were exported).

Nothing here imports onnxruntime (or torch) at module level: the CLI imports this module cheaply.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import NamedTuple, Optional

from ..errors import ScanError, UsageError
from ..policy import Calibration, fires
from ..progress import track
from ..runs import Run
from ..scoring import run_cascade  # the exit rule; its numpy path needs no torch
from ..scoring import softmax_numpy as softmax
from . import manifest as manifests
from .manifest import MANIFEST_FILE
from .plan import exit_policy, workers_for
from .report import add_predictions, build_report

ENGINES = ("torch", "onnxruntime")

_log = logging.getLogger(__name__)

# -- which engine ----------------------------------------------------------------------------------
def export_folder(run: Optional[str]) -> Optional[Path]:
    """The export folder ``run`` names (a folder with manifest.json, or the manifest itself), else None."""
    if run is None:
        return None
    path = Path(run)
    if path.is_file() and path.name == MANIFEST_FILE:
        return path.parent
    if path.is_dir() and (path / MANIFEST_FILE).is_file():
        return path
    return None


def wants_onnx(engine: Optional[str], run: Optional[str]) -> bool:
    """True when `scan predict` should run on ONNX Runtime: --engine onnxruntime, or --run an export
    folder with no --engine. --engine torch with an export folder is a usage error."""
    if engine is not None and engine not in ENGINES:
        raise UsageError(f"--engine '{engine}': use {' or '.join(ENGINES)}")
    folder = export_folder(run)
    if engine == "torch" and folder is not None:
        raise UsageError(f"{run} is an ONNX export (manifest.json): use --engine onnxruntime, or pass the training run "
                         "as --run for the torch engine")
    return engine == "onnxruntime" or folder is not None


# -- the manifest ----------------------------------------------------------------------------------
def read_manifest(folder: Path) -> dict:
    """The export folder's manifest, validated (``manifest.read``: untrusted input)."""
    return manifests.read(folder)


# -- the cascade ---------------------------------------------------------------------------------------
class EarlyExit(NamedTuple):
    logits: "object"  # [N, C] float32, the logits each image was answered with
    exit_index: "object"  # [N] int64, 0-based
    confidence: "object"  # [N] float32, the exit rule's score at the answering exit


def session_options(threads: Optional[int] = None, spinning: Optional[bool] = None):
    """Options for one piece's session: sequential execution, full graph optimisation (constant
    folding, conv + batch norm + activation fusion, blocked NCHWc convolution layouts), no inter-op
    pool. ``threads``: intra-op threads (default: ONNX Runtime's, one per physical core).
    ``spinning``: whether idle intra-op workers busy-wait for the next operator (ONNX Runtime's
    default: yes). Every session has its own pool, so with spinning the K pools of a cascade spin
    against each other: after piece k returns, its workers keep a core busy while piece k+1 runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = int(threads)
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3  # errors only: no optimizer chatter on stderr
    return options


class Cascade:
    """An exported cascade loaded into ONNX Runtime (CPU): one session per piece.

    ``spinning`` defaults to False (see ``session_options``): the pieces run one after the other,
    each in its own thread pool, and spinning workers of the piece that just finished would compete
    with the next piece for the cores. (A process-wide pool shared by all sessions would avoid that
    too, but ONNX Runtime then requires every session in the process to use it.)"""

    def __init__(self, folder, threads: Optional[int] = None, spinning: Optional[bool] = False):
        from .export import require

        require(("onnxruntime", "numpy"), "--engine onnxruntime")
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.pieces = self.manifest["pieces"]
        self.num_exits = int(self.manifest["num_exits"])
        self.classes = list(self.manifest["classes"])
        self.threads = int(threads) if threads else "ONNX Runtime's default"
        options = session_options(threads, spinning)
        try:
            self.sessions = [ort.InferenceSession(str(manifests.piece_path(self.folder, p)), options,
                                                  providers=["CPUExecutionProvider"]) for p in self.pieces]
        except Exception as exc:  # onnxruntime raises its own exception types
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            raise manifests.ManifestError(f"ONNX Runtime cannot load {self.folder} ({first}): "
                                          "export again with 'scan export'") from None
        manifests.check_sessions(self.manifest, self.folder, self.sessions)  # before anything runs

    @property
    def has_head(self) -> list:
        return [p.get("logits") is not None for p in self.pieces]

    def check_policy(self, thresholds: list, fallback: str) -> None:
        """An exit can only fire, and the ensemble can only be formed, where heads were exported."""
        K = self.num_exits
        for k in range(K - 1):
            if k < len(thresholds) and fires(thresholds[k]) and not self.has_head[k]:
                raise ScanError(f"exit {k + 1}/{K} was exported without its head (it never fired at export): "
                                "re-export with 'scan export --all-exits' to use other thresholds")
        if fallback == "ensemble" and not all(self.has_head):
            raise ScanError("--fallback ensemble needs every exit's logits but some heads were not exported: "
                            "re-export with 'scan export --all-exits'")

    def _run(self, k: int, h):
        piece = self.pieces[k]
        outs = dict(zip(piece["outputs"], self.sessions[k].run(piece["outputs"], {piece["input"]: h})))
        return outs.get(piece.get("features")), outs.get(piece.get("logits"))

    def exits(self, x) -> list:
        """Every piece on the whole batch: each exit's logits ([N, C], or None where no head)."""
        import numpy as np

        h = np.ascontiguousarray(x, dtype=np.float32)
        out = []
        for k in range(self.num_exits):
            h, logits = self._run(k, h)
            out.append(logits)
        return out

    def early_exit(self, x, thresholds: list, score: str = "max_softmax", fallback: str = "last") -> EarlyExit:
        """``ScanModel.early_exit`` on ONNX Runtime: answered rows leave the batch after each exit."""
        import numpy as np

        self.check_policy(thresholds, fallback)
        n = int(x.shape[0])
        outputs = (np.empty((n, len(self.classes)), dtype=np.float32), np.full((n,), self.num_exits - 1, dtype=np.int64),
                   np.empty((n,), dtype=np.float32))
        piece = lambda k, h, want_logits: self._run(k, h)  # noqa: E731  (a graph computes what it was exported with)
        out_logits, out_exit, out_conf = run_cascade(np.ascontiguousarray(x, dtype=np.float32), np.arange(n), outputs,
                                                     piece, self.num_exits, thresholds, score, fallback)
        return EarlyExit(out_logits, out_exit, out_conf)


# -- scan predict --engine onnxruntime --------------------------------------------------------------
def cached_export(run: Run, heads: list, log=None, *, damaged: Optional[str] = None) -> Path:
    """``RUN/cache/onnx-<artifact fingerprint>-<heads>/`` (heads as 1/0 per shallow exit), exported
    with exactly those heads on first use: the engine never computes a head that cannot fire.
    A cached export that fails validation (or, ``damaged``, failed to load) is rebuilt, saying so."""
    folder = run.onnx_cache(heads)
    if damaged is None and (folder.exists() or folder.is_symlink()):
        try:
            manifest = read_manifest(folder)
            if [p.get("logits") is not None for p in manifest["pieces"][:-1]] == list(heads):
                return folder
            damaged = "its exit heads differ from its name"
        except ScanError as exc:
            damaged = str(exc)
    from .export import export_model, require_export

    require_export()
    if damaged is not None:  # scan's own cache: repaired, never blamed on the user
        _log.warning(f"the cached ONNX export {folder} is damaged ({damaged}): exporting the run again")
    elif log:
        log(f"exporting the run to ONNX once for these exits, into {folder}")
    model, info = run.load()
    export_model(model, info, folder, heads=list(heads), cache_dir=run.cache_dir, owned=True)
    return folder


def _load_cascade(folder: Path, rebuild, threads) -> "Cascade":
    """The cascade; a cached export that cannot be loaded is made again once by ``rebuild(why)`` (an
    export folder given as --run is the user's: there is no ``rebuild``, its error is reported as it is)."""
    try:
        return Cascade(folder, threads=threads)
    except ScanError as exc:
        if rebuild is None:
            raise
        return Cascade(rebuild(str(exc)), threads=threads)


def _source(run: Optional[str], thresholds, target_acc, score, fallback, log):
    """(export folder, ExitPolicy, Run or None, rebuild or None) for one call."""
    folder = export_folder(run)
    if folder is not None:
        manifest = read_manifest(folder)
        if target_acc is not None:
            int8 = manifest.get("precision") == "int8"
            raise UsageError("--target-acc calibrates on the training run's validation data: pass the training run "
                             f"as --run (with --engine onnxruntime{' --quantize int8' if int8 else ''}), or give --thresholds")
        K = int(manifest["num_exits"])
        cal = Calibration.from_metadata(manifest, K) if manifest.get("calibrated") else None
        policy = exit_policy(cal, K, thresholds=thresholds, score=score, fallback=fallback)
        return folder, policy, None, None
    from ..calibration.run import calibrate_run
    from .export import require

    handle = Run.open(run)
    require(("onnxruntime",), "--engine onnxruntime")
    K = handle.num_exits
    recalibrate = lambda **settings: calibrate_run(handle, save=False, device="cpu", **settings)  # noqa: E731
    policy = exit_policy(Calibration.from_metadata(handle.info.calibration, K), K, thresholds=thresholds,
                         target_acc=target_acc, score=score, fallback=fallback, recalibrate=recalibrate)
    heads = policy.heads()
    return (cached_export(handle, heads, log), policy, handle,
            lambda why: cached_export(handle, heads, log, damaged=why))


def predict(inputs: list, *, run: Optional[str] = None, thresholds: Optional[str] = None,
            target_acc: Optional[float] = None, score: Optional[str] = None, fallback: Optional[str] = None,
            batch_size: int = 64, workers: Optional[int] = None, device: Optional[str] = None, top_k: int = 1,
            progress: bool = True, channels_last: Optional[str] = "auto", threads: Optional[int] = None,
            log=None, drift: bool = True, source=None):
    """`scan predict --engine onnxruntime`: the same report as ``torch_engine.predict``. ``source``: a
    callable (thresholds, target_acc, score, fallback, log) -> (export folder, ExitPolicy, Run, rebuild)
    used instead of ``run``'s (``quantize.int8_source`` for --quantize int8)."""
    from ..data.images import find_images, max_image_pixels

    max_image_pixels()  # a bad SCAN_MAX_IMAGE_PIXELS is a usage error, as in the torch engine
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: give a positive number")
    if top_k < 1:
        raise UsageError(f"--top-k {top_k}: give a positive number")
    if device not in (None, "", "auto", "cpu"):
        raise UsageError(f"--device {device}: the onnxruntime engine runs on the CPU here: drop --device, "
                         "or use --engine torch")
    if (channels_last or "auto").lower() not in ("auto", "off"):
        raise UsageError("--channels-last is a torch engine setting: drop it with --engine onnxruntime")
    paths = find_images(list(inputs))
    folder, policy, handle, rebuild = (source or (lambda *a: _source(run, *a)))(thresholds, target_acc, score, fallback,
                                                                               log or _log.info)
    cascade = _load_cascade(folder, rebuild, threads)
    cascade.check_policy(policy.thresholds, policy.fallback)
    idle = [k + 1 for k, (has, needed) in enumerate(zip(cascade.has_head, policy.heads())) if has and not needed]
    if idle:  # ONNX Runtime runs a whole graph: a head in it runs whether or not its exit can fire
        which = f"exit {idle[0]} never fires" if len(idle) == 1 else f"exits {', '.join(map(str, idle))} never fire"
        _log.warning(f"{which} under these thresholds, but {folder} holds their heads: ONNX Runtime runs whole graphs, "
                     "so their heads still run and are counted in the MACs; pass the training run as --run to "
                     "export only the heads these thresholds need")
    report = predict_paths(cascade, paths, policy, batch_size=batch_size,
                           workers=workers_for(workers, len(paths), batch_size), top_k=top_k, progress=progress)
    report.summary["run"] = str(handle.folder if handle is not None else folder)
    report.summary["export"] = str(folder)
    from ..calibration.drift import check_predictions

    report.drift = check_predictions(report.predictions, policy, enabled=drift)
    return report


def predict_paths(cascade: Cascade, paths: list, policy, *, batch_size: int = 64, workers: int = 0,
                  top_k: int = 1, progress: bool = True):
    """``torch_engine.predict_paths`` with the ONNX Runtime cascade. Preprocessing comes from the
    manifest (``preprocess.py``: numpy + Pillow, no torch): uint8 batches decoded one batch ahead by
    ``max(1, workers)`` threads, normalised once per batch."""
    import numpy as np

    from .preprocess import Preprocessing
    from .preprocess import batches as uint8_batches

    if workers < 0:
        raise UsageError(f"--workers {workers}: give 0 (decode in this process) or more")
    classes = cascade.classes
    K = cascade.num_exits
    costs = [float(c) for c in cascade.manifest["macs"]["exits_cumulative"]]
    backbone_macs = float(cascade.manifest["macs"]["backbone"])
    k_top = min(top_k, len(classes))
    pre = Preprocessing.from_manifest(cascade.manifest)
    loader = uint8_batches(paths, pre, batch_size, threads=max(1, workers))
    preds, errors = {}, {}
    model_seconds = 0.0
    start = time.perf_counter()
    batches = track(loader, description="predict", total=-(-len(paths) // batch_size)) if progress else loader
    for indices, images, batch_errors in batches:
        for index, error in batch_errors:
            errors[index] = error
        if images is None:
            continue
        t_model = time.perf_counter()
        out = cascade.early_exit(pre.normalize(images), policy.thresholds, policy.score, policy.fallback)
        model_seconds += time.perf_counter() - t_model
        probs = softmax(out.logits)
        top_i = np.argsort(-probs, axis=-1, kind="stable")[:, :k_top]
        add_predictions(preds, indices, paths, classes, top_i, np.take_along_axis(probs, top_i, axis=-1),
                        out.exit_index, out.confidence, costs, K)
    seconds = time.perf_counter() - start
    return build_report(preds, errors, paths, K, costs, backbone_macs, seconds, policy, device="cpu",
                        engine="onnxruntime", batch_size=batch_size, workers=workers, channels_last=False,
                        layout="NCHW (ONNX Runtime picks its own inside)", threads=cascade.threads,
                        model_seconds=model_seconds)

"""Early-exit prediction on image files: what `scan predict` runs.

The images go through the run's own eval preprocessing, in batches decoded ahead of the model and
assembled as uint8 without copies, normalised on the device once per batch (``file_batches``; the
steps worked out from the run's data config without timm or torchvision, ``run_steps``;
any other transform: a DataLoader over ``images.ImageFiles``); each batch goes through
``ScanModel.early_exit``, which drops an image from the batch as soon as an exit fires, so the
rest of the network is really skipped for it. Files that cannot be decoded become entries of
``errors``; they never stop a run.

Exit numbering: ``exit_index`` is 0-based (0 .. K-1) as everywhere in the code; ``exit`` is the
1-based number people read ("2/4" is exit 2, ``exit_index`` 1).

Nothing here imports torch at module level and nothing prints: the CLI formats the report, and
notes for people (e.g. "this run is not calibrated") go to the ``scan_cli`` logger (stderr).
"""

from __future__ import annotations

import time
from typing import Optional

from ..devices import keep_freed_memory, resolve_device, use_channels_last
from ..errors import UsageError
from ..policy import Calibration, ExitPolicy, parse_thresholds
from ..progress import track
from ..runs import Run
from .file_batches import BatchSteps
from .plan import check_flags, exit_policy, workers_for
from .report import PredictionReport, add_predictions, build_report


# -- the batch loop -----------------------------------------------------------------------------------
def predict_paths(model, paths: list, transform, policy: ExitPolicy, *, classes: list, costs: list,
                  backbone_macs: float, batch_size: int = 64, workers: int = 0, device=None,
                  top_k: int = 1, progress: bool = True, channels_last: bool = False,
                  compare_plain: bool = False) -> PredictionReport:
    """Early-exit predictions for image files. ``costs[k]`` is the cumulative MACs of exit k.
    ``transform``: the eval transform, or its ``file_batches.BatchSteps`` (``run_steps``).
    ``channels_last`` converts the model (in place) and each batch to the NHWC layout.
    ``compare_plain`` keeps the decoded batches and times the cascade against the plain backbone on
    them afterwards (model only, interleaved): the realised speed-up of this very call."""
    import torch
    from torch.utils.data import DataLoader

    from ..data.images import ImageFiles, collate_images
    from .file_batches import steps_of, to_model_input, uint8_batches

    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: give a positive number")
    if workers < 0:
        raise UsageError(f"--workers {workers}: give 0 (decode in this process) or more")
    if top_k < 1:
        raise UsageError(f"--top-k {top_k}: give a positive number")
    device = device if device is not None else torch.device("cpu")
    K = model.num_exits
    k_top = min(top_k, len(classes))
    model.eval()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=torch.channels_last)
    pin = device.type == "cuda"
    steps = transform if isinstance(transform, BatchSteps) else steps_of(transform)
    if steps is not None:  # uint8 batches decoded ahead, normalised on the device once per batch
        loader = uint8_batches(paths, steps.pil, steps.size, batch_size=batch_size, workers=workers, pin=pin,
                               draft=steps.draft)
        mean = torch.as_tensor(steps.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.as_tensor(steps.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        prepare = lambda images: to_model_input(images, mean, std, device, layout)  # noqa: E731
    else:
        loader = DataLoader(ImageFiles(paths, transform), batch_size=batch_size, shuffle=False, num_workers=workers,
                            collate_fn=collate_images, pin_memory=pin)
        prepare = lambda images: images.to(device, non_blocking=True).contiguous(memory_format=layout)  # noqa: E731
    preds: dict = {}  # input position -> Prediction
    errors: dict[int, str] = {}
    kept = []  # decoded batches, for --compare-plain
    model_seconds = 0.0
    start = time.perf_counter()
    with torch.inference_mode():
        total = -(-len(paths) // batch_size)
        batches = track(loader, description="predict", total=total) if progress else loader
        for indices, images, batch_errors in batches:
            for index, error in batch_errors:
                errors[index] = error
            if images is None:
                continue
            x = prepare(images)
            if compare_plain:
                kept.append(x)
            t_model = time.perf_counter()
            out = model.early_exit(x, policy.thresholds, policy.score, policy.fallback)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            model_seconds += time.perf_counter() - t_model
            top_p, top_i = torch.softmax(out.logits.float(), dim=-1).topk(k_top, dim=-1)
            add_predictions(preds, indices, paths, classes, top_i.cpu().tolist(), top_p.cpu().tolist(),
                            out.exit_index.tolist(), out.confidence.tolist(), costs, K)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    report = build_report(preds, errors, paths, K, costs, backbone_macs, seconds, policy, device=str(device),
                          batch_size=batch_size, workers=workers, channels_last=bool(channels_last),
                          layout="NHWC" if channels_last else "NCHW", threads=torch.get_num_threads(),
                          model_seconds=model_seconds)
    if compare_plain and kept:
        from ..profiling import compare_with_plain

        report.summary["comparison"] = compare_with_plain(model, kept, policy.thresholds, score=policy.score,
                                                          fallback=policy.fallback)
    return report


def run_steps(data_config: dict, input_size: int) -> Optional[BatchSteps]:
    """A run's eval transform for the uint8 path from its data config alone, without timm or
    torchvision (``data.transforms.eval_preprocessing`` + ``preprocess.Preprocessing``: bit for bit
    the transform's tensors); None where only the transform itself can say."""
    from ..data.transforms import effective_data_config, eval_preprocessing
    from .preprocess import Preprocessing

    description = eval_preprocessing(data_config, input_size)
    if description is None:
        return None
    pre = Preprocessing(description)
    cfg = effective_data_config(data_config, input_size)  # mean and std as the config has them, not rounded
    return BatchSteps(pre.pil, pre.size, cfg["mean"], cfg["std"], pre.draft)


# -- the whole command -----------------------------------------------------------------------------
def predict(inputs: list, *, run: Optional[str] = None, thresholds: Optional[str] = None,
            target_acc: Optional[float] = None, score: Optional[str] = None, fallback: Optional[str] = None,
            batch_size: int = 64, workers: Optional[int] = None, device: Optional[str] = None,
            top_k: int = 1, progress: bool = True, channels_last: Optional[str] = "auto",
            compare_plain: bool = False, drift: bool = True) -> PredictionReport:
    """`scan predict`: check the flags, find the run and the images, choose the thresholds, predict.

    Everything that can be wrong without a model (flags, the run folder, the images) is reported
    before torch or the model is loaded. The run is opened once: its header read once and its model
    loaded once, also when ``--target-acc`` calibrates first."""
    from ..calibration.drift import check_predictions
    from ..calibration.run import calibrate_run
    from ..data.images import find_images, max_image_pixels
    from ..profiling import cascade_costs

    check_flags(batch_size=batch_size, top_k=top_k, channels_last=channels_last, score=score, fallback=fallback,
                target_acc=target_acc, thresholds=thresholds, workers=workers, device=device)
    max_image_pixels()  # a bad SCAN_MAX_IMAGE_PIXELS is a usage error, not one error row per image
    handle = Run.open(run)
    if thresholds is not None:
        parse_thresholds(thresholds, handle.num_exits)
    paths = find_images(list(inputs))
    dev = resolve_device(device)
    keep_freed_memory(dev)
    recalibrate = lambda **settings: calibrate_run(handle, save=False, device=str(dev), **settings)  # noqa: E731
    policy = exit_policy(Calibration.from_metadata(handle.info.calibration, handle.num_exits), handle.num_exits,
                         thresholds=thresholds, target_acc=target_acc, score=score, fallback=fallback,
                         recalibrate=recalibrate)
    model, info = handle.load(dev)
    transform = run_steps(info.data_config, info.input_size)  # no timm or torchvision for the images
    if transform is None:
        from ..data import eval_transform

        transform = eval_transform(info.data_config, info.input_size)
    costs = cascade_costs(model, info.input_size, cache_dir=handle.cache_dir)
    report = predict_paths(model, paths, transform, policy, classes=info.classes, costs=policy.costs(costs),
                           backbone_macs=float(costs.backbone_macs), batch_size=batch_size,
                           workers=workers_for(workers, len(paths), batch_size), device=dev, top_k=top_k,
                           progress=progress, channels_last=use_channels_last(channels_last, model),
                           compare_plain=compare_plain)
    report.summary["run"] = str(handle.folder)
    report.drift = check_predictions(report.predictions, policy, enabled=drift)
    return report

"""The training loop of `scan fit`: data, model, epochs with exact resume, AMP and DDP, the final run.

Everything random in epoch ``e`` is seeded from ``seed + e`` (model noise, shuffling, worker
augmentation), so resuming at an epoch boundary reproduces an uninterrupted run exactly on CPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .. import files
from ..data.loader import loader_length
from ..errors import Interrupted, ScanError
from ..progress import StepClock, make_progress
from ..runs import CHECKPOINT_FILE, METRICS_FILE, MODEL_FILE, RECIPE_FILE
from . import phases
from .checkpoints import check_resumable, load_checkpoint, read_checkpoint_recipe, save_checkpoint
from .distributed import DistInfo, init_distributed, pick_device
from .loss import scan_loss
from .recipes import Recipe, image_size

log = logging.getLogger("scan_cli")


# ---------------------------------------------------------------------------------------------
# set-up helpers
# ---------------------------------------------------------------------------------------------
def resolve_mode(recipe: Recipe, has_weights: bool) -> str:
    if recipe.mode != "auto":
        return recipe.mode
    return "heads" if (recipe.pretrained or has_weights) else "joint"


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
@dataclass
class FitOptions:
    backbone: str
    recipe: Recipe
    recipe_name: Optional[str] = None
    out: Optional[Path] = None
    resume: Optional[Path] = None
    weights: Optional[Path] = None
    ema: bool = False  # --weights: take the EMA copy of a training checkpoint
    device: Optional[str] = None
    image_column: Optional[str] = None  # API callers: these three override the recipe's
    label_column: Optional[str] = None
    streaming: bool = False
    extra: dict = field(default_factory=dict)


def fit(opts: FitOptions, on_epoch=None) -> dict:
    """Train a SCAN model; returns the summary (also written to the run folder).

    ``on_epoch(epoch, summary_so_far)`` is called on the main process after each epoch."""
    import torch

    from ..backbones.registry import default_registry
    from ..data import SkippedImages, load_data, make_loader
    from ..exit_outputs import collect_exit_outputs, exit_accuracies
    from ..model import HeadConfig
    from .recipes import available, batch_for_data, describe, resolve

    recipe = _with_data_options(opts.recipe, opts)
    dist_info = init_distributed("cuda" if (opts.device or "").startswith("cuda") or
                                 (opts.device in (None, "auto") and torch.cuda.is_available()) else "cpu")
    device = pick_device(opts.device, dist_info)
    torch.manual_seed(recipe.seed)

    if opts.resume:
        check_resumable(Path(opts.resume), recipe)
        recipe = phases.as_trained(recipe, read_checkpoint_recipe(opts.resume)[0])
    registry = default_registry()
    spec = _backbone_spec(registry, opts)
    mode = resolve_mode(recipe, opts.weights is not None)

    # data first: bad data must fail before anything is written
    img_size = image_size(recipe, spec)
    data_config = _data_config(spec, img_size)
    num_shallow = len(recipe.splits) if recipe.splits else len(spec.split_points)
    asked, recipe = recipe, resolve(recipe, img_size=img_size, mode=mode, world_size=dist_info.world_size, num_shallow=num_shallow)
    splits = load_data(recipe.data, data_config=data_config, train_transform=recipe.augment, img_size=img_size,
                       val_fraction=recipe.val_fraction, seed=recipe.seed, image_column=recipe.image_column,
                       label_column=recipe.label_column, streaming=recipe.streaming, hflip=recipe.hflip)
    data_config = dict(splits.data_config or data_config)  # what the transforms really used (e.g. crop_pct)
    recipe = batch_for_data(asked, recipe, splits.split_sizes.get("train"), world_size=dist_info.world_size,
                            num_shallow=num_shallow)
    classes = list(splits.classes)
    if len(classes) < 2:
        raise ScanError(f"the data has {len(classes)} class: a classifier needs at least two")

    head = HeadConfig.preset(recipe.heads, width=recipe.head_width, attention=recipe.attention)
    model = _build_model(spec, recipe, classes, head, img_size, opts)
    # the last exit's classifier learns unless it came pretrained for this very class count
    new_classifier = not recipe.pretrained or _pretrained_classes(spec.id) != len(classes)
    if opts.weights:
        from ..backbones.weights import load_backbone_weights

        skipped = load_backbone_weights(model.backbone, opts.weights, ema=opts.ema)
        new_classifier = bool(skipped)
        if skipped:
            log.warning(f"--weights: classifier has another class count; trained anew for {len(classes)} classes")
    if mode == "heads":
        phases.freeze_backbone(model, retrain_classifier=new_classifier)
    model.to(device)
    channels_last = recipe.channels_last != "off"  # NHWC is faster on CUDA and CPU alike (bench/results/train.md)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    params = phases.param_groups(model, recipe, mode, img_size)
    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)

    run_dir, created = _prepare_run_dir(opts, spec.id, dist_info)
    start_epoch, history = 0, []
    if opts.resume:
        start_epoch, history, _ = load_checkpoint(run_dir / CHECKPOINT_FILE, model, optimizer)
        phases.check_resume(history, recipe)
        log.info(f"resuming {run_dir} after epoch {start_epoch} of {phases.total_epochs(recipe)}")
    elif dist_info.is_main:
        log.info(f"run {run_dir}")
    if dist_info.is_main:
        log.info(describe(recipe, opts.recipe_name, asked_batch=asked.batch_size))
        if opts.recipe_name is None and not opts.resume:
            log.info(f"hint: shipped recipes ({', '.join(sorted(available()))}) set everything at once: --recipe NAME")
        sizes = ", ".join(f"{k} {'streamed' if v is None else v}" for k, v in splits.split_sizes.items())
        log.info(f"device {device}" + (f" x {dist_info.world_size} processes" if dist_info.enabled else "") +
                 f"; {len(classes)} classes; {sizes} images")

    def wrap(m):
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(m, device_ids=[device.index] if device.type == "cuda" else None) if dist_info.enabled else m

    train_model, total = wrap(model), phases.total_epochs(recipe)

    amp_dtype = _amp_dtype(recipe.amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    loader_kw = dict(num_workers=recipe.workers, seed=recipe.seed)
    # undecodable images: left out of their batch and counted once per split (in DDP: rank 0's share of train)
    skipped = {s: SkippedImages() for s in ("train", "val", "test")}
    val_loader = lambda: make_loader(splits.val, batch_size=recipe.batch_size * 2, shuffle=False,  # noqa: E731
                                     skipped=skipped["val"], **loader_kw)

    summary = {"run": str(run_dir), "backbone": spec.id, "provider": spec.provider, "mode": mode,
               "data": splits.source, "split_sizes": splits.split_sizes, "classes": len(classes),
               "img_size": img_size, "device": str(device), "world_size": dist_info.world_size,
               "epochs": recipe.epochs, "heads_epochs": recipe.heads_epochs, "history": history}
    try:
        with make_progress(transient=False) as progress:
            epoch_task = progress.add_task("epochs", total=total, completed=start_epoch, status="")
            steps_per_epoch = loader_length(make_loader(splits.train, batch_size=recipe.batch_size, shuffle=False,
                                               distributed=dist_info.enabled, drop_last=True, **loader_kw))
            clock = StepClock(steps_per_epoch * total if steps_per_epoch else None,
                              done_steps=(steps_per_epoch or 0) * start_epoch, log=None if dist_info.is_main else False)
            last_section = []  # modules past the last split that learn in the heads phase (heads_last)
            for epoch in range(start_epoch, total):
                phase = "heads" if mode == "heads" or phases.in_heads_phase(recipe, epoch) else "joint"
                if phase != mode:  # the heads phase after joint training: backbone frozen from here on
                    (train_model, last_section), mode = phases.enter_heads_phase(
                        model, optimizer, epoch, recipe, wrap, img_size), phase
                torch.manual_seed(recipe.seed + epoch)
                loader = make_loader(splits.train, batch_size=recipe.batch_size, shuffle=True, epoch=epoch,
                                     distributed=dist_info.enabled, drop_last=True, skipped=skipped["train"], **loader_kw)
                stats = _train_epoch(train_model, model, loader, optimizer, recipe, epoch, device, amp_dtype,
                                     scaler, mode, channels_last, progress, clock, epoch_task, last_section)
                if dist_info.is_main:
                    logits, labels = collect_exit_outputs(model, val_loader(), device=device, progress="validation")
                    val = exit_accuracies(logits, labels)
                    history.append({"epoch": epoch + 1, "phase": phase, **stats, "val": val})
                    save_checkpoint(run_dir / CHECKPOINT_FILE, model, optimizer, epoch + 1, recipe, history,
                                    {"backbone": spec.id, "recipe_name": opts.recipe_name, **_provenance(registry, spec)})
                    accs = "  ".join(f"{a:.3f}" for a in val["exits"])
                    tag = " (heads phase)" if phase != summary["mode"] else ""
                    progress.console.print(f"epoch {epoch + 1}/{total}{tag}  loss {stats['loss']:.4f}  "
                                           f"{stats['images_per_s']:.0f} img/s  val acc per exit {accs}  "
                                           f"ensemble {val['ensemble']:.3f}", highlight=False)
                    if on_epoch:
                        on_epoch(epoch + 1, history)
                progress.update(epoch_task, completed=epoch + 1)
                if dist_info.enabled:
                    import torch.distributed as dist

                    dist.barrier()
    except BaseException as exc:
        kept = (run_dir / CHECKPOINT_FILE).exists()
        if created and dist_info.is_main and not kept:
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing worth keeping: no half-written run
        if isinstance(exc, KeyboardInterrupt) and dist_info.is_main:
            if kept:
                raise Interrupted(f"interrupted: {run_dir} keeps the checkpoint of epoch {len(history)}: continue "
                                  f"with 'scan fit --resume {run_dir}'") from None
            raise Interrupted("interrupted before the first epoch ended: nothing was kept") from None
        raise

    if not dist_info.is_main:
        return summary
    try:
        return _finish_run(model, splits, skipped, val_loader, make_loader, loader_kw, recipe, spec, registry, opts,
                           classes, data_config, img_size, device, run_dir, summary)
    except KeyboardInterrupt:  # training is done and checkpointed: --resume writes the model

        raise Interrupted(f"interrupted: {run_dir} keeps the checkpoint of epoch {len(history)} but no model yet: "
                          f"write it with 'scan fit --resume {run_dir}'") from None


def _finish_run(model, splits, skipped, val_loader, make_loader, loader_kw, recipe, spec, registry, opts, classes,
                data_config, img_size, device, run_dir, summary) -> dict:
    """The final artifact, with metrics on validation and (if any) test."""
    from .. import artifact
    from ..exit_outputs import collect_exit_outputs, exit_accuracies, exit_order_warning
    from ..runs import mark_latest

    val_logits, val_labels = collect_exit_outputs(model, val_loader(), device=device, progress="validation")
    summary["val"] = exit_accuracies(val_logits, val_labels)
    warning = exit_order_warning(val_logits, val_labels, mode=recipe.mode)
    if warning:
        log.warning(warning)
        summary["warnings"] = [warning]
    if splits.test is not None:
        test_loader = make_loader(splits.test, batch_size=recipe.batch_size * 2, shuffle=False, skipped=skipped["test"],
                                  **loader_kw)
        t_logits, t_labels = collect_exit_outputs(model, test_loader, device=device, progress="test")
        summary["test"] = exit_accuracies(t_logits, t_labels)
    summary["skipped_images"] = {"when listed": splits.skipped.count,
                                 **{k: v.count for k, v in skipped.items() if getattr(splits, k) is not None}}
    # what decides the splits (source, streaming, hold-out rule and key, columns): data.run_data rebuilds them from it
    recipe_doc = recipe.to_dict() | {"backbone": spec.id, "recipe_name": opts.recipe_name, "data_split": splits.record(save_to=run_dir)}
    info = artifact.info_for(model.cpu(), spec, registry, classes=classes, data_config=data_config,
                             input_size=img_size, recipe=recipe_doc)
    info.metrics = {k: summary[k] for k in ("val", "test") if k in summary}
    artifact.save(model, info, run_dir / MODEL_FILE)
    files.atomic_write(run_dir / RECIPE_FILE, lambda tmp: Path(tmp).write_text(json.dumps(recipe_doc, indent=2)))
    files.atomic_write(run_dir / METRICS_FILE, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    mark_latest(run_dir)
    summary["model"] = str(run_dir / MODEL_FILE)
    return summary


def _with_data_options(recipe: Recipe, opts: FitOptions) -> Recipe:
    """The recipe with FitOptions' image/label column and streaming applied (they are recipe
    fields, recorded with the run, so that later commands read its data the same way)."""
    from dataclasses import replace

    changes = {k: getattr(opts, k) for k in ("image_column", "label_column") if getattr(opts, k) is not None}
    if opts.streaming:
        changes["streaming"] = True
    return replace(recipe, **changes) if changes else recipe


def _backbone_spec(registry, opts: FitOptions):
    """The backbone; on --resume a missing one names the provider package the run was trained with."""
    if not opts.resume:
        return registry.get(opts.backbone)
    _, extra = read_checkpoint_recipe(opts.resume)
    return registry.require(opts.backbone, provider=extra.get("provider", ""), distribution=extra.get("distribution", ""),
                            version=extra.get("version", ""), needed_by=f"the run in {opts.resume}")


def _provenance(registry, spec) -> dict:
    """Which provider package gave the backbone, for the checkpoint (so --resume can name it)."""
    try:
        status = registry.provider_of(spec)
    except KeyError:
        return {"provider": spec.provider}
    return {"provider": spec.provider, "distribution": status.distribution, "version": status.version}


def _data_config(spec, img_size: int) -> dict:
    """The backbone's own preprocessing (timm data config) at the run's image size."""
    cfg = dict(spec.build(num_classes=None, pretrained=False).data_config)
    cfg["input_size"] = [3, img_size, img_size]
    return cfg


def _build_model(spec, recipe, classes, head, img_size, opts):
    from ..model import build_scan_model

    pretrained = recipe.pretrained
    if pretrained:
        _check_hub_reachable(spec.id)
    try:
        return build_scan_model(spec, num_classes=len(classes), head=head, split_modules=recipe.splits,
                                pretrained=pretrained, input_size=img_size)
    except ScanError:
        raise
    except Exception as exc:
        if pretrained:
            raise ScanError(f"could not get pretrained weights for {spec.id} ({str(exc).splitlines()[0][:120]}): "
                            "check the network, or pass --weights FILE") from None
        raise


def _pretrained_classes(model_id: str):
    try:
        from ..backbones.heavy import load_timm

        cfg = load_timm().models.get_pretrained_cfg(model_id)
        return getattr(cfg, "num_classes", None) if cfg else None
    except Exception:
        return None


def _check_hub_reachable(model_id: str) -> None:
    """Offline with no cached weights: fail at once instead of a retry loop."""
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        try:
            from huggingface_hub import try_to_load_from_cache

            from ..backbones.heavy import load_timm

            cfg = load_timm().models.get_pretrained_cfg(model_id)
            if cfg is None:  # not a timm id: its provider builds it and gives its own error (issue 12)
                return
            hub_id = getattr(cfg, "hf_hub_id", None) if cfg else None
            cached = hub_id and any(
                isinstance(try_to_load_from_cache(hub_id.split("@")[0], f), str)
                for f in ("model.safetensors", "pytorch_model.bin"))
        except Exception:
            cached = False
        if not cached:
            from .preflight import weights_not_cached

            raise weights_not_cached(model_id)


def _amp_dtype(amp: str, device):
    import torch

    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _prepare_run_dir(opts: FitOptions, backbone_id: str, dist_info: DistInfo) -> tuple[Path, bool]:
    from ..runs import new_run_dir

    if opts.resume:
        return Path(opts.resume).resolve(), False
    run_dir = Path(opts.out) if opts.out else new_run_dir(backbone_id)
    created = not run_dir.exists()
    if dist_info.is_main:
        if (run_dir / MODEL_FILE).exists() or (run_dir / CHECKPOINT_FILE).exists():
            raise ScanError(f"{run_dir} already holds a run: pick another --out, or --resume {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, created


def _train_epoch(train_model, model, loader, optimizer, recipe, epoch, device, amp_dtype, scaler, mode,
                 channels_last, progress, clock=None, epoch_task=None, last_section=()) -> dict:
    if mode == "heads":  # frozen backbone: BN statistics stay fixed (but the last section's, with heads_last)
        phases.set_heads_phase_modes(model, last_section)
    else:
        model.train()
    steps = loader_length(loader)
    task = progress.add_task(f"epoch {epoch + 1}", total=steps, status="")
    seen, loss_sum, t0 = 0, 0.0, time.perf_counter()
    # DDP: streamed shards can leave ranks with unequal batch counts; join() keeps them in step
    uneven = train_model.join() if hasattr(train_model, "join") else contextlib.nullcontext()
    with uneven:
        for step, (images, labels) in enumerate(loader):
            frac = step / steps if steps else 0.0
            lr = phases.lr_for(recipe, epoch, frac)
            loss = _train_step(train_model, images, labels, optimizer, lr, recipe, device, amp_dtype, scaler,
                               channels_last, progress=(epoch + frac) / recipe.epochs)
            seen += images.shape[0]
            loss_sum += float(loss) * images.shape[0]
            rate = seen / max(1e-9, time.perf_counter() - t0)
            status = f"loss {loss_sum / seen:.4f}  {rate:.0f} img/s  lr {lr:.4f}"
            progress.update(task, advance=1, status=status)
            if epoch_task is not None and steps:  # fractional epochs, so the run's ETA is known from the first steps
                progress.update(epoch_task, completed=epoch + (step + 1) / steps)
            if clock is not None:
                clock.tick(f"epoch {epoch + 1}/{phases.total_epochs(recipe)} step {step + 1}/{steps or '?'}  {status}")
    progress.remove_task(task)
    elapsed = time.perf_counter() - t0
    if seen == 0:
        raise ScanError("an epoch saw no training images: lower --batch-size (batches are full-size only) or add data")
    return {"loss": loss_sum / seen, "images": seen, "seconds": elapsed, "images_per_s": seen / elapsed}


def _train_step(train_model, images, labels, optimizer, lr, recipe, device, amp_dtype, scaler, channels_last,
                progress: float = 1.0):
    """One optimiser step; returns the (detached) loss."""
    import torch

    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = labels.to(device, non_blocking=True)
    with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits, features = train_model(images, return_features=True, exit_grad_scale=recipe.exit_grad)
        loss, _ = scan_loss([z.float() for z in logits], [f.float() for f in features], labels, recipe, progress)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach()


"""`scan fit`: train the exits of a backbone (thin: flags -> Recipe -> training.fit)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..devices import check_device
from ..errors import UsageError
from ._options import DEVICE, JSON


def register(app: typer.Typer) -> None:
    app.command("fit")(fit_command)


def fit_command(
    backbone: Optional[str] = typer.Argument(None, help="Backbone id (see 'scan backbones'); default: the recipe's."),
    data: Optional[str] = typer.Option(None, "--data", help="digits | a folder | a saved dataset | parquet/arrow | a hub id (imagenet, cifar10, cifar100, ...)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe name (digits-cpu, cifar100-resnet18-paper, imagenet-resnet50-heads) or a .toml file."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: a new folder under runs/)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the interrupted run in this folder."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Per process."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default: scaled to the global batch size)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="Default: 5e-4 up to 64 px, 1e-4 above."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="cosine (default, after a warm-up) | multistep | constant."),
    warmup_epochs: Optional[float] = typer.Option(None, "--warmup-epochs", help="Linear warm-up (default: 10% of the epochs, at most 5)."),
    augment: Optional[str] = typer.Option(None, "--augment", help="auto (pad_crop up to 64 px, rrc above) | rrc | pad_crop | none."),
    hflip: Optional[bool] = typer.Option(None, "--hflip/--no-hflip", help="Random horizontal flip (default: on, off for digits/MNIST)."),
    loss: Optional[str] = typer.Option(None, "--loss", help="scan (default) | paper (the official code's loss, for reproduction)."),
    img_size: Optional[int] = typer.Option(None, "--img-size", help="Square input side (default: the backbone's data config)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="joint | heads (backbone frozen) | auto: heads when starting from pretrained weights."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--scratch", help="Start from timm's hub weights."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Backbone weights you have: .safetensors, a state_dict or a timm train.py checkpoint (never unpickled)."),
    ema: bool = typer.Option(False, "--ema", help="With --weights: take the checkpoint's EMA weights (state_dict_ema)."),
    kd: Optional[bool] = typer.Option(None, "--kd/--no-kd", help="Distillation (from the ensemble of exits by default for joint training, else the deepest exit)."),
    feature_hint: Optional[bool] = typer.Option(None, "--hint/--no-hint", help="Feature-hint loss."),
    attention: Optional[bool] = typer.Option(None, "--attention/--no-attention", help="Attention modules on the exits."),
    heads: Optional[str] = typer.Option(None, "--heads", help="slim (default, cheap) | paper (full-width attention)."),
    splits: Optional[str] = typer.Option(None, "--splits", help="Comma-separated module paths, e.g. layer1,layer2,layer3."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Share of training data held out for validation when the data has no validation split."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    workers: Optional[int] = typer.Option(None, "--workers", help="Data-loading worker processes."),
    device: str = DEVICE,
    amp: Optional[str] = typer.Option(None, "--amp", help="auto | bf16 | fp16 | off (CUDA only)."),
    image_column: Optional[str] = typer.Option(None, "--image-column"),
    label_column: Optional[str] = typer.Option(None, "--label-column"),
    streaming: bool = typer.Option(False, "--streaming", help="Stream a hub dataset instead of downloading it."),
    print_recipe: bool = typer.Option(False, "--print-recipe", help="Print the resolved recipe as JSON and exit."),
    as_json: bool = JSON,
):
    """Train SCAN exits: attention + bottleneck head per split, with distillation (see README: Loss)."""
    from ..runs import check_new_run_dir
    from ..training.checkpoints import read_checkpoint_recipe
    from ..training.loop import FitOptions, fit
    from ..training.preflight import check_fit
    from ..training.recipes import load_recipe
    from ._output import print_json


    check_new_run_dir(None if resume else out)
    check_device(device)
    if splits is not None and not any(s.strip() for s in splits.split(",")):
        raise UsageError(f"--splits '{splits}' names no module: give module paths, e.g. --splits layer1,layer2,layer3")
    flags = dict(data=data, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule=schedule,
                 warmup_epochs=warmup_epochs, augment=augment, hflip=hflip, loss=loss, img_size=img_size, mode=mode,
                 pretrained=pretrained, kd=kd, feature_hint=feature_hint, attention=attention, heads=heads,
                 splits=[s.strip() for s in splits.split(",") if s.strip()] if splits else None,
                 val_fraction=val_fraction, seed=seed, workers=workers, amp=amp, image_column=image_column,
                 label_column=label_column, streaming=streaming or None)
    recipe_name = recipe
    if resume is not None:
        resume = resume.resolve()
        resolved, extra = read_checkpoint_recipe(resume)
        _refuse_changes_on_resume(resolved, extra, dict(flags, backbone=backbone, recipe=recipe, out=out,
                                                        weights=weights, ema=ema or None))
        backbone = extra.get("backbone")
        recipe_name = extra.get("recipe_name")
        if epochs is not None:  # the one setting a resumed run may change: train longer (the lr horizon follows)
            from dataclasses import replace

            resolved = replace(resolved, epochs=epochs)
            resolved.validate()
        if workers is not None:
            from dataclasses import replace

            resolved = replace(resolved, workers=workers)
    else:
        resolved = load_recipe(recipe, flags)
        backbone = backbone or resolved.backbone
    if not backbone:
        raise UsageError("name a backbone (e.g. 'scan fit resnet18') or a recipe that sets one (--recipe digits-cpu)")
    # weights file, data, backbone id and split points, pretrained weights: all before torch is imported
    check_fit(backbone, resolved, weights=weights, ema=ema, resume=resume, data=not print_recipe)
    if print_recipe:
        print_json(_resolved_for_print(resolved, backbone, weights is not None) | {"backbone": backbone, "recipe_name": recipe_name})
        return
    summary = fit(FitOptions(backbone=backbone, recipe=resolved, recipe_name=recipe_name, out=out, resume=resume,
                             weights=weights, ema=ema, device=device))
    if "val" not in summary:  # not the main process of a distributed run
        return
    if as_json:
        print_json(summary)
    else:
        _print_summary(summary)


RESUME_CAN_CHANGE = ("epochs", "workers")  # plus --device and --json, which are not training settings


def _refuse_changes_on_resume(recipe, extra: dict, given: dict) -> None:
    """A resumed run keeps its settings: flags that would change them are usage errors."""

    stored = recipe.to_dict() | {"backbone": extra.get("backbone"), "recipe": extra.get("recipe_name")}
    clash = [k for k, v in given.items() if v is not None and k not in RESUME_CAN_CHANGE and stored.get(k, object()) != v]
    if clash:
        names = ", ".join("--" + k.replace("_", "-") for k in clash)
        raise UsageError(f"--resume continues a run with its own settings: {names} cannot change (only --epochs, "
                         "--workers and --device can); drop them, or start a new run")


def _resolved_for_print(recipe, backbone: str, has_weights: bool) -> dict:
    """The recipe as fit will run it (image size from the backbone's declared input size)."""
    from ..backbones.registry import default_registry
    from ..training.loop import resolve_mode
    from ..training.recipes import image_size, resolve

    spec = default_registry().get(backbone)
    shallow = len(recipe.splits) if recipe.splits else len(spec.split_points)
    return resolve(recipe, img_size=image_size(recipe, spec), mode=resolve_mode(recipe, has_weights),
                   num_shallow=shallow).to_dict()


def _print_summary(summary: dict) -> None:
    from rich.table import Table

    from ._output import info, stdout_console

    k = len(summary["val"]["exits"])
    table = Table(title=f"{summary['backbone']} on {summary['data']}: accuracy per exit")
    table.add_column("split")
    for i in range(k):
        table.add_column(f"exit {i + 1}/{k}", justify="right")
    table.add_column("ensemble", justify="right")
    for split in ("val", "test"):
        if split in summary:
            row = summary[split]
            table.add_row(f"{split} (n={row['n']})", *[f"{100 * a:.2f}" for a in row["exits"]], f"{100 * row['ensemble']:.2f}")
    stdout_console().print(table)
    skipped = summary.get("skipped_images") or {}
    if sum(skipped.values()):
        total = sum(skipped.values())
        parts = ", ".join(f"{k} {v}" for k, v in skipped.items() if k != "when listed" or v)
        info(f"skipped {total} undecodable image{'s' if total != 1 else ''} ({parts}): each left out, none replaced")
    info(f"model written to {summary['model']}; next: scan calibrate --run {summary['run']} --max-drop 0.005")

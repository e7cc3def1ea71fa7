"""`scan fit`: train the exits of a backbone (thin: flags -> Recipe -> training.fit)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


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
    lr: Optional[float] = typer.Option(None, "--lr"),
    img_size: Optional[int] = typer.Option(None, "--img-size", help="Square input side (default: the backbone's data config)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="joint | heads (backbone frozen) | auto: heads when starting from pretrained weights."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--scratch", help="Start from timm's hub weights."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Local backbone weights (.safetensors, or .pth loaded with weights_only)."),
    kd: Optional[bool] = typer.Option(None, "--kd/--no-kd", help="Distillation from the deepest exit."),
    feature_hint: Optional[bool] = typer.Option(None, "--hint/--no-hint", help="Feature-hint loss."),
    attention: Optional[bool] = typer.Option(None, "--attention/--no-attention", help="Attention modules on the exits."),
    heads: Optional[str] = typer.Option(None, "--heads", help="slim (default, cheap) | paper (full-width attention)."),
    splits: Optional[str] = typer.Option(None, "--splits", help="Comma-separated module paths, e.g. layer1,layer2,layer3."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Share of training data held out for validation when the data has no validation split."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    workers: Optional[int] = typer.Option(None, "--workers", help="Data-loading worker processes."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N"),
    amp: Optional[str] = typer.Option(None, "--amp", help="auto | bf16 | fp16 | off (CUDA only)."),
    image_column: Optional[str] = typer.Option(None, "--image-column"),
    label_column: Optional[str] = typer.Option(None, "--label-column"),
    streaming: bool = typer.Option(False, "--streaming", help="Stream a hub dataset instead of downloading it."),
    print_recipe: bool = typer.Option(False, "--print-recipe", help="Print the resolved recipe as JSON and exit."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON document."),
):
    """Train SCAN exits: attention + bottleneck head per split, distilled from the deepest exit."""
    from ..errors import UsageError
    from ..recipes import load_recipe
    from ..training import FitOptions, fit, read_checkpoint_recipe
    from ._output import print_json

    flags = dict(data=data, epochs=epochs, batch_size=batch_size, lr=lr, img_size=img_size, mode=mode,
                 pretrained=pretrained, kd=kd, feature_hint=feature_hint, attention=attention, heads=heads,
                 splits=[s.strip() for s in splits.split(",") if s.strip()] if splits else None,
                 val_fraction=val_fraction, seed=seed, workers=workers, amp=amp)
    recipe_name = recipe
    if resume is not None:
        resolved, extra = read_checkpoint_recipe(resume)
        backbone = backbone or extra.get("backbone")
        recipe_name = extra.get("recipe_name")
    else:
        resolved = load_recipe(recipe, flags)
        backbone = backbone or resolved.backbone
    if print_recipe:
        print_json(resolved.to_dict() | {"backbone": backbone, "recipe_name": recipe_name})
        return
    if not backbone:
        raise UsageError("name a backbone (e.g. 'scan fit resnet18') or a recipe that sets one (--recipe digits-cpu)")
    summary = fit(FitOptions(backbone=backbone, recipe=resolved, recipe_name=recipe_name, out=out, resume=resume,
                             weights=weights, device=device, image_column=image_column, label_column=label_column,
                             streaming=streaming))
    if "val" not in summary:  # not the main process of a distributed run
        return
    if as_json:
        print_json(summary)
    else:
        _print_summary(summary)


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
    info(f"model written to {summary['model']}; next: scan calibrate --run {summary['run']} --max-drop 0.005")

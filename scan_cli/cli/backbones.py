"""`scan backbones`: list, show and check the backbones exits can be attached to."""

from __future__ import annotations

from typing import Optional

import typer

from ._options import JSON

app = typer.Typer(help="List, inspect and check backbones.", no_args_is_help=False)


@app.callback(invoke_without_command=True)
def list_backbones(ctx: typer.Context, as_json: bool = JSON,
                   pattern: Optional[str] = typer.Option(None, "--filter", help="Only ids matching this glob, e.g. 'resnet*'.")):
    """List declared backbones (any other timm model of a supported family also works by id)."""
    if ctx.invoked_subcommand is not None:
        return
    import fnmatch

    from ..backbones.registry import default_registry
    from ._output import print_listing

    def row(s):
        splits = ", ".join(f"{p.module}: {p.channels}@1/{p.reduction}" for p in s.split_points)
        return s.id, s.provider, s.family, str(s.input_size), splits

    specs = [s for s in default_registry().specs() if not pattern or fnmatch.fnmatch(s.id, pattern)]
    print_listing(specs, as_json=as_json, title="backbones",
                  columns=("id", "provider", "family", "input", "split points (module: channels @ 1/reduction)"), row=row)


@app.command("show")
def show(backbone_id: str = typer.Argument(..., metavar="ID"), as_json: bool = JSON):
    """Show one backbone: provider, units, default split points."""
    from ..backbones.registry import default_registry
    from ._output import print_json, stdout_console

    registry = default_registry()
    spec = registry.get(backbone_id)
    status = registry.provider_of(spec)
    doc = spec.to_dict() | {"distribution": status.distribution, "version": status.version}
    if as_json:
        print_json(doc)
        return
    console = stdout_console()
    console.print(f"[bold]{spec.id}[/bold]  {spec.description}")
    console.print(f"provider {spec.provider} ({status.distribution} {status.version}), family {spec.family}, input {spec.input_size}px")
    for i, p in enumerate(spec.split_points, 1):
        console.print(f"  exit {i}/{len(spec.split_points) + 1}: after {p.module} ({p.channels} channels, 1/{p.reduction} resolution)")
    console.print(f"  exit {len(spec.split_points) + 1}/{len(spec.split_points) + 1}: the backbone's own classifier")


@app.command("check")
def check(backbone_id: str = typer.Argument(..., metavar="ID"), as_json: bool = JSON,
          img_size: Optional[int] = typer.Option(None, "--img-size", help="Input side for the test forward.")):
    """Run the contract test: real forwards, declared shapes, staged forward equals the plain one."""
    from ..testing import check_backbone
    from ..backbones.registry import default_registry
    from ._output import print_json, stdout_console

    spec = default_registry().get(backbone_id)
    results = check_backbone(spec, input_size=img_size)
    ok = all(c.ok for c in results)
    if as_json:
        print_json({"id": spec.id, "ok": ok, "checks": [c.to_dict() for c in results]})
    else:
        console = stdout_console()
        for c in results:
            console.print(f"{'[green]ok[/green]  ' if c.ok else '[red]FAIL[/red]'} {c.name}: {c.detail}", highlight=False)
    if not ok:
        raise typer.Exit(1)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="backbones")

"""`scan plugins`: every backbone provider, where it comes from, what it gives, its error if any."""

from __future__ import annotations

import typer

from ._options import JSON


def plugins_command(as_json: bool = JSON):
    """List backbone providers (built-in and installed plugins) and their status.

    SCAN_DISABLE_PLUGINS=a,b disables providers by name; SCAN_PLUGINS=a,b loads only those named."""
    import os

    from ..backbones.registry import ENV_ALLOW, ENV_DISABLE, ENV_STRICT, default_registry
    from ._output import print_json, stdout_console

    statuses = default_registry().statuses()
    if as_json:
        print_json([s.to_dict() for s in statuses])
        return
    from rich.table import Table

    table = Table(title="backbone providers")
    for col in ("provider", "package", "version", "status", "provides"):
        table.add_column(col)
    for s in statuses:
        provides = f"{len(s.backbones)} backbones" + (f" + {', '.join(s.patterns[:4])}{'…' if len(s.patterns) > 4 else ''}" if s.patterns else "")
        state = s.state
        if s.conflicts:
            state += f" (given first by another provider: {', '.join(s.conflicts)})"
        table.add_row(s.name, s.distribution, s.version, state, provides if not s.disabled else "")
        for d in s.dropped:  # one invalid spec is left out; the provider's other backbones work
            table.add_row("", "", "", f"dropped {d['id']}: {d['error']}", "")
    console = stdout_console()
    if not console.is_terminal:
        console.width = 200  # a file or a pipe: keep each error on its line
    console.print(table)
    for var in (ENV_DISABLE, ENV_ALLOW, ENV_STRICT):
        if os.environ.get(var):
            console.print(f"{var}={os.environ[var]}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins_command)

"""`scan plugins`: every backbone provider, where it comes from, what it gives, its error if any."""

from __future__ import annotations

import typer


def plugins_command(as_json: bool = typer.Option(False, "--json", help="Print one JSON document.")):
    """List backbone providers (built-in and installed plugins) and their status."""
    from ..registry import default_registry
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
        state = "ok" if s.ok else f"error: {s.error}"
        if s.conflicts:
            state += f" (conflicts: {', '.join(s.conflicts)})"
        table.add_row(s.name, s.distribution, s.version, state, provides)
    stdout_console().print(table)

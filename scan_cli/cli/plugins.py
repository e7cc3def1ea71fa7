"""`scan plugins`: every backbone provider, where it comes from, what it gives, its error if any."""

from __future__ import annotations

import typer


def plugins_command(as_json: bool = typer.Option(False, "--json", help="Print one JSON document.")):
    """List backbone providers (built-in and installed plugins) and their status."""
    from ..registry import default_registry
    from ._output import print_listing

    def row(s):
        provides = f"{len(s.backbones)} backbones" + (f" + {', '.join(s.patterns[:4])}{'…' if len(s.patterns) > 4 else ''}" if s.patterns else "")
        state = "ok" if s.ok else f"error: {s.error}"
        if s.conflicts:
            state += f" (conflicts: {', '.join(s.conflicts)})"
        return s.name, s.distribution, s.version, state, provides

    print_listing(default_registry().statuses(), as_json=as_json, title="backbone providers",
                  columns=("provider", "package", "version", "status", "provides"), row=row)

"""Output conventions shared by every command: results on stdout, people-facing text on stderr."""

from __future__ import annotations

import json
import logging
import sys


def stdout_console():
    """Rich console for results; not squeezed to 80 columns when stdout is a file or a pipe."""
    from rich.console import Console

    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console.width = max(console.width, 160)
    return console


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def print_json(obj) -> None:
    """One JSON document on stdout (scripts pipe it). Strict JSON: inf/nan become null
    (a shallow exit whose threshold is null never fires)."""
    from ..artifact import finite

    sys.stdout.write(json.dumps(finite(obj), indent=2, default=_jsonable, allow_nan=False) + "\n")
    sys.stdout.flush()


def print_listing(items, *, as_json: bool, title: str, columns, row) -> None:
    """A list command's result: one JSON array of ``item.to_dict()`` with --json, else a table
    with ``columns`` and one ``row(item)`` (a tuple of strings) per item."""
    if as_json:
        print_json([item.to_dict() for item in items])
        return
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for item in items:
        table.add_row(*row(item))
    stdout_console().print(table)


def _jsonable(obj):
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def info(message: str) -> None:
    stderr_console().print(message, highlight=False)


class _StderrHandler(logging.Handler):
    def emit(self, record):
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        sys.stderr.write(f"{prefix}{record.getMessage()}\n")


def setup_logging() -> None:
    logger = logging.getLogger("scan_cli")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False

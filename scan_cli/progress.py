"""Rich progress on stderr; silent when stderr is not a terminal and SCAN_PROGRESS is unset."""

from __future__ import annotations

import os
import sys


def enabled() -> bool:
    flag = os.environ.get("SCAN_PROGRESS")
    if flag is not None:
        return flag == "1"
    return sys.stderr.isatty()


def make_progress(transient: bool = True):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=Console(stderr=True), transient=transient, disable=not enabled(),
    )


def track(iterable, description: str, total=None):
    """Iterate with a progress bar on stderr."""
    with make_progress() as progress:
        task = progress.add_task(description, total=total, status="")
        for item in iterable:
            yield item
            progress.advance(task)

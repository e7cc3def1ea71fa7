"""Progress on stderr: rich bars on a terminal; a plain line every ``SCAN_LOG_SECONDS`` (default 30)
otherwise, so logs of long runs (CI, nohup, a cluster) still show where training is."""

from __future__ import annotations

import logging
import os
import sys
import time


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


class StepClock:
    """Step timings of a training run: the whole run's ETA, and plain log lines when no bar is shown.

    ``done``/``total`` count optimiser steps over the run (a resumed run starts at its epoch)."""

    def __init__(self, total_steps, done_steps: int = 0, every: float | None = None, log: bool | None = None):
        self.total = total_steps
        self.start_done = self.done = done_steps
        self.t0 = self.last = time.perf_counter()
        self.every = float(os.environ.get("SCAN_LOG_SECONDS", "30")) if every is None else every
        self.log = (not enabled()) if log is None else log

    def eta_seconds(self):
        steps = self.done - self.start_done
        if not steps or not self.total:
            return None
        return (time.perf_counter() - self.t0) / steps * max(0, self.total - self.done)

    def tick(self, text: str) -> None:
        """One step done; ``text`` says where (epoch, step, loss, speed)."""
        self.done += 1
        now = time.perf_counter()
        if self.log and now - self.last >= self.every:
            self.last = now
            eta = self.eta_seconds()
            logging.getLogger("scan_cli").info(f"{text}  ETA {format_seconds(eta) if eta is not None else '?'}")


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"

"""Output conventions shared by every command: results on stdout, people-facing text on stderr."""

from __future__ import annotations

import json
import logging
import math
import sys


def stdout_console():
    from rich.console import Console

    return Console(soft_wrap=True)


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def print_json(obj) -> None:
    """One JSON document on stdout (scripts pipe it). Strict JSON: inf/nan become null
    (a shallow exit whose threshold is null never fires)."""
    sys.stdout.write(json.dumps(_finite(obj), indent=2, default=_jsonable, allow_nan=False) + "\n")
    sys.stdout.flush()


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "to_dict"):
        return _finite(obj.to_dict())
    return obj


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

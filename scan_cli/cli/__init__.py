"""The `scan` command line: assembles the commands and turns errors into one-line messages.

Each command module only parses flags and calls plain functions from the domain modules. Heavy
imports (torch, timm) happen inside commands, so `scan --help` stays instant.
"""

from __future__ import annotations

import os
import sys

import typer

from .. import __version__
from ..errors import Interrupted, ScanError
from ..runs import forget_announced
from . import backbones, calibrate, export, fit, plugins, predict, profile

app = typer.Typer(
    name="scan",
    help="Make a timm image classifier cheaper: train SCAN early exits, calibrate them, run them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _one_line(self, file=None) -> None:
    """click's parse errors (a bad type or range, an unknown flag, a missing argument) as one line
    naming the command's --help, like every other error here, instead of click's usage block."""
    where = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
    (file or sys.stderr).write(f"error: {self.format_message()}{where}\n")


# typer shows parse errors with their class's show() (rich_markup_mode=None above). The class is
# click's UsageError, or typer's vendored copy of it: reached through the public typer.BadParameter.
# Subclasses that override show() (the help printed for a bare `scan`) keep theirs.
_usage_error = typer.BadParameter.__bases__[0]
if _usage_error.__name__ == "UsageError":
    _usage_error.show = _one_line


def _version(value: bool):
    if value:
        print(f"scan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.")):
    """Results go to stdout (a table, or JSON with --json); progress and warnings go to stderr."""


for _command in (fit, calibrate, profile, predict, export, backbones, plugins):  # each module registers itself
    _command.register(app)


def main(argv=None) -> None:
    """Console-script entry point. Exit codes: 0 ok, 1 handled error, 2 usage error."""
    from ._output import setup_logging

    setup_logging()
    forget_announced()  # each command names its run once, in its own first line
    debug = os.environ.get("SCAN_DEBUG") == "1"
    try:
        app(args=argv, prog_name="scan")
    except Interrupted as exc:  # Ctrl-C where the command has something to say (what was kept)
        sys.stderr.write(f"{exc}\n")
        sys.exit(exc.exit_code)
    except ScanError as exc:
        if debug:
            raise
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)
    except SystemExit as exc:
        cause = _ctrl_c_cause(exc) if exc.code == 130 else None
        if cause is not None:  # typer turns Ctrl-C into exit 130 silently
            sys.stderr.write(f"{cause if isinstance(cause, Interrupted) else 'interrupted'}\n")
        raise
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as exc:  # an unexpected failure still gets one line
        if debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        sys.stderr.write(f"error: {type(exc).__name__}: {first} (set SCAN_DEBUG=1 for the traceback)\n")
        sys.exit(1)


def _ctrl_c_cause(exc: BaseException):
    """The KeyboardInterrupt behind an exit, if any (an ``Interrupted`` carries a message)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, KeyboardInterrupt):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None

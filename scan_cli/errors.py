"""Errors the CLI turns into one-line messages instead of tracebacks."""


class ScanError(Exception):
    """A handled failure. The message is one line that names the fix. Exit code 1."""

    exit_code = 1


class UsageError(ScanError):
    """The command line itself is wrong (bad flag value, contradictory options). Exit code 2."""

    exit_code = 2


class Interrupted(ScanError, KeyboardInterrupt):
    """Ctrl-C, with a message that says what was kept and how to continue. Exit code 130, like a
    shell. Still a KeyboardInterrupt, so callers of the Python API can catch it as one."""

    exit_code = 130

"""Files written so that a crash, a full disk or Ctrl-C never leaves half of one: ``atomic_write``
(temporary file, fsync, rename, fsync of the folder), the ``WriteError`` a failed write becomes, and
the clean-up of temporaries that killed writers left behind. Every file scan writes goes through here.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ScanError


class WriteError(ScanError, OSError):
    """A file could not be written (a full disk, no permission): one line that names it and says
    the previous file is unchanged. Still an OSError for API callers."""


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, make it durable, then rename it over ``path``: a crash or a full disk
    never leaves a half file, and the previous file stays readable until the rename.

    The file gets the permissions the umask gives new files (some writers create 0600 files), is
    fsync-ed before the rename, and the folder after it, so the rename survives a power cut.
    An OSError (a full disk, ...) becomes a `WriteError` naming ``path``; the temporary file is
    removed on any failure or Ctrl-C. Only SIGKILL (or a power cut) can leave one behind: the next
    write of the same file removes those of processes that no longer run."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(path, exc) from None
    _remove_stale_temporaries(path)
    tmp = path.with_name(f"{_TMP_PREFIX.format(name=path.name)}{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        if isinstance(exc, WriteError):
            raise
        raise _write_error(path, exc) from None
    finally:
        if tmp.exists():
            tmp.unlink()


_TMP_PREFIX = ".{name}.tmp-"  # + the writer's process id


def _write_error(path: Path, exc: OSError) -> WriteError:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why, fix = "no space left on the device", "free some space and run the command again"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why, fix = exc.strerror or "not allowed", f"make {path.parent} writable or write elsewhere"
    else:
        why, fix = exc.strerror or type(exc).__name__, "check the folder and run the command again"
    kept = "the previous file is unchanged" if path.exists() else "nothing was written"
    error = WriteError(f"could not write {path} ({why}; {kept}): {fix}")
    error.errno = exc.errno  # str() stays the one line above (no filename attribute: it would reformat it)
    return error


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files of `path` left by writers that were killed (their process is gone)."""
    prefix = _TMP_PREFIX.format(name=path.name)
    try:
        leftovers = [p for p in path.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for leftover in leftovers:
        pid = leftover.name[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            try:
                leftover.unlink()
            except OSError:
                pass


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder
        pass
    finally:
        os.close(fd)

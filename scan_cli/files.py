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


# -- whole folders (scan export) -----------------------------------------------------------------------
def fsync_tree(folder: Path) -> None:
    """fsync every file in ``folder`` (one level), then the folder itself: its contents are durable
    before it is published."""
    for path in Path(folder).iterdir():
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(Path(folder))


def replace_folder(tmp: Path, out: Path) -> None:
    """Publish the complete folder ``tmp`` as ``out`` in one atomic step: a reader (or a kill at any
    moment) sees either the previous ``out`` or the new one, whole.

    An existing ``out`` is swapped with ``tmp`` by one ``renameat2(RENAME_EXCHANGE)`` (Linux), then the
    old contents, now under the temporary name, are removed; a kill before that removal leaves them as
    a temporary of a dead process, which the next export removes. Without the exchange (other systems),
    the old folder is moved aside first and put back by ``recover_folder`` if a kill comes in between."""
    tmp, out = Path(tmp), Path(out)
    if out.exists() and not _exchange(tmp, out):
        aside = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, aside)
        os.replace(tmp, out)
        tmp = aside
    elif not out.exists():
        os.rename(tmp, out)
    _fsync_dir(out.parent)
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 with RENAME_EXCHANGE); False where not available."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    import errno

    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a file system without the exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def recover_folder(out: Path) -> None:
    """Clean what killed publishers of ``out`` left: their temporaries go, and an ``out`` moved aside
    by the two-rename fallback (``out`` missing) is put back."""
    import shutil

    out = Path(out)
    try:
        siblings = list(out.parent.iterdir())
    except OSError:
        return
    for path in siblings:
        for prefix in (f".{out.name}.tmp-", f".{out.name}.old-"):
            pid = path.name[len(prefix):] if path.name.startswith(prefix) else ""
            if not pid.isdigit() or int(pid) == os.getpid() or _process_alive(int(pid)):
                continue
            if prefix.endswith(".old-") and not out.exists():
                os.replace(path, out)
            elif path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)

"""Atomic file writes: a temporary sibling, flushed, then ``os.replace``d into place.

A reader (or a process killed mid-write) sees either the old file or the new one, never a torn one. Files get
ordinary permissions (0666 minus the umask), not the 0600 that ``mkstemp`` gives.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from offrl.errors import UserError

__all__ = [
    "NO_SPACE_ERRNOS",
    "atomic_write",
    "current_umask",
    "fsync_dir",
    "no_space_error",
    "write_bytes_atomic",
    "write_text_atomic",
]

#: A full disk, a full quota, or the process's file-size limit (RLIMIT_FSIZE): no room to write.
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def no_space_error(err: BaseException, path: str | os.PathLike[str]) -> UserError | None:
    """The one-line error for a write of ``path`` that failed for lack of space (``err`` or anything in its
    cause/context chain: torch wraps the OSError in a RuntimeError), else None."""
    seen: BaseException | None = err
    for _ in range(16):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in NO_SPACE_ERRNOS:
            what = "file size limit reached" if seen.errno == errno.EFBIG else "no space left on device"
            return UserError(f"{what} writing {path}; free some space (or write elsewhere) and run again")
        seen = seen.__cause__ or seen.__context__
    return None


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename into it, a new file) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None], *, fsync: bool = True) -> None:
    """Call ``write(tmp_path)`` on a temporary sibling of ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        full = no_space_error(err, path)
        if full is not None:
            raise full from None
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(text.encode("utf-8")), fsync=fsync)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), fsync=fsync)

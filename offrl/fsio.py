"""Atomic file writes: a temporary sibling, flushed, then ``os.replace``d into place.

A reader (or a process killed mid-write) sees either the old file or the new one, never a torn one. Files get
ordinary permissions (0666 minus the umask), not the 0600 that ``mkstemp`` gives.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "current_umask", "write_bytes_atomic", "write_text_atomic"]


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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(text.encode("utf-8")), fsync=fsync)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), fsync=fsync)

"""Writing files so that a reader sees the old file or the new one, never half of one.

Every file textgen writes in a run directory or a corpus cache goes through ``atomic_write``: the
data goes to a temporary name in the same folder, is flushed to disk, and is then renamed over the
old file. A crash (even SIGKILL) during a write leaves the previous complete file; a failed write
(no space, permission, I/O error) removes its temporary file and raises ``StorageError``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from textgen.errors import StorageError

TEMPORARY_GLOB = ".*.tmp"  # what ``atomic_write`` names its temporary files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)``; readers see the old or the new file, never half.

    Raises:
        StorageError: the file could not be written; the old file (if any) is untouched.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise StorageError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        if hasattr(os, "fchmod"):  # Windows (before Python 3.13) has none, nor 0600 to undo
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from others
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StorageError(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a UTF-8 text file."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete half-written files that a killed process left behind in ``folder``."""
    for leftover in Path(folder).glob(TEMPORARY_GLOB):
        with contextlib.suppress(OSError):
            leftover.unlink()

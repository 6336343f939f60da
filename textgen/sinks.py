"""Writing to a path the user named, without ever replacing something that is not a file.

``write_path`` decides how by what the path names now:

- ``-``: standard output.
- a regular file, or nothing yet: written atomically (a temporary file renamed over it), so a
  reader sees the old file or the new one, never half of one.
- a character or block device, a FIFO or a socket (``/dev/null``, a named pipe), or a file
  reached through ``/proc/<pid>/fd`` (``/dev/stdout``): opened for appending and written
  through. Renaming over such a node would replace the node itself with a regular file.
- a symlink: followed; what it points at is handled by these rules, so the link stays and its
  target is replaced (or written through). A dangling link creates its target.
- a directory: a ``StorageError``.

A failed write (no space, I/O error, permission) raises ``StorageError`` with a one-line
message. A reader that went away (``| head``, a FIFO's reader closing) raises
``BrokenPipeError``, which is no error of the user's: callers usually stop quietly.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

from textgen.errors import StorageError
from textgen.files import atomic_write

STDOUT = "-"


def write_path(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write the user-named ``path`` (``-`` for stdout) through ``write(binary_file)``.

    Raises:
        StorageError: ``path`` is a directory, or writing failed.
        BrokenPipeError: the reader of stdout or of a FIFO closed it.
    """
    if str(path) == STDOUT:
        _write_stdout(write)
        return
    try:
        node = os.stat(path)  # follows symlinks: the target is what counts
    except FileNotFoundError:
        node = None
    except OSError as err:
        raise _error(path, err) from None
    if node is not None and stat.S_ISDIR(node.st_mode):
        raise StorageError(f"cannot write {path}: it is a directory")
    if (node is None or stat.S_ISREG(node.st_mode)) and not _names_open_file(path):
        atomic_write(Path(os.path.realpath(path)), write)
        return
    _write_through(path, write)


def _names_open_file(path: str | os.PathLike) -> bool:
    """True when ``path`` leads through ``/proc/<pid>/fd`` (``/dev/stdout``, ``/dev/fd/3``).

    Such a link names a file some process holds open, perhaps for appending (``>> log``):
    renaming a new file over its target would drop what the file held.
    """
    current = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on links followed
        if os.path.realpath(os.path.dirname(current)).startswith("/proc/"):
            return True
        if not os.path.islink(current):
            return False
        current = os.path.join(os.path.dirname(current), os.readlink(current))
    return False


def _write_through(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    try:
        # Appending truncates nothing: a device or FIFO does not care, and a file held open
        # through /proc (`--output /dev/stdout >> log`) keeps what it had.
        handle = open(path, "ab")  # noqa: SIM115 -- closed below, where a failed flush is handled
    except OSError as err:
        raise _error(path, err) from None
    try:
        write(handle)
        handle.flush()
    except BrokenPipeError:
        _close_quietly(handle)
        raise
    except OSError as err:
        _close_quietly(handle)
        raise _error(path, err) from None
    except BaseException:
        _close_quietly(handle)
        raise
    try:
        handle.close()
    except OSError as err:
        raise _error(path, err) from None


def _close_quietly(handle: IO[bytes]) -> None:
    # close() flushes what is still buffered; that would only fail again.
    with contextlib.suppress(OSError):
        handle.close()


def _write_stdout(write: Callable[[IO[bytes]], None]) -> None:
    try:
        sys.stdout.flush()  # keep what was printed as text before these bytes
        write(sys.stdout.buffer)
        sys.stdout.buffer.flush()
    except OSError as err:
        _silence_stdout()
        if err.errno == errno.EPIPE:
            raise
        raise _error("standard output", err) from None


def _silence_stdout() -> None:
    """Point stdout's descriptor at /dev/null after a failed write.

    Whatever may still sit in stdout's buffers then cannot fail again in the interpreter's
    flush at exit, which would print "Exception ignored ..." and exit with status 120.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real descriptor (a test runner's capture): nothing is flushed at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _error(path: str | os.PathLike, err: OSError) -> StorageError:
    reason = err.strerror or str(err)
    return StorageError(f"cannot write {path}: {reason}")

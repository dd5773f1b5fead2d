"""How fedopt writes the files of a run: whole files atomically, with the mode ``open()`` gives.

* :func:`atomic_write_bytes` / :func:`atomic_write_json` write a temporary file
  ``.<name>.<12 hex>.tmp`` in the target's folder, ``fsync`` it, ``os.replace`` it over the
  target and ``fsync`` the folder: a crash leaves the old file or the new one, never half of
  one. A failed write removes its temporary file and raises the ``OSError``.
* Every file is created with mode ``FILE_MODE & ~umask`` (``0o666 & ~umask``, as ``open()``
  does), temporaries included.
* :func:`run_dir_errors` turns an ``OSError`` into one :class:`RunDirError` whose message names
  the path and what could not be done with it.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from typing import Any, Iterator

from fedopt.jsonio import to_jsonable

PathLike = str | os.PathLike

#: Mode of every file fedopt creates, minus the umask (applied by the kernel), as ``open()``.
FILE_MODE = 0o666


class RunDirError(OSError):
    """An operating-system error on a run directory (permissions, full disk, not a folder);
    the message names the path."""


@contextlib.contextmanager
def run_dir_errors(path: PathLike, action: str) -> Iterator[None]:
    """Turn an ``OSError`` into one :class:`RunDirError` naming ``path``."""
    try:
        yield
    except RunDirError:
        raise
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise RunDirError(f"{os.fspath(path)}: cannot {action}: {reason}") from e


def fsync_dir(directory: PathLike) -> None:
    """Best effort: make the rename itself durable (not supported on every OS)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to the descriptor ``fd`` (``os.write`` may write less)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (temp file + fsync + ``os.replace``).

    The file gets mode ``0o666 & ~umask``. Raises ``TypeError`` for non-bytes ``data`` and
    the ``OSError`` of a failed write, after removing the temporary file.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data: expected bytes, got {type(data).__name__}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)   # our own temporary file
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (see :func:`to_jsonable` for the conversions)."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode())


#: the PNG text chunk fedopt writes into every plot (``Source: fedopt``), so plots it wrote can
#: be told from a user's files before anything is replaced or deleted
PNG_SOURCE = "fedopt"


def is_fedopt_png(path: PathLike) -> bool:
    """Whether ``path`` is a PNG that fedopt wrote (its ``Source`` text chunk says fedopt);
    False for anything else, including unreadable files."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    return head.startswith(b"\x89PNG\r\n\x1a\n") and b"Source\x00" + PNG_SOURCE.encode() in head

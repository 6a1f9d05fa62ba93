"""Writes a file at once: readers see the old one or the new one, never part of one.

The new bytes go to a temporary file, which then takes the file's name. On ext4 (with its default
`auto_da_alloc`) a rename over an existing file starts writing the new file's data to disk before
it returns: 0.17–0.26 ms a rename on the 2-core CI machine, paid twice an epoch by every trial
and by each of a fused group's members (`checkpoints`). Linux's `renameat2(RENAME_EXCHANGE)` swaps
the two names just as atomically without that flush (0.05 ms); the old file, under the temporary
name after the swap, is then removed. Where there is no such call (another OS, a C library without
it, a file system that refuses it) or no file yet to swap with, it is `os.replace`.

A kill between the swap and the removal leaves the old bytes under the temporary name
(`<name>.<pid>.tmp`), as a kill between the write and the rename always could.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV}

Renameat2 = Callable[[int, bytes, int, bytes, int], int]


def _load_renameat2() -> Renameat2 | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library older than glibc 2.28, or none to load
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


_exchange: Renameat2 | None = _load_renameat2()


def replace(tmp: Path, path: Path) -> None:
    """Moves `tmp` to `path` in one step, as `os.replace` does, and without ext4's flush when `path` exists."""
    global _exchange
    if _exchange is not None:
        if _exchange(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(path), _RENAME_EXCHANGE) == 0:
            os.unlink(tmp)
            return
        code = ctypes.get_errno()
        if code in _UNSUPPORTED:
            _exchange = None  # this kernel or file system cannot swap: rename from now on
        elif code != errno.ENOENT:  # ENOENT: no file to swap with yet (or no tmp: os.replace says so)
            raise OSError(code, os.strerror(code), str(path))
    os.replace(tmp, path)


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    """`data` into a new temporary file beside `path`, which then becomes `path` at once."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    replace(tmp, path)

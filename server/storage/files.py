"""The files a study keeps beside its rows: serving a checkpoint, removing a study's folder.

Both are confined to the store's checkpoint directory. A stored checkpoint key comes from the store,
which a damaged or hand-edited file could make point anywhere (`../../etc/passwd`, an absolute path,
a symbolic link in a trial's folder): the path is resolved, every link followed, and a file that does
not end up inside the checkpoint directory is never opened; a folder that does not is never removed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tuneyard.server.study.domain import NotFound, WrongState

log = logging.getLogger(__name__)
_HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class CheckpointFile:
    """An open checkpoint: its size and SHA-256, taken from the open file so they match what is read."""

    handle: BinaryIO
    size: int
    sha256: str

    def chunks(self, chunk_bytes: int) -> Iterator[bytes]:
        """The file's `size` bytes from its start, in chunks of at most `chunk_bytes`."""
        self.handle.seek(0)
        left = self.size
        while left > 0:
            data = self.handle.read(min(chunk_bytes, left))
            if not data:
                raise NotFound("the checkpoint shrank while it was sent; download it again")
            left -= len(data)
            yield data


def _inside(root: Path, target: Path) -> bool:
    return root in target.parents


def confined(root: Path, path: str, what: str) -> Path:
    """`path` with every link followed, when it lies inside `root`; WrongState when it does not."""
    base = root.resolve()
    try:
        target = Path(path).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a link loop (Python < 3.13)
        raise NotFound(f"{what} cannot be resolved ({type(exc).__name__})") from None
    if not _inside(base, target):
        raise WrongState(f"{what} lies outside the server's checkpoint directory; it is not served")
    return target


def open_checkpoint(root: Path, path: str, what: str) -> CheckpointFile:
    """Opens the checkpoint at `path` for reading, confined to `root`, and hashes it. NotFound when
    there is no such regular file; WrongState when it lies outside `root`. The caller closes it."""
    if not path:
        raise NotFound(f"{what} has no checkpoint")
    target = confined(root, path, what)
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise NotFound(f"{what} has no checkpoint file (it saved none yet, or it was removed)") from None
    except OSError as exc:
        raise NotFound(f"{what}'s checkpoint cannot be opened ({exc.strerror})") from None
    handle = os.fdopen(fd, "rb")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotFound(f"{what}'s checkpoint is not a regular file")
        digest, size = hashlib.sha256(), 0
        while size < info.st_size and (block := handle.read(min(_HASH_BLOCK, info.st_size - size))):
            digest.update(block)
            size += len(block)
    except BaseException:
        handle.close()
        raise
    return CheckpointFile(handle, size, digest.hexdigest())


def folder_bytes(folder: Path) -> int:
    """The bytes of the regular files under `folder` (links not followed)."""
    total = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            info = os.lstat(os.path.join(parent, name))
            total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


def remove_folder(root: Path, folder: Path) -> int:
    """Removes `folder` (a study's) when it lies inside `root`; returns the bytes of files removed.
    A link in its place is removed, not followed; a folder that resolves outside `root` is left alone
    (logged). A failure to remove is logged: the rows are gone already, the folder is only left over."""
    if folder.is_symlink():
        folder.unlink()
        return 0
    if not folder.exists():
        return 0
    if not _inside(root.resolve(), folder.resolve()):
        log.warning("not removing %s: it lies outside the checkpoint directory %s", folder, root)
        return 0
    size = folder_bytes(folder)
    try:
        shutil.rmtree(folder)  # rmtree removes links inside, never what they point to
    except OSError as exc:
        log.warning("could not remove all of %s: %s", folder, exc)
    return size

"""What a failed task of a local worker carries: the tail of its stderr, and how its process ended.

Each worker process writes its stderr to a log file of its own (`WorkerLog`); a task's failure
(`Error`, `Crashed`) carries the last STDERR_LINES lines written during the task, and a dead
process's exit signal by name.
"""

from __future__ import annotations

import signal
from pathlib import Path

STDERR_LINES = 50
TAIL_BYTES = 64 * 1024  # enough for 50 long lines; the tail is read from the end of the log
LOG_ROTATE_BYTES = 16 * 1024 * 1024


def read_tail(path: Path, offset: int, lines: int = STDERR_LINES) -> str:
    """The last `lines` lines written to `path` after byte `offset`."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, 2)
            f.seek(max(offset, end - TAIL_BYTES))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def signal_name(exit_code: int | None) -> str:
    """The name ("SIGKILL") for exit code -9 (multiprocessing's way of saying a signal ended the process)."""
    if exit_code is None or exit_code >= 0:
        return ""
    try:
        return signal.Signals(-exit_code).name
    except ValueError:
        return f"signal {-exit_code}"


class WorkerLog:
    """One worker's stderr log (or none, `path` None), and where the current task's part of it begins."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._offset = 0

    def start_task(self) -> None:
        """Marks the end of the log as where the next task's stderr begins (rotating a full log first)."""
        self._offset = self._size()

    def task_tail(self) -> str:
        """The last STDERR_LINES lines written since `start_task`."""
        return read_tail(self.path, self._offset) if self.path else ""

    def _size(self) -> int:
        """The log's size; a log grown past LOG_ROTATE_BYTES is emptied first (only between tasks)."""
        if self.path is None:
            return 0
        try:
            size = self.path.stat().st_size
            if size > LOG_ROTATE_BYTES:
                self.path.write_bytes(b"")  # the process appends (O_APPEND), so it goes on at 0
                return 0
            return size
        except OSError:
            return 0

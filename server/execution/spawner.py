"""The one thread that starts every worker process of the local executor.

A worker asks Linux to SIGKILL it when its parent dies (`worker.main._die_with_parent`), and for
that signal the parent is the *thread* that started it: a runner thread (a packed trial's worker)
or a worker's reader thread (a replacement) would take the worker with it when it ends, so no
thread but this long-lived one starts a worker.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.process import BaseProcess


@dataclass(frozen=True, slots=True)
class _Job:
    """A process to start, and the future its starter waits on."""

    process: BaseProcess
    done: Future[None]


class Spawner:
    """One thread that starts every worker process and lives as long as this process."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="worker-spawner", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job.process.start()
            except BaseException as exc:  # noqa: BLE001 - the caller gets it; this thread goes on
                job.done.set_exception(exc)
            else:
                job.done.set_result(None)

    def start(self, process: BaseProcess) -> None:
        """Starts `process` from the spawner thread; returns once it is started (or raises why not)."""
        done: Future[None] = Future()
        self._jobs.put(_Job(process, done))
        done.result()


_spawner: Spawner | None = None
_spawner_lock = threading.Lock()


def spawner() -> Spawner:
    """This process's one spawner, started on first use."""
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = Spawner()
        return _spawner

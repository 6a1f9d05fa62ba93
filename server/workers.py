"""The local executor: one long-lived spawned worker process per slot, replaced when it dies.

Each worker imports torch once and runs trials one after another, so a trial costs a pipe
message, not a process start. A reader thread per worker forwards its messages to the sink
given with the current task; when the process dies mid-task the sink gets ("crashed", key, why)
and a fresh process takes the slot.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneyard.server.worker import worker_main

log = logging.getLogger(__name__)
Sink = Callable[[tuple[Any, ...]], None]


@dataclass(frozen=True)
class Slot:
    """A place one trial runs: a torch device seen by one worker process."""

    index: int
    name: str  # shown to users: "cpu:0", "cuda:1"
    device: str  # inside the worker: "cpu" or "cuda:0" (the only visible GPU)
    cuda_visible: str  # CUDA_VISIBLE_DEVICES for the worker; "" hides every GPU
    threads: int


class Worker:
    """One slot's process, its pipe, and the thread reading it."""

    def __init__(self, slot: Slot, data_root: str) -> None:
        self.slot = slot
        self._data_root = data_root
        self._ctx = mp.get_context("spawn")
        self._lock = threading.Lock()
        self._task: tuple[Any, Sink] | None = None
        self._closing = False
        self.restarts = 0
        self._start_process()
        self._reader = threading.Thread(target=self._read_loop, name=f"worker-{slot.name}", daemon=True)
        self._reader.start()

    def _start_process(self) -> None:
        parent, child = self._ctx.Pipe()
        info = {
            "device": self.slot.device,
            "cuda_visible": self.slot.cuda_visible,
            "threads": self.slot.threads,
            "data_root": self._data_root,
        }
        self.process = self._ctx.Process(
            target=worker_main, args=(child, info), name=f"tuneyard-worker-{self.slot.name}", daemon=True
        )
        self.process.start()
        child.close()
        self._conn = parent

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def submit(self, op: str, key: Any, task: dict[str, Any], sink: Sink) -> None:
        """Sends a task; its messages go to `sink`. The slot must be idle (the scheduler ensures it)."""
        with self._lock:
            self._task = (key, sink)
            try:
                self._conn.send((op, key, task))
            except (BrokenPipeError, OSError):
                pass  # the reader sees the death and reports the task as crashed

    def stop(self, key: Any) -> None:
        """Asks the worker to end task `key` at its next batch boundary."""
        with self._lock:
            if self._task and self._task[0] == key:
                try:
                    self._conn.send(("stop", key))
                except (BrokenPipeError, OSError):
                    pass

    def _finish(self, key: Any) -> Sink | None:
        with self._lock:
            if self._task and self._task[0] == key:
                sink = self._task[1]
                self._task = None
                return sink
            return None

    def _read_loop(self) -> None:
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                if self._closing:
                    return
                self._on_death()
                continue
            kind = msg[0]
            if kind == "ready":
                continue
            key = msg[1]
            if kind == "epoch":
                with self._lock:
                    sink = self._task[1] if self._task and self._task[0] == key else None
                if sink:
                    sink(msg)
            elif kind in ("done", "error"):
                sink = self._finish(key)
                if sink:
                    sink(msg)

    def _on_death(self) -> None:
        self.process.join(timeout=5)
        code = self.process.exitcode
        why = f"worker process {self.process.pid} died (exit code {code})"
        log.warning("%s on %s; starting a new one", why, self.slot.name)
        with self._lock:
            task, self._task = self._task, None
        self.restarts += 1
        self._conn.close()
        self._start_process()
        if task:
            key, sink = task
            sink(("crashed", key, why))

    def close(self, timeout: float = 5.0) -> None:
        self._closing = True
        try:
            self._conn.send(("shutdown",))
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self._conn.close()


class WorkerPool:
    """All workers of the local executor, one per slot."""

    name = "local"

    def __init__(self, slots: list[Slot], data_root: str = "") -> None:
        self.slots = slots
        self.workers = [Worker(slot, data_root) for slot in slots]

    def worker(self, index: int) -> Worker:
        return self.workers[index]

    def close(self) -> None:
        for worker in self.workers:
            worker.close()

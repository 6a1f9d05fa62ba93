"""The local executor: long-lived spawned worker processes bound to devices, replaced when they die.

Each worker imports torch once and runs trials one after another, so a trial costs a pipe
message, not a process start. A device gets one worker at start and more on demand when trials
are packed onto it (fractional `gpus_per_trial`). A reader thread per worker forwards its
messages to the sink given with the current task; when the process dies mid-task the sink gets
("crashed", key, why) and a fresh process takes its place. With `max_trials_per_worker` a
worker is recycled (a fresh process) after that many tasks.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import threading
from collections.abc import Callable
from typing import Any

from tuneyard.server.devices import Device
from tuneyard.server.worker import worker_main

log = logging.getLogger(__name__)
Sink = Callable[[tuple[Any, ...]], None]


class Worker:
    """One process bound to a device, its pipe, and the thread reading it."""

    def __init__(self, device: Device, data_root: str, max_tasks: int = 0) -> None:
        self.device = device
        self._data_root = data_root
        self._max_tasks = max_tasks
        self._ctx = mp.get_context("spawn")
        self._lock = threading.Lock()
        self._task: tuple[Any, Sink] | None = None
        self._closing = False
        self.restarts = 0
        self.tasks_done = 0
        self.processes_started = 0
        self._start_process()
        self._reader = threading.Thread(target=self._read_loop, name=f"worker-{device.name}", daemon=True)
        self._reader.start()

    def _start_process(self) -> None:
        parent, child = self._ctx.Pipe()
        info = {
            "device": self.device.torch_device,
            "cuda_visible": self.device.cuda_visible,
            "threads": self.device.threads,
            "data_root": self._data_root,
        }
        self.process = self._ctx.Process(
            target=worker_main, args=(child, info), name=f"tuneyard-worker-{self.device.name}", daemon=False
        )
        self.process.start()
        self.processes_started += 1
        child.close()
        self._conn = parent
        self._tasks_this_process = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def busy(self) -> bool:
        return self._task is not None

    def submit(self, op: str, key: Any, task: dict[str, Any], sink: Sink) -> None:
        """Sends a task; its messages go to `sink`. The worker must be idle (the scheduler ensures it)."""
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

    def kill(self) -> None:
        """Ends the process at once (a rank of a failed distributed trial); a fresh one replaces it."""
        if self.process.is_alive():
            self.process.kill()

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
                self.tasks_done += 1
                self._tasks_this_process += 1
                if self._max_tasks and self._tasks_this_process >= self._max_tasks:
                    self._recycle()
                sink = self._finish(key)
                if sink:
                    sink(msg)

    def _recycle(self) -> None:
        """Replaces the process after `max_trials_per_worker` tasks, before the next task arrives."""
        old, old_conn = self.process, self._conn
        try:
            old_conn.send(("shutdown",))
        except (BrokenPipeError, OSError):
            pass
        old.join(10)
        if old.is_alive():
            old.kill()
            old.join(5)
        old_conn.close()
        self._start_process()

    def _on_death(self) -> None:
        self.process.join(timeout=5)
        code = self.process.exitcode
        why = f"worker process {self.process.pid} died (exit code {code})"
        log.warning("%s on %s; starting a new one", why, self.device.name)
        with self._lock:
            task, self._task = self._task, None
        self.restarts += 1
        self._conn.close()
        self._start_process()
        if task:
            key, sink = task
            sink(("crashed", key, why))

    @property
    def closed(self) -> bool:
        return self._closing

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
    """Every worker of the local executor, grouped by device; grows when trials are packed."""

    name = "local"

    def __init__(self, devices: list[Device], data_root: str = "", max_trials_per_worker: int = 0) -> None:
        self.devices = devices
        self._data_root = data_root
        self._max_tasks = max_trials_per_worker
        self._lock = threading.Lock()
        self._by_device: dict[int, list[Worker]] = {d.index: [self._new(d)] for d in devices}
        self._taken: set[int] = set()  # id() of workers handed out
        # Workers are not daemonic (their DataLoaders start worker processes of their own), so
        # close them before multiprocessing joins its children at exit.
        atexit.register(self.close)

    def _new(self, device: Device) -> Worker:
        return Worker(device, self._data_root, self._max_tasks)

    @property
    def workers(self) -> list[Worker]:
        with self._lock:
            return [w for ws in self._by_device.values() for w in ws]

    def take(self, device: Device) -> Worker:
        """An idle worker on `device`, started if every one there is taken."""
        with self._lock:
            for worker in self._by_device[device.index]:
                if id(worker) not in self._taken:
                    self._taken.add(id(worker))
                    return worker
            worker = self._new(device)
            self._by_device[device.index].append(worker)
            self._taken.add(id(worker))
            return worker

    def give_back(self, worker: Worker) -> None:
        with self._lock:
            self._taken.discard(id(worker))

    def counts(self, device: Device) -> tuple[int, int]:
        """(workers, taken workers) on a device."""
        with self._lock:
            workers = self._by_device[device.index]
            return len(workers), sum(id(w) in self._taken for w in workers)

    def close(self) -> None:
        for worker in self.workers:
            if not worker.closed:
                worker.close()

"""The bookkeeping both executors' worker handles share: the task a worker runs now, under a lock.

A local worker process (`local_worker.Worker`) and a Ray actor (`ray_pool.RayWorker`) differ in how
they start, talk and die; what they hold about the current task, and how a message finds (or no
longer finds) its task, is the same, so it lives here once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from tuneyard.server.execution.devices import Device
from tuneyard.server.execution.messages import Request, Sink


@dataclass(frozen=True, slots=True)
class RunningTask:
    """A task sent to a worker and not yet ended: its key, and where its messages go."""

    key: Any
    sink: Sink


def sink_for(task: RunningTask | None, key: Any) -> Sink | None:
    """The sink of `task` when it is task `key`; None when the worker is idle or runs another task
    (a late message of an earlier task is dropped)."""
    return task.sink if task is not None and task.key == key else None


class TaskHolder:
    """A worker handle's current task, its lock, its closing flag, and its counters."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self._lock = threading.Lock()
        self._task: RunningTask | None = None
        self._closing = False
        self._kill_reason = ""
        self.last_beat = time.monotonic()
        self.restarts = self.tasks_done = self.processes_started = 0

    @property
    def busy(self) -> bool:
        return self._task is not None

    @property
    def closed(self) -> bool:
        return self._closing

    def _hold(self, request: Request, sink: Sink) -> None:
        """Makes `request` the current task; the caller holds the lock."""
        self._task = RunningTask(request.key, sink)
        self.last_beat = time.monotonic()

    def _sink(self, key: Any) -> Sink | None:
        """The sink of task `key` while it is the current task; None for a late message of an earlier one."""
        with self._lock:
            return sink_for(self._task, key)

    def _finish(self, key: Any) -> Sink | None:
        """Ends task `key` if it is the current task (the worker is idle after); its sink, else None."""
        with self._lock:
            sink = sink_for(self._task, key)
            if sink is not None:
                self._task = None
            return sink

    def _drop(self) -> RunningTask | None:
        """Ends whatever task the worker holds, as its death does; that task, or None when idle."""
        with self._lock:
            task, self._task = self._task, None
        return task

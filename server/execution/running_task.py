"""The task a worker runs now, as both executors' worker handles hold it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneyard.server.execution.messages import Sink


@dataclass(frozen=True, slots=True)
class RunningTask:
    """A task sent to a worker and not yet ended: its key, and where its messages go."""

    key: Any
    sink: Sink


def sink_for(task: RunningTask | None, key: Any) -> Sink | None:
    """The sink of `task` when it is task `key`; None when the worker is idle or runs another task
    (a late message of an earlier task is dropped)."""
    return task.sink if task is not None and task.key == key else None

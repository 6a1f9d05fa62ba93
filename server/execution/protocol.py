"""The seams between the study runner and whatever runs its trials.

An `Executor` holds workers by device and hands one out per trial share (`take`), the scheduler
asking `has_room` first; a `WorkerHandle` runs one task at a time and reports through the sink it
was given. The local pool (`local_pool.WorkerPool`) and the Ray pool (`ray_pool.RayPool`) are the
two executors today; a new one (clients evaluating trials elsewhere, a fused group of trials) is a
module implementing these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from tuneyard.server.execution.devices import Device
from tuneyard.server.execution.messages import Request, Sink


@dataclass(frozen=True)
class Node:
    """A machine the executor runs trials on, as GetServerInfo reports it."""

    node_id: str
    address: str
    alive: bool
    cpus: float
    gpus: float
    memory_bytes: int


@dataclass(frozen=True)
class WorkerCounts:
    """The workers an executor holds on one device, and how many of them are handed out."""

    workers: int
    taken: int


class WorkerHandle(Protocol):
    """One worker: a process, an actor, or anything that runs tasks and sends their messages."""

    def submit(self, request: Request, sink: Sink) -> None: ...

    def stop(self, key: Any) -> None: ...

    def kill(self, reason: str = "crash") -> None: ...

    def silent_for(self) -> float: ...

    @property
    def starting(self) -> bool:
        """Whether the worker is still starting (a process importing torch): its task cannot run, or
        hear a stop, yet, and that is not the task's fault."""
        ...


class Executor(Protocol):
    """Workers grouped by device, for the scheduler (`take`/`give_back`) and GetServerInfo (`nodes`)."""

    name: str
    devices: list[Device]
    # Why a trial may not span several devices on this executor; empty when it may.
    single_device_only: str

    def has_room(self, device: Device) -> bool: ...

    def take(self, device: Device, share: float = 1.0) -> WorkerHandle: ...

    def give_back(self, worker: WorkerHandle) -> None: ...

    def counts(self, device: Device) -> WorkerCounts: ...

    def nodes(self) -> list[Node]: ...

    def close(self) -> None: ...

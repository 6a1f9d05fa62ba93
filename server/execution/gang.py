"""The workers of one allocation as one `WorkerHandle`, so a data-parallel trial looks like any other.

A task goes to every rank, each told its place (`messages.Rank`) and a loopback rendezvous port;
what the ranks send is folded into the task's one stream: rank 0's epochs, then one final message —
the first failure of any rank (naming the rank when it is not the first), else `Done` with rank 0's
result once every rank is done. After a failure every rank is killed: ranks inside a collective
would wait forever. A one-worker allocation passes messages straight through.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from tuneyard.server.execution.messages import (
    Crashed,
    Done,
    Epoch,
    Error,
    Rank,
    Request,
    Sink,
    TaskMessage,
    Train,
)
from tuneyard.server.execution.protocol import WorkerHandle


def free_port() -> int:
    """A free loopback port for a distributed trial's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Fold:
    """One task's messages from all its ranks, folded into the task's own stream; thread safe (each
    worker reports from its own thread)."""

    def __init__(self, key: Any, world: int, sink: Sink, gang: Gang) -> None:
        self.key, self.world, self.sink, self.gang = key, world, sink, gang
        self._lock = threading.Lock()
        self._done = 0
        self._result: dict[str, Any] | None = None
        self._ended = False

    def receive(self, rank: int, msg: TaskMessage) -> None:
        # The sink is called under the lock, so messages leave in the order they were folded (an epoch
        # never after the final message); a sink only queues.
        with self._lock:
            if self._ended:
                return  # a rank's message after the task's end (another rank of a failed trial)
            out = self._fold(rank, msg)
            if out is None:
                return
            self._ended = not isinstance(out, Epoch)
            self.sink(out)
        if not isinstance(out, Epoch | Done):
            self.gang.kill()

    def _fold(self, rank: int, msg: TaskMessage) -> TaskMessage | None:
        match msg:
            case Epoch():
                return msg if rank == 0 else None
            case Done(result=result):
                self._done += 1
                if rank == 0:
                    self._result = dict(result)
                if self._done == self.world and self._result is not None:
                    return Done(self.key, self._result)
                return None
            case Error(traceback=text) if rank:
                return replace(msg, traceback=f"rank {rank} of a distributed trial failed: {text}")
            case Crashed(why=text) if rank:
                return replace(msg, why=f"rank {rank} of a distributed trial failed: {text}")
        return msg


class Gang:
    """The ranks of one trial (one worker per device, in rank order) behind one handle."""

    def __init__(self, workers: Sequence[WorkerHandle]) -> None:
        self.workers = list(workers)

    def submit(self, request: Request, sink: Sink) -> None:
        world = len(self.workers)
        if world == 1:
            self.workers[0].submit(request, sink)
            return
        if not isinstance(request, Train):
            raise ValueError(f"only training runs on several ranks, not {type(request).__name__}")
        fold, port = _Fold(request.key, world, sink, self), free_port()
        for rank, worker in enumerate(self.workers):
            ranked = replace(request, task=replace(request.task, rank=Rank(rank, world, port)))
            worker.submit(ranked, partial(fold.receive, rank))

    def stop(self, key: Any) -> None:
        for worker in self.workers:
            worker.stop(key)

    def kill(self, reason: str = "crash") -> None:
        for worker in self.workers:
            worker.kill(reason)

    def silent_for(self) -> float:
        return max(worker.silent_for() for worker in self.workers)

    @property
    def starting(self) -> bool:
        return any(worker.starting for worker in self.workers)

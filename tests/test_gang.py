"""`execution/gang.Gang`: the workers of one allocation behind one handle. A data-parallel trial's ranks
get the same task, each told its place; what they send is folded into one stream with rank 0's epochs
and exactly one final message, whatever the ranks do and from whichever threads they do it."""

from __future__ import annotations

import itertools
import socket
import threading
from dataclasses import replace
from typing import Any

import pytest

from tuneyard.plugins.api import Objective
from tuneyard.server.execution.gang import Gang, free_port
from tuneyard.server.execution.messages import (
    FINAL,
    Crashed,
    Done,
    Epoch,
    Error,
    Evaluate,
    EvaluateTask,
    Infeasible,
    Rank,
    Request,
    Sink,
    TaskMessage,
    Train,
    TrainTask,
)
from tuneyard.server.execution.protocol import WorkerHandle
from tuneyard.server.study.settings import Component, TrainingSettings, TrialSettings

KEY = 7
SETTINGS = TrialSettings(
    Component("digits"), Component("simple_cnn"), TrainingSettings(epochs=2, optimizer=Component("adam"))
)
TRAIN = Train(KEY, TrainTask(KEY, SETTINGS, "trial-7.pt", Objective("val_accuracy")))
EVALUATE = Evaluate("test", EvaluateTask(SETTINGS, "trial-7.pt"))


class FakeWorker:
    """A `WorkerHandle` that records what it was sent; the test makes it report through its sink. Like a
    real worker, killing it while it holds a task reports that task as Crashed."""

    def __init__(self, silent: float = 0.0) -> None:
        self.submitted: list[tuple[Request, Sink]] = []
        self.stopped: list[Any] = []
        self.killed: list[str] = []
        self.silent = silent

    def submit(self, request: Request, sink: Sink) -> None:
        self.submitted.append((request, sink))

    def stop(self, key: Any) -> None:
        self.stopped.append(key)

    def kill(self, reason: str = "crash") -> None:
        self.killed.append(reason)
        if self.submitted:
            self.send(Crashed(self.request.key, f"killed ({reason})", reason))

    def silent_for(self) -> float:
        return self.silent

    starting = False

    @property
    def request(self) -> Request:
        return self.submitted[-1][0]

    def send(self, msg: TaskMessage) -> None:
        self.submitted[-1][1](msg)


class Received(list[TaskMessage]):
    """The task's sink: every message the gang let through, in order; thread safe."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def __call__(self, msg: TaskMessage) -> None:
        with self.lock:
            self.append(msg)

    def finals(self) -> list[TaskMessage]:
        return [m for m in self if isinstance(m, FINAL)]


def started(world: int, request: Request = TRAIN) -> tuple[list[FakeWorker], Received]:
    workers = [FakeWorker() for _ in range(world)]
    received = Received()
    Gang(workers).submit(request, received)
    return workers, received


def epoch(n: int) -> Epoch:
    return Epoch(KEY, n, {"val_accuracy": n / 10})


def test_fake_worker_is_a_worker_handle() -> None:
    handle: WorkerHandle = FakeWorker()  # mypy checks the Protocol here
    assert handle.silent_for() == 0.0


# ---- one worker ----


def test_one_worker_gets_the_request_unchanged_and_the_tasks_own_sink() -> None:
    (worker,), received = started(1)
    request, sink = worker.submitted[0]
    assert request is TRAIN and request.task.rank == Rank()
    assert sink is received


def test_one_worker_passes_every_message_through() -> None:
    (worker,), received = started(1)
    messages: list[TaskMessage] = [epoch(1), epoch(2), Done(KEY, {"final_metrics": {"val_accuracy": 0.2}})]
    for msg in messages:
        worker.send(msg)
    assert received == messages


def test_one_worker_may_evaluate() -> None:
    (worker,), _ = started(1, EVALUATE)
    assert worker.request is EVALUATE


# ---- several ranks ----


def test_every_rank_gets_the_same_task_with_its_rank_and_one_shared_port() -> None:
    workers, _ = started(3)
    ranks = [w.request.task.rank for w in workers]  # type: ignore[union-attr]
    port = ranks[0].dist_port
    assert ranks == [Rank(0, 3, port), Rank(1, 3, port), Rank(2, 3, port)]
    assert port > 0
    for worker in workers:
        request = worker.request
        assert isinstance(request, Train) and request.key == KEY
        assert replace(request.task, rank=Rank()) == TRAIN.task


def test_only_rank_0s_epochs_pass() -> None:
    workers, received = started(2)
    workers[1].send(epoch(1))
    workers[0].send(epoch(1))
    workers[1].send(epoch(2))
    workers[0].send(epoch(2))
    assert received == [epoch(1), epoch(2)]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_done_is_released_once_after_every_rank_with_rank_0s_result(order: tuple[int, ...]) -> None:
    workers, received = started(3)
    *first, last = order
    for rank in first:
        workers[rank].send(Done(KEY, {"rank": rank}))
        assert received == []
    workers[last].send(Done(KEY, {"rank": last}))
    assert received == [Done(KEY, {"rank": 0})]
    assert not any(w.killed for w in workers)


@pytest.mark.parametrize(
    ("failure", "text_of"),
    [
        (Error(KEY, "Traceback: boom", stderr_tail="tail"), lambda m: m.traceback),
        (Crashed(KEY, "exit code -9", "crash", exit_code=-9), lambda m: m.why),
    ],
)
def test_a_later_ranks_failure_ends_the_task_naming_the_rank(failure: TaskMessage, text_of: Any) -> None:
    workers, received = started(3)
    workers[0].send(Done(KEY, {"final_metrics": {}}))
    workers[2].send(failure)
    (final,) = received.finals()
    assert type(final) is type(failure) and final.key == KEY
    assert text_of(final) == f"rank 2 of a distributed trial failed: {text_of(failure)}"
    if isinstance(failure, Error):
        assert isinstance(final, Error) and final.stderr_tail == "tail"


def test_a_failure_kills_every_worker() -> None:
    workers, _ = started(3)
    workers[1].send(Error(KEY, "boom"))
    assert [w.killed for w in workers] == [["crash"], ["crash"], ["crash"]]


def test_a_rank_0_failure_ends_the_task_unchanged_and_kills_every_worker() -> None:
    workers, received = started(2)
    failure = Error(KEY, "Traceback: boom")
    workers[0].send(failure)
    assert received.finals() == [failure]
    assert all(w.killed for w in workers)


def test_an_infeasible_rank_ends_the_task_and_kills_every_worker() -> None:
    workers, received = started(2)
    workers[1].send(Infeasible(KEY, "too big"))
    assert received.finals() == [Infeasible(KEY, "too big")]
    assert all(w.killed for w in workers)


def test_nothing_passes_after_the_final_message() -> None:
    workers, received = started(2)
    workers[0].send(epoch(1))
    workers[1].send(Error(KEY, "boom"))  # the kills make every rank report Crashed, too
    workers[0].send(epoch(2))
    workers[0].send(Done(KEY, {"final_metrics": {}}))
    workers[1].send(Done(KEY, {"final_metrics": {}}))
    assert received == [epoch(1), Error(KEY, "rank 1 of a distributed trial failed: boom")]


def test_nothing_passes_after_done() -> None:
    workers, received = started(2)
    for worker in workers:
        worker.send(Done(KEY, {"final_metrics": {}}))
    workers[0].send(epoch(3))
    workers[1].send(Error(KEY, "late"))
    assert received == [Done(KEY, {"final_metrics": {}})]
    assert not any(w.killed for w in workers)


@pytest.mark.parametrize("attempt", range(30))
def test_two_ranks_failing_at_once_give_one_final_message(attempt: int) -> None:
    workers, received = started(3)
    barrier = threading.Barrier(2)

    def fail(rank: int) -> None:
        barrier.wait()
        workers[rank].send(Crashed(KEY, f"rank {rank} died"))

    threads = [threading.Thread(target=fail, args=(rank,)) for rank in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(received.finals()) == 1 and received == received.finals()


def test_ranks_reporting_from_their_own_threads_fold_into_rank_0s_stream() -> None:
    workers, received = started(4)
    barrier = threading.Barrier(4)

    def report(rank: int) -> None:
        barrier.wait()
        for n in range(1, 51):
            workers[rank].send(epoch(n))
        workers[rank].send(Done(KEY, {"final_metrics": {}, "rank": rank}))

    threads = [threading.Thread(target=report, args=(rank,)) for rank in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert received == [*(epoch(n) for n in range(1, 51)), Done(KEY, {"final_metrics": {}, "rank": 0})]


class _PausingLock:
    """The fold's lock, made to pause the rank-0 thread just after it lets go, until another rank has ended
    the task: a fold that called the sink after letting go would deliver rank 0's epoch after that end."""

    def __init__(self, paused: threading.Event, resume: threading.Event) -> None:
        self._lock = threading.Lock()
        self.paused, self.resume = paused, resume
        self.pause_thread: threading.Thread | None = None

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        if threading.current_thread() is self.pause_thread:
            self.pause_thread = None
            self.paused.set()
            self.resume.wait(10)


def test_an_epoch_never_reaches_the_sink_after_a_concurrent_final_message() -> None:
    paused, resume = threading.Event(), threading.Event()
    lock = _PausingLock(paused, resume)
    workers, received = started(2)
    fold = workers[0].submitted[0][1].func.__self__  # type: ignore[attr-defined]
    fold._lock = lock

    def rank_0() -> None:
        lock.pause_thread = threading.current_thread()
        workers[0].send(epoch(1))

    thread = threading.Thread(target=rank_0)
    thread.start()
    assert paused.wait(10)
    workers[1].send(Error(KEY, "boom"))
    resume.set()
    thread.join(10)
    finals_at = [i for i, m in enumerate(received) if isinstance(m, FINAL)]
    assert finals_at == [len(received) - 1], received


# ---- the handle's other methods ----


def test_an_evaluation_on_several_ranks_is_refused() -> None:
    workers = [FakeWorker(), FakeWorker()]
    with pytest.raises(ValueError, match="Evaluate"):
        Gang(workers).submit(EVALUATE, Received())
    assert not any(w.submitted for w in workers)


def test_stop_and_kill_reach_every_worker() -> None:
    workers = [FakeWorker(), FakeWorker(), FakeWorker()]
    gang = Gang(workers)
    gang.stop(KEY)
    gang.kill("timeout")
    gang.kill()
    assert [w.stopped for w in workers] == [[KEY]] * 3
    assert [w.killed for w in workers] == [["timeout", "crash"]] * 3


def test_silent_for_is_the_longest_silence_of_any_rank() -> None:
    assert Gang([FakeWorker(1.5), FakeWorker(9.0), FakeWorker(0.2)]).silent_for() == 9.0
    assert Gang([FakeWorker(4.0)]).silent_for() == 4.0


def test_free_port_is_a_loopback_port_nobody_holds() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))

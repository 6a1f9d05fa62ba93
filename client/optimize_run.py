"""The threads of one ``optimize``: a dispatcher talks to the server, workers evaluate, a watcher shows.

Each SuggestTrials the dispatcher sends tells the ends of the trials the workers finished since the
last one (``completions``) and asks for as many new trials as workers are free, so one round trip
serves every trial that ended meanwhile: with trivial functions, one call per ``n_workers`` trials.
Workers only run ``fn`` (and its ``trial.report`` calls); their ends come back through a queue.
Every trial is leased to the one ``client_id`` of the optimize.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from tuneyard.client.errors import TuneyardError
from tuneyard.v1 import service_pb2

if TYPE_CHECKING:
    from tuneyard.client.external import ExternalStudies, ExternalTrial, StudyRpc, TrialBatch
    from tuneyard.client.progress import Display

T = TypeVar("T")
Completion = service_pb2.CompleteTrialRequest
MAX_PER_CALL = 100  # the server's cap on a SuggestTrials' count and completions
STOP_CHECK_S = 0.1  # how often a blocked thread looks whether the run was stopped
STUDY_OVER = frozenset({service_pb2.STUDY_COMPLETED, service_pb2.STUDY_FAILED, service_pb2.STUDY_CANCELLED})


def _wait_for(thread: threading.Thread) -> None:
    while thread.is_alive():  # short joins, so Ctrl-C reaches the main thread at once
        thread.join(STOP_CHECK_S)


class OptimizeRun:
    """One ``optimize`` of an external study: ``start`` the threads, ``join`` them, read the ``ended_study``."""

    def __init__(
        self, studies: ExternalStudies, rpc: StudyRpc, study_id: str, fn: Callable[[ExternalTrial], Any]
    ) -> None:
        self._studies, self._rpc, self._study_id, self._fn = studies, rpc, study_id, fn
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._todo: queue.SimpleQueue[ExternalTrial | None] = queue.SimpleQueue()
        self._ended: queue.SimpleQueue[Completion] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._watcher: threading.Thread | None = None

    def start(self, display: Display | None, client_id: str, n_workers: int) -> None:
        if display is not None:
            self._watcher = threading.Thread(target=self._watch, args=(display,), daemon=True, name="tuneyard-watch")
            self._watcher.start()
        for i in range(n_workers):
            worker = threading.Thread(target=self._evaluate, daemon=True, name=f"tuneyard-worker-{i + 1}")
            worker.start()
            self._workers.append(worker)
        self._dispatcher = threading.Thread(
            target=self._dispatch, args=(client_id, n_workers), daemon=True, name="tuneyard-dispatch"
        )
        self._dispatcher.start()

    def join(self) -> None:
        """Wait for the dispatcher, the workers, then the study's end; the first error (or Ctrl-C) stops them."""
        try:
            _wait_for(self._dispatcher)
            for worker in self._workers:
                _wait_for(worker)
            if not self._errors and self._watcher is not None:
                _wait_for(self._watcher)
        finally:
            self._stop.set()  # after an error or Ctrl-C nothing more is asked for
            for _ in self._workers:
                self._todo.put(None)
        if self._errors:
            raise self._errors[0]

    def ended_study(self) -> service_pb2.Study:
        """The study once it has ended (its last completion ends it; a short wait covers the rest)."""
        study = self._rpc.get_study(self._study_id)
        for _ in range(100):
            if study.state in STUDY_OVER:
                break
            time.sleep(0.05)
            study = self._rpc.get_study(self._study_id)
        return study

    # ---- threads ----

    def _watch(self, display: Display) -> None:
        try:
            for event in self._rpc.watch(self._study_id):
                if self._stop.is_set():
                    return
                display(event)
        except BaseException as exc:
            self._fail(exc)

    def _evaluate(self) -> None:
        try:
            while (trial := self._todo.get()) is not None:
                self._ended.put(self._studies.evaluate(trial, self._fn))
        except BaseException as exc:  # a result that is no number nor metrics: the run stops, and says why
            self._fail(exc)

    def _dispatch(self, client_id: str, n_workers: int) -> None:
        """Tell what ended, ask for as many trials as workers are free; when none is free, wait for an end."""
        busy = 0  # trials handed to the workers whose end has not been told
        wait: float | None = 0.0  # how long to wait for an end before asking: 0 at once, None until one
        delay = self._studies.poll_min
        try:
            while not self._stop.is_set():
                told = self._collect(None if busy == n_workers else wait)
                busy -= len(told)
                if self._stop.is_set():
                    self._tell(told)
                    break
                batch = self._ask(client_id, min(n_workers - busy, MAX_PER_CALL), told)
                if batch is None:
                    break  # the study ended meanwhile (cancelled, failed)
                for trial in batch:
                    self._todo.put(trial)
                busy += len(batch)
                if batch.study_done:
                    self._finish(busy)
                    break
                wait, delay = (
                    (0.0, self._studies.poll_min) if batch else (delay, min(delay * 2, self._studies.poll_max))
                )
            if self._stop.is_set():  # stopped (another thread's error, Ctrl-C): what ended is still told
                self._tell(self._collect(0.0))
        except BaseException as exc:
            self._fail(exc)
        finally:
            for _ in self._workers:
                self._todo.put(None)

    def _finish(self, busy: int) -> None:
        """The study hands out no more: tell the trials still running as each ends."""
        while busy and not self._stop.is_set():
            told = self._collect(None)
            busy -= len(told)
            self._tell(told)

    # ---- the calls ----

    def _collect(self, wait: float | None) -> list[Completion]:
        """The ends the workers queued: waiting up to `wait` s for the first (None: until one, or a stop)."""
        ended: list[Completion] = []
        deadline = None if wait is None else time.monotonic() + wait
        while not ended and not self._stop.is_set():
            left = STOP_CHECK_S if deadline is None else min(STOP_CHECK_S, deadline - time.monotonic())
            try:
                ended.append(self._ended.get(timeout=left) if left > 0 else self._ended.get_nowait())
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    break
        while len(ended) < MAX_PER_CALL:
            try:
                ended.append(self._ended.get_nowait())
            except queue.Empty:
                break
        return ended

    def _ask(self, client_id: str, count: int, told: list[Completion]) -> TrialBatch | None:
        """Up to `count` trials (at least one asked for), `told` first; None once the study has ended."""
        return self._told(lambda: self._studies.ask(self._study_id, max(count, 1), client_id, told), bool(told))

    def _tell(self, told: list[Completion]) -> None:
        """Ends `told` without asking for more (a SuggestTrials could lease a trial no worker takes)."""
        for completion in told:
            if self._told(functools.partial(self._rpc._call, "CompleteTrial", completion)) is None:
                return  # the study ended meanwhile: the server ended the rest too

    def _told(self, call: Callable[[], T], telling: bool = True) -> T | None:
        """``call()``, or None when it told a trial's end and failed because the study ended meanwhile
        (cancelled or failed: the server ended its trials)."""
        try:
            return call()
        except TuneyardError:
            if telling and self._rpc.get_study(self._study_id).state in STUDY_OVER:
                return None
            raise

    def _fail(self, exc: BaseException) -> None:
        self._errors.append(exc)
        self._stop.set()

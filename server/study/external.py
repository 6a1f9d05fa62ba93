"""A study its clients evaluate (`spec.external`): the server suggests, judges and records; clients train.

`suggest` hands out RUNNING trials, each leased to a client for the spec's lease; `report` stores a
step (the early stopper's verdict with it) and renews the lease; `complete` ends a trial. A lease
that runs out ends its trial FAILED with reason "timeout", or, while `budget.trial_retries` allow,
queues it to be handed out again with its configuration (the same trial, one retry more). Calls
come from many gRPC threads at once; one lock keeps each whole. The thread itself only polices
leases and the deadline, and ends the study once no trial is left to hand out or to wait for.

Nothing is lost when the server dies: every trial's start, step and end is journaled through the
`TrialBook`, and a trial's holder is its stored `device` ("client:<id>", or "" while queued). A
restarted server leases every RUNNING trial to its holder again for a full lease, so a client that
goes on reporting just continues.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tuneyard.plugins.api import Decision
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.storage.store import Store
from tuneyard.server.study.domain import DomainError, InvalidArgument, TrialRecord, TrialState, WrongState, under
from tuneyard.server.study.events import EventHub
from tuneyard.server.study.journal import StudyJournal
from tuneyard.server.study.outcomes import Ending
from tuneyard.server.study.results import Results, study_end
from tuneyard.server.study.resume import restore
from tuneyard.server.study.spec import StudyPlan
from tuneyard.server.study.spec_trainer import lease_s
from tuneyard.server.study.trial_book import TrialBook

log = logging.getLogger(__name__)
POLL_S = 0.25
CLIENT = "client:"  # a leased trial's stored device: "client:<client_id>"
ENDINGS = (TrialState.COMPLETED, TrialState.FAILED, TrialState.INFEASIBLE)  # what a client may end a trial as


@dataclass
class Lease:
    """A RUNNING trial handed to a client: until when it holds it, how far it got, why it must stop."""

    trial_id: int
    client_id: str
    expires: float  # time.monotonic()
    steps: int = 0  # the last step stored
    retries: int = 0
    stop_reason: str | None = None  # "pruned", "deadline": the next report answers STOP


@dataclass(frozen=True)
class Completion:
    """A client's end of a trial (CompleteTrial, or one of SuggestTrials' completions)."""

    trial_id: int
    state: TrialState
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    client_id: str = ""  # "": any caller may end it; else it must be the trial's holder


@dataclass(frozen=True)
class Handout:
    """What one SuggestTrials gives: the trials leased, whether the study is done handing out, and
    the trials its completions ended."""

    trials: list[TrialRecord]
    done: bool
    completed: list[TrialRecord] = field(default_factory=list)


def finite_metrics(metrics: dict[str, float], path: str) -> dict[str, float]:
    for name, value in metrics.items():
        if not name:
            raise InvalidArgument(path, "a metric name must not be empty")
        if not math.isfinite(value):
            raise InvalidArgument(f"{path}.{name}", f"must be a finite number, got {value}")
    return dict(metrics)


class ExternalStudy(threading.Thread):
    """One external study: `open()` it, `start()` it, then serve `suggest`, `report` and `complete`."""

    def __init__(
        self, study_id: str, plan: StudyPlan, *, storage: Store, hub: EventHub, registry: PluginRegistry
    ) -> None:
        super().__init__(name=f"external-{study_id}", daemon=True)
        self.study_id, self.plan, self.storage, self.registry = study_id, plan, storage, registry
        self.lease_s = lease_s(plan.spec)
        self._journal = StudyJournal(study_id, storage, hub)
        self._results = Results(plan)
        self._lock = threading.Lock()
        self._leases: dict[int, Lease] = {}
        self._queued: list[Lease] = []  # leases that ran out, to hand out again
        self._next_id = 1
        self._exhausted = False
        self._ended = False
        self._cancelled = threading.Event()
        self._halted = threading.Event()
        self._deadline: float | None = None
        self._book: TrialBook

    # ---- life ----

    def open(self) -> None:
        """Builds the search, and starts the study or restores it from the store (after a restart)."""
        self._book = TrialBook.built(
            self.study_id, self.plan, storage=self.storage, journal=self._journal, registry=self.registry
        )
        self._results = self._book.results
        study = self.storage.get_study(self.study_id)
        started_at = study.start_time
        if started_at is None:
            started_at = time.time()
            self._journal.start(started_at)
        else:
            self._restore()
        if self.plan.max_duration_s:  # counted from the budget start, as in the runner (an extension's)
            self._deadline = (self.storage.budget_start(self.study_id) or started_at) + self.plan.max_duration_s

    def _restore(self) -> None:
        restored = restore(self.storage, self.study_id, self._book.searcher, self._book.stopping, self._results)
        self._next_id = restored.next_id
        now = time.monotonic()
        for trial in restored.interrupted:
            lease = Lease(trial.trial_id, "", now + self.lease_s, steps=trial.epochs_completed, retries=trial.retries)
            for epoch in trial.metrics:  # steps the stopper had not journaled yet
                if self._book.stopping.tell(trial.trial_id, epoch.epoch, epoch.values, trial.config) == Decision.STOP:
                    lease.stop_reason = "pruned"
            if trial.pruned_epoch:
                lease.stop_reason = "pruned"
            if trial.device.startswith(CLIENT):
                lease.client_id = trial.device.removeprefix(CLIENT)
                self._leases[trial.trial_id] = lease
            else:
                self._queued.append(lease)

    def run(self) -> None:
        while not self._halted.is_set():
            with self._lock:
                if self._ended:
                    return
                try:
                    self._police()
                    self._end_if_done()
                except Exception:  # noqa: BLE001 - a failing store fails the study, not the server
                    log.exception("external study %s failed", self.study_id)
                    self._ended = True
                    self._journal.fail_when_writable("internal error: the study could not be stored", self._halted)
                    return
            self._halted.wait(POLL_S)

    def cancel(self) -> None:
        """Ends the study CANCELLED now: its running trials end CANCELLED with what they reported."""
        self._cancelled.set()
        with self._lock:
            for lease in list(self._leases.values()) + self._queued:
                lease.stop_reason = "cancelled"
                self._finish(
                    lease, Ending("done", result={"final_metrics": self._last_metrics(lease), "stopped": True})
                )
            self._queued.clear()
            self._end_if_done()

    @classmethod
    def ended(
        cls, study_id: str, plan: StudyPlan, *, storage: Store, hub: EventHub, registry: PluginRegistry
    ) -> ExternalStudy:
        """The study as it stands after its end (a server restarted since): it hands out nothing,
        answers STOP for a cancelled one, and repeats the trials' stored ends."""
        study = cls(study_id, plan, storage=storage, hub=hub, registry=registry)
        study._ended = True
        if storage.get_study(study_id).state.value == "CANCELLED":
            study._cancelled.set()
        return study

    def halt(self) -> None:
        """Server shutdown: the study stays unfinished, its trials RUNNING, for the next start."""
        self._halted.set()

    # ---- the three calls ----

    def suggest(self, count: int, client_id: str, completions: Sequence[Completion] = ()) -> Handout:
        """Ends `completions` in order (tell), then leases up to `count` trials to `client_id` (ask),
        in one hold of the lock and one store transaction: a client that tells the trials it finished
        and asks for more waits once, and the server commits once. A refused completion hands nothing
        out; the ones before it stay ended (committed), and the refusal is raised after the commit."""
        for i, completion in enumerate(completions):
            with under(f"completions[{i}]."):
                _check_ending(completion)
        refused: DomainError | None = None
        with self._lock, self.storage.atomic(), self._book.batched():
            completed = []
            try:
                for i, completion in enumerate(completions):
                    with under(f"completions[{i}]."):
                        completed.append(self._complete(completion))
            except DomainError as exc:  # raised before the refused one wrote anything
                refused = exc
            if refused is None:
                handed = self._hand_out_up_to(count, client_id)
                done = self._ended or self._exhausted
        if refused is not None:
            raise refused
        return Handout(handed, done, completed)

    def _hand_out_up_to(self, count: int, client_id: str) -> list[TrialRecord]:
        self._police()
        handed: list[TrialRecord] = []
        while len(handed) < count:
            trial = self._hand_out(client_id)
            if trial is None:
                break
            handed.append(trial)
        self._end_if_done()
        return handed

    def report(self, trial_id: int, step: int, metrics: dict[str, float], client_id: str = "") -> bool:
        """Stores step `step` of a trial, renews its lease; True: STOP. A `client_id` must be the holder's."""
        epochs = self.plan.spec["training"]["epochs"]
        if not 1 <= step <= epochs:
            raise InvalidArgument("step", f"must be from 1 to training.epochs ({epochs}), got {step}")
        metrics = finite_metrics(metrics, "metrics")
        with self._lock:
            lease = self._leases.get(trial_id)
            if lease is None:
                trial = self._ended_trial(trial_id)
                if trial.state == TrialState.CANCELLED or self._cancelled.is_set():
                    return True  # the study was cancelled: the client is to stop
                raise WrongState(f"trial {trial_id} already ended {trial.state.value}")
            _check_holder(lease, client_id)
            if step < lease.steps:
                raise InvalidArgument("step", f"steps go forward: step {lease.steps} is stored, got {step}")
            lease.expires = time.monotonic() + self.lease_s
            if step > lease.steps:  # the same step again (a client's retry) is stored once
                lease.steps = step
                verdict = self._book.step(trial_id, step, metrics, judge=lease.stop_reason is None)
                if verdict == Decision.STOP:
                    lease.stop_reason = "pruned"
            return lease.stop_reason is not None

    def complete(self, completion: Completion) -> TrialRecord:
        """Ends a trial as the client says; the same call again returns the same trial. A `client_id`
        must be the holder's."""
        _check_ending(completion)
        with self._lock:
            return self._complete(completion)

    # ---- inside the lock ----

    def _complete(self, completion: Completion) -> TrialRecord:
        trial_id, state, metrics, error = completion.trial_id, completion.state, completion.metrics, completion.error
        lease = self._leases.get(trial_id)
        if lease is None:
            trial = self._ended_trial(trial_id)
            if _same_ending(trial, state, metrics, error):
                return trial
            raise WrongState(f"trial {trial_id} already ended {trial.state.value}")
        _check_holder(lease, completion.client_id)
        trial = self._finish(lease, self._ending(lease, state, metrics, error))
        self._end_if_done()
        return trial

    def _hand_out(self, client_id: str) -> TrialRecord | None:
        if self._cancelled.is_set() or self._halted.is_set() or self._ended or self._past_deadline():
            return None
        device = f"{CLIENT}{client_id}"
        if self._queued:
            lease = self._queued.pop(0)
            lease.client_id, lease.expires = client_id, time.monotonic() + self.lease_s
            self._leases[lease.trial_id] = lease
            self.storage.move_trial(self.study_id, lease.trial_id, device)
            return self.storage.get_trial(self.study_id, lease.trial_id)
        if not self._may_start():
            return None
        config = self._book.searcher.suggest(self._next_id)
        if config is None:
            self._exhausted = True
            return None
        trial = self._book.start(self._next_id, config, device)
        self._leases[self._next_id] = Lease(self._next_id, client_id, time.monotonic() + self.lease_s)
        self._next_id += 1
        return trial

    def _may_start(self) -> bool:
        plan = self.plan
        return (
            not self._exhausted
            and self._next_id <= plan.max_trials
            and len(self._leases) + len(self._queued) < plan.max_concurrent_trials
            and not self._results.failures_exceeded()
        )

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.time() >= self._deadline

    def _police(self) -> None:
        """Ends or re-queues trials whose lease ran out; at the deadline, asks every trial to stop."""
        now = time.monotonic()
        past_deadline = self._past_deadline()
        for lease in list(self._leases.values()):
            if past_deadline and lease.stop_reason is None:
                lease.stop_reason = "deadline"
            if lease.expires <= now:
                self._expire(lease)

    def _expire(self, lease: Lease) -> None:
        who = f"client {lease.client_id!r}" if lease.client_id else "its client"
        if lease.stop_reason is not None:  # asked to stop and never completed: it ends as it stood
            self._finish(lease, self._stopped(lease))
        elif lease.retries < self.plan.trial_retries:
            lease.retries += 1
            log.warning("trial %s/%s: the lease of %s ran out; handed out again", self.study_id, lease.trial_id, who)
            del self._leases[lease.trial_id]
            self.storage.set_retries(self.study_id, lease.trial_id, lease.retries)
            self.storage.move_trial(self.study_id, lease.trial_id, "")
            self._queued.append(lease)
        else:
            why = f"the lease of {who} ran out: no report or completion for {self.lease_s:g}s"
            self._finish(lease, Ending("crashed", error=why, reason="timeout"))

    def _ending(self, lease: Lease, state: TrialState, metrics: dict[str, float], error: str) -> Ending:
        if state == TrialState.FAILED:
            return Ending("error", error=error or "the client reported a failure", reason="error")
        if state == TrialState.INFEASIBLE:
            return Ending("infeasible", error=error or "the client found the configuration infeasible")
        final = metrics or self._last_metrics(lease)
        missing = [o.metric for o in self.plan.objectives if o.metric not in final]
        if missing and lease.stop_reason is None:
            raise InvalidArgument("metrics", f"has no {missing[0]!r}, the objective: report it, or send it here")
        return Ending("done", result={"final_metrics": final, "stopped": lease.stop_reason is not None})

    def _finish(self, lease: Lease, ending: Ending) -> TrialRecord:
        self._leases.pop(lease.trial_id, None)
        return self._book.finish(lease.trial_id, ending, lease.stop_reason)

    def _stopped(self, lease: Lease) -> Ending:
        """The end of a trial asked to stop: it keeps what it reported."""
        return Ending("done", result={"final_metrics": self._last_metrics(lease), "stopped": True})

    def _last_metrics(self, lease: Lease) -> dict[str, float]:
        return dict(self.storage.get_trial(self.study_id, lease.trial_id).final_metrics) if lease.steps else {}

    def _ended_trial(self, trial_id: int) -> TrialRecord:
        """A trial of this study that holds no lease: ended, or queued to be handed out again."""
        trial = self.storage.get_trial(self.study_id, trial_id)  # NotFound for a trial it does not have
        if not trial.state.terminal:
            raise WrongState(f"trial {trial_id}'s lease ran out; it is handed out again")
        return trial

    def _end_if_done(self) -> None:
        """Ends the study once nothing is running, queued, or left to hand out."""
        if self._ended or self._leases or self._queued:
            return
        more = not self._cancelled.is_set() and not self._past_deadline() and self._may_start()
        if more:
            return
        end = study_end(cancelled=self._cancelled.is_set(), results=self._results, evaluation=None)
        assert end is not None  # a study without a test split ends as soon as its trials do
        self._ended = True
        self._journal.end(end.state, end.error, end.test_metrics)


def _check_ending(completion: Completion) -> None:
    """A completion's own checks, before the study is touched: an ending a client may give, finite metrics."""
    if completion.state not in ENDINGS:
        names = ", ".join(f"TRIAL_{s.value}" for s in ENDINGS)
        raise InvalidArgument("state", f"must be one of {names}, got {completion.state.value}")
    finite_metrics(completion.metrics, "metrics")


def _check_holder(lease: Lease, client_id: str) -> None:
    if client_id and lease.client_id and client_id != lease.client_id:
        raise WrongState(
            f"trial {lease.trial_id} is held by client {lease.client_id!r}: "
            "its lease ran out and it was handed out again"
        )


def _same_ending(trial: TrialRecord, state: TrialState, metrics: dict[str, float], error: str) -> bool:
    """Whether a completion of an ended trial repeats the one that ended it (a client's safe retry).
    A trial the study's cancel ended takes any completion: the client only hears of the cancel now."""
    if trial.state == TrialState.CANCELLED:
        return True
    if state == TrialState.COMPLETED:
        ended_done = trial.state in (TrialState.COMPLETED, TrialState.PRUNED, TrialState.CANCELLED)
        return ended_done and (not metrics or trial.final_metrics == metrics)
    return trial.state == state and trial.error == (error or trial.error)

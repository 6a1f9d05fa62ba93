"""The study runner: per study, one thread that drives searcher → slot → trial → reports → searcher.

It asks the searcher for configurations while budget remains, starts each on a free slot,
feeds per-epoch reports to the early stopper, tells the searcher results, tracks the best
trial, and at the end evaluates the best checkpoint on the test split — an ordinary task, run and
policed like a trial. Every state change is stored, and published as an event, before anything
else happens.

Nothing is lost when the server dies: a trial's start and end are journaled in one transaction
with the searcher's and early stopper's state and the event announcing them, so a runner
started on an unfinished study (`resume`) rebuilds the search exactly, runs its interrupted
trials again from their last epoch checkpoint, and continues the event sequence without gaps
or repeats. Tasks that stop sending heartbeats, or ignore a stop request for STOP_GRACE_S,
have their worker killed; a crashed or hung trial is re-run up to `budget.trial_retries` times.

With `resources.fuse: K` a free slot gets up to K trials that may train as one fused model
(`fused_groups`): one task in one worker, each member still its own trial (its own start, epochs,
stopper verdicts and end); a group that crashes resumes from its members' checkpoints. A PBT
study (`population`) runs its trials in turns, from decision epoch to decision epoch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from tuneyard.plugins.api import Decision
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.execution.messages import (
    Epoch,
    Final,
    Inbox,
    Wake,
)
from tuneyard.server.execution.scheduler import Allocation, DeviceScheduler
from tuneyard.server.storage.store import Store
from tuneyard.server.study.domain import StoreError, TrialRecord
from tuneyard.server.study.events import EventHub
from tuneyard.server.study.fused_groups import Fusion, Launcher
from tuneyard.server.study.journal import StudyJournal
from tuneyard.server.study.outcomes import Ending, Finish, RunAgain, decide, ending_of
from tuneyard.server.study.population import PopulationSchedule
from tuneyard.server.study.results import Results, study_end
from tuneyard.server.study.resume import restore
from tuneyard.server.study.spec import StudyPlan
from tuneyard.server.study.stopping import StopperLedger
from tuneyard.server.study.test_evaluation import TestEvaluation
from tuneyard.server.study.trial_book import TrialBook
from tuneyard.server.study.trial_runs import TEST, EvaluationRun, GroupRun, TaskBoard, TrialRun
from tuneyard.server.study.trial_tasks import TrialTasks

log = logging.getLogger(__name__)
POLL_S = 0.5
MEMORY_MARGIN = 1.2  # a measured peak is padded by this factor when packing later trials


class StudyRunner(threading.Thread):
    """Runs one study to its end, or resumes one left unfinished; `cancel()` stops its trials promptly."""

    def __init__(
        self,
        study_id: str,
        plan: StudyPlan,
        *,
        storage: Store,
        hub: EventHub,
        scheduler: DeviceScheduler,
        registry: PluginRegistry,
        heartbeat_timeout: float = 0.0,
    ) -> None:
        super().__init__(name=f"study-{study_id}", daemon=True)
        self.study_id, self.plan = study_id, plan
        self.storage, self.hub, self.scheduler, self.registry = storage, hub, scheduler, registry
        self._units = plan.resources.units
        self._priority = plan.resources.priority
        self._memory_gb = plan.resources.gpu_memory_gb
        self._measured_gb = 0.0  # the largest peak GPU memory any trial of this study reported
        self._board = TaskBoard(study_id, heartbeat_timeout)
        self._journal = StudyJournal(study_id, storage, hub)
        self._inbox: queue.Queue[Inbox] = queue.Queue()
        self._cancelled = threading.Event()
        self._halted = threading.Event()
        self._results = Results(plan)
        self._searcher: Any = None
        self._stopping = StopperLedger(None, plan.objective)
        self._book: TrialBook | None = None  # made once the search is built
        self._next_id = 1
        self._exhausted = False  # the searcher has no more configurations
        self._fusion = Fusion(study_id, plan.resources.fuse, registry)
        self._launcher = Launcher(self._board, storage, self._inbox.put, self._memory_gb, self._fusion)
        self._tasks = TrialTasks(study_id, plan, registry, storage)
        self._population = PopulationSchedule(self._board, self._tasks)
        self._deadline: float | None = None
        self._test = TestEvaluation(plan, registry, self._board, self._inbox.put, self._memory_gb)

    # ---- control ----

    def cancel(self) -> None:
        self._cancelled.set()
        self._inbox.put(Wake())

    def halt(self) -> None:
        """Server shutdown: stop trials and return, leaving the study unfinished in storage.

        The study keeps its RUNNING state and its trials their checkpoints, so the next server
        start resumes it.
        """
        self._halted.set()
        self._inbox.put(Wake())

    def _wake(self) -> None:
        self._inbox.put(Wake())

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - a runner bug or a failing store fails its study, not the server
            log.exception("study %s failed", self.study_id)
            for key, task_run in list(self._board.running()):
                assert task_run.alloc is not None
                task_run.alloc.gang.stop(key)
                self.scheduler.release(task_run.alloc)
                task_run.alloc = None
            self.scheduler.withdraw(self.study_id)
            store_failed = isinstance(exc, StoreError)  # says what to do about it; anything else is a bug
            error = str(exc) if store_failed else f"internal error: {type(exc).__name__}: {exc}"
            self._journal.fail_when_writable(error, self._halted)

    def _run(self) -> None:
        self._book = TrialBook.built(
            self.study_id, self.plan, storage=self.storage, journal=self._journal, registry=self.registry
        )
        self._searcher, self._stopping, self._results = self._book.searcher, self._book.stopping, self._book.results
        self._population = PopulationSchedule(self._board, self._tasks, self._book)
        study = self.storage.get_study(self.study_id)
        if study.start_time is None:
            started_at = time.time()
            self._journal.start(started_at)
        else:
            started_at = study.start_time
            self._restore()
        # An extended study's max_duration counts from its budget start: the time it sat finished is left out.
        counted_from = self.storage.budget_start(self.study_id) or started_at
        deadline = self._deadline = counted_from + self.plan.max_duration_s if self.plan.max_duration_s else None
        while True:
            if self._halted.is_set():
                self._board.stop_all("halted")
                return
            self._restart_requeued()
            self._start_new_trials(deadline)
            if not self._wants_trials(deadline):
                self.scheduler.withdraw(self.study_id)
                if not self._board.trials and not self._evaluating():
                    break
            if deadline and time.time() >= deadline:
                self._board.stop_trials("deadline")
            if self._cancelled.is_set():
                self._board.drop_requeued()
                self._board.stop_all("cancelled")
            self._board.police()
            self._handle(self._next_message())
        self._conclude()

    def _next_message(self) -> Inbox:
        try:
            return self._inbox.get(timeout=POLL_S)
        except queue.Empty:
            return Wake()

    # ---- resuming an unfinished study ----

    def _restore(self) -> None:
        """Rebuilds the runner from storage: search state, finished results, interrupted trials."""
        restored = restore(self.storage, self.study_id, self._searcher, self._stopping, self._results)
        self._next_id = restored.next_id
        for trial in restored.interrupted:
            self._restore_trial(trial)
        if restored.stored or self._results.best is not None:
            again = len(self._board.requeued)
            log.info("study %s resumes: %d trials stored, %d to run again", self.study_id, restored.stored, again)

    def _restore_trial(self, trial: TrialRecord) -> None:
        """An interrupted trial: replays the epochs the stopper had not journaled, then either ends it
        PRUNED (the stopper had said STOP) or queues it to run again from its checkpoint."""
        run = self._tasks.restored(trial)  # an exploit journaled before the stop applied first
        self._population.restored(run, trial)
        self._board.trials[trial.trial_id] = run
        replayed_stop = False
        for epoch in trial.metrics:  # reports the stopper had not journaled yet
            verdict = self._stopping.tell(trial.trial_id, epoch.epoch, epoch.values, run.config)
            replayed_stop = verdict == Decision.STOP or replayed_stop
        if trial.pruned_epoch or replayed_stop:
            at = trial.pruned_epoch or trial.epochs_completed
            log.info("study %s: trial %s was pruned at epoch %s before the stop", self.study_id, trial.trial_id, at)
            run.stop_reason = "pruned"
            self._finish_trial(run, Ending("done", result={"final_metrics": trial.final_metrics, "stopped": True}))
            return
        self._board.requeued.append(trial.trial_id)

    # ---- starting trials ----

    def _acquire(self, units: float) -> Allocation | None:
        need_gb = self._memory_gb or MEMORY_MARGIN * self._measured_gb
        return self.scheduler.try_acquire(self.study_id, units, self._wake, self._priority, int(need_gb * 2**30))

    def _restart_requeued(self) -> None:
        """Trials to run again (out of GPU memory, a retry, a server stop, a PBT pause) start from their
        last checkpoint; with fusion, those that may resume together as one group."""
        while not self._cancelled.is_set() and not self._halted.is_set():
            free = self.plan.max_concurrent_trials - (len(self._board.trials) - len(self._board.requeued))
            waiting = self._population.waiting(self._board.requeued, self._budget_left(self._deadline), free)
            if not waiting:
                return
            members = self._fusion.resume_members([self._board.trials[t] for t in waiting])
            alloc = self._acquire(max(run.units for run in members))
            if alloc is None:
                return
            for run in members:
                self._board.requeued.remove(run.trial_id)
                self.storage.move_trial(self.study_id, run.trial_id, alloc.name)
                self._population.resuming(run)
            self._launcher.launch(members, alloc, resume=True)

    def _start_new_trials(self, deadline: float | None) -> None:
        while not self._population.blocks_new_trials(self._board.requeued) and self._may_start(deadline):
            alloc = self._acquire(self._units)
            if alloc is None:
                return
            members = self._new_trials(alloc.name, deadline)
            if not members:
                self.scheduler.release(alloc)
                return
            self._launcher.launch(members, alloc, resume=False)

    def _new_trials(self, device: str, deadline: float | None) -> list[TrialRun]:
        """New trials for one slot: one, or with fusion up to `resources.fuse` asked of the searcher one by
        one while they may train together; one that may not waits for the next free slot."""
        members: list[TrialRun] = []
        while len(members) < self._fusion.size and (not members or self._may_start(deadline)):
            config = self._searcher.suggest(self._next_id)
            if config is None:
                self._exhausted = True
                break
            run = self._new_trial(self._next_id, config, device)
            self._next_id += 1
            if members and not self._fusion.together(members[0], run):
                self._board.requeued.append(run.trial_id)
                break
            members.append(run)
        return members

    def _may_start(self, deadline: float | None) -> bool:
        running = len(self._board.trials) - self._population.paused()  # paused PBT trials hold no slot
        return self._budget_left(deadline) and running < self.plan.max_concurrent_trials

    def _budget_left(self, deadline: float | None) -> bool:
        """Whether new trials may still start, concurrency aside."""
        return (
            not self._cancelled.is_set()
            and not self._halted.is_set()
            and not self._exhausted
            and self._next_id <= self.plan.max_trials
            and (deadline is None or time.time() < deadline)
            and not self._results.failures_exceeded()
        )

    def _wants_trials(self, deadline: float | None) -> bool:
        return bool(self._board.requeued) or self._may_start(deadline)

    def _new_trial(self, trial_id: int, config: dict[str, Any], device: str) -> TrialRun:
        # The store keeps the checkpoint's path relative to its checkpoint directory, so the data
        # directory may be moved; `checkpoint_path` says where it lies now.
        checkpoint_key = f"{self.study_id}/trial-{trial_id}/checkpoint.pt"
        task = self._tasks.task(trial_id, config, self.storage.checkpoint_path(checkpoint_key))
        run = TrialRun(trial_id=trial_id, task=task, config=config, units=self._units)
        self._board.trials[trial_id] = run
        assert self._book is not None
        self._book.start(trial_id, config, device, checkpoint_key)
        return run

    # ---- messages from workers ----

    def _handle(self, msg: Inbox) -> None:
        if isinstance(msg, Wake):
            return
        group = self._board.groups.get(msg.key) if isinstance(msg.key, str) else None
        if group is not None:
            self._on_group_message(group, msg)
            return
        evaluation = self._board.evaluation
        if msg.key == TEST:
            if evaluation is not None and evaluation.alloc is not None and not isinstance(msg, Epoch):
                self._on_evaluation_end(evaluation, msg)
            return
        run = self._board.running_trial(msg.key)
        if run is None:
            return  # a late message of a trial run already ended
        if isinstance(msg, Epoch):
            self._on_epoch(run, msg.epoch, msg.metrics)
        else:
            self._on_end(run, ending_of(msg))

    def _on_epoch(self, run: TrialRun, epoch: int, metrics: dict[str, float]) -> None:
        if epoch <= run.epochs or self._population.skips(run):
            return  # stored already (a resumed run re-reports its checkpoint's), or after a PBT decision epoch
        run.epochs = epoch
        trial_id = run.trial_id
        assert self._book is not None
        group = self._board.groups.get(run.group)
        judge = run.stop_reason is None and (group is None or group.stop_reason is None)
        verdict = self._book.step(trial_id, epoch, metrics, judge=judge, config=run.config)
        self._measured_gb = max(self._measured_gb, float(metrics.get("peak_memory_gb", 0.0)))
        if verdict == Decision.STOP:
            self._board.ask_stop_trial(run, "pruned")
            if group is not None:  # it leaves its fused group now: its end need not wait for the group's
                self._finish_trial(run, self._launcher.left(group, run, epoch, metrics))
        self._population.at_step(run, epoch)

    def _on_group_message(self, group: GroupRun, msg: Inbox) -> None:
        """A fused group's message: a member's epoch, or the group's end (each member's ending)."""
        if group.alloc is None:
            return  # a late message of a group that ended
        if isinstance(msg, Epoch):
            run = self._board.trials.get(msg.member) if msg.member is not None else None
            if run is not None and run.group == group.key:
                self._on_epoch(run, msg.epoch, msg.metrics)
            return
        assert not isinstance(msg, Wake)
        alloc, group.alloc = group.alloc, None
        self.scheduler.release(alloc)
        for run, ending in self._launcher.ended(group, msg):
            self._decide(run, ending, alloc)

    def _on_end(self, run: TrialRun, ending: Ending) -> None:
        alloc, run.alloc = run.alloc, None
        assert alloc is not None
        self.scheduler.release(alloc)
        self._decide(run, ending, alloc)

    def _decide(self, run: TrialRun, ending: Ending, alloc: Allocation) -> None:
        """Whether the trial whose run ended on `alloc` runs again or finishes, and then that."""
        if self._population.ended(run, ending):  # at a PBT decision epoch: it waits its turn
            return
        decision = decide(
            ending,
            stop_reason=run.stop_reason,
            share=alloc.share,
            units=alloc.units,
            retries=run.retries,
            max_retries=self.plan.trial_retries,
            kept_metrics=lambda: self.storage.get_trial(self.study_id, run.trial_id).final_metrics,
        )
        match decision:
            case RunAgain(units=units, retry=False):
                log.warning("trial %s ran out of GPU memory beside others; re-queued with more room", run.trial_id)
                run.units = units
                self._board.requeued.append(run.trial_id)
            case RunAgain(units=units, retry=True):
                run.retries += 1
                why = f"{ending.error}; retry {run.retries} of {self.plan.trial_retries} from its last checkpoint"
                log.warning("trial %s/%s: %s", self.study_id, run.trial_id, why)
                self.storage.set_retries(self.study_id, run.trial_id, run.retries)
                run.units = units
                self._board.requeued.append(run.trial_id)
            case Finish(ending=final):
                self._finish_trial(run, final)

    def _finish_trial(self, run: TrialRun, ending: Ending) -> None:
        del self._board.trials[run.trial_id]
        assert self._book is not None
        self._book.finish(run.trial_id, ending, run.stop_reason)

    # ---- the end: the test evaluation, then the study's state ----

    def _evaluating(self) -> bool:
        """Whether the study's last task, the best trial's test evaluation, is still to run or running;
        starts it when a slot is free."""
        ended = self._cancelled.is_set() or self._halted.is_set() or self._results.failures_exceeded()
        return self._test.pending(self._results.best, ended, lambda: self._acquire(min(self._units, 1.0)))

    def _on_evaluation_end(self, evaluation: EvaluationRun, msg: Final) -> None:
        assert evaluation.alloc is not None
        self.scheduler.withdraw(self.study_id)
        self.scheduler.release(evaluation.alloc)
        evaluation.alloc = None
        self._test.ended(evaluation, msg)

    def _conclude(self) -> None:
        self.scheduler.withdraw(self.study_id)
        if self._halted.is_set():
            return
        end = study_end(cancelled=self._cancelled.is_set(), results=self._results, evaluation=self._board.evaluation)
        if end is not None:
            self._journal.end(end.state, end.error, end.test_metrics)

"""The study runner: per study, one thread that drives searcher → slot → trial → reports → searcher.

It asks the searcher for configurations while budget remains, starts each on a free slot,
feeds per-epoch reports to the early stopper, tells the searcher results, tracks the best
trial, and at the end evaluates the best checkpoint on the test split. Every state change is
stored, and published as an event, before anything else happens.

Nothing is lost when the server dies: a trial's start and end are journaled in one transaction
with the searcher's and early stopper's state and the event announcing them, so a runner
started on an unfinished study (`resume`) rebuilds the search exactly, runs its interrupted
trials again from their last epoch checkpoint, and continues the event sequence without gaps
or repeats. Trials that stop sending heartbeats, or ignore a stop request for STOP_GRACE_S,
have their worker killed; a crashed or hung trial is re-run up to `budget.trial_retries` times.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from dataclasses import replace
from typing import Any

from tuneyard.plugins.api import Choice, Decision
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.execution.messages import (
    Crashed,
    Done,
    Epoch,
    Error,
    Evaluate,
    EvaluateTask,
    Inbox,
    Infeasible,
    Peer,
    Placement,
    Rank,
    TaskMessage,
    Train,
    TrainTask,
    Wake,
)
from tuneyard.server.execution.scheduler import Allocation, DeviceScheduler
from tuneyard.server.storage.sqlite import Storage
from tuneyard.server.study.domain import StoreError, StudyState, TrialRecord, TrialState, trial_to_dict
from tuneyard.server.study.events import EventHub
from tuneyard.server.study.outcomes import Ending, Finish, RunAgain, decide, ending_of, final_state
from tuneyard.server.study.pareto import pareto_front
from tuneyard.server.study.settings import resolve
from tuneyard.server.study.spec import StudyPlan

log = logging.getLogger(__name__)
POLL_S = 0.5
MEMORY_MARGIN = 1.2  # a measured peak is padded by this factor when packing later trials
STOP_GRACE_S = 3.0  # a trial told to stop that is still running this long after has its worker killed
STOPPED = ("cancelled", "deadline", "pruned", "halted")
STORE_RETRY_S = 0.5  # first wait before storing a study's failure again while the store refuses writes
STORE_RETRY_MAX_S = 10.0


def plain_state(obj: Any, what: str) -> dict[str, Any] | None:
    """A plugin's state_dict as plain JSON data; None (logged) when it is not serialisable."""
    if obj is None:
        return None
    try:
        return json.loads(json.dumps(obj.state_dict()))
    except (TypeError, ValueError) as exc:
        log.warning("the %s's state_dict is not plain data (%s); it resumes from scratch", what, exc)
        return None


def free_port() -> int:
    """A free loopback port for a distributed trial's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def placement(alloc: Allocation, memory_gb: float) -> Placement:
    """What a worker needs to know of its share: threads to use and a GPU memory cap."""
    device = alloc.devices[0]
    memory_fraction = 0.0
    if device.kind == "cuda" and alloc.share < 1:
        memory_fraction = alloc.share
        if memory_gb and device.memory_bytes:
            memory_fraction = min(1.0, memory_gb * 2**30 / device.memory_bytes)
    return Placement(threads=max(1, int(device.threads * alloc.share)), memory_fraction=memory_fraction)


class StudyRunner(threading.Thread):
    """Runs one study to its end, or resumes one left unfinished; `cancel()` stops its trials promptly."""

    def __init__(
        self,
        study_id: str,
        plan: StudyPlan,
        *,
        storage: Storage,
        hub: EventHub,
        scheduler: DeviceScheduler,
        registry: PluginRegistry,
        heartbeat_timeout: float = 0.0,
    ) -> None:
        super().__init__(name=f"study-{study_id}", daemon=True)
        self.study_id, self.plan = study_id, plan
        self.storage, self.hub, self.scheduler, self.registry = storage, hub, scheduler, registry
        self.heartbeat_timeout = heartbeat_timeout
        resources = plan.spec["resources"]
        self._units = float(resources["gpus_per_trial"]) or 1.0
        self._priority = float(resources.get("priority") or 1.0)
        self._memory_gb = float(resources.get("gpu_memory_gb") or 0.0)
        self._measured_gb = 0.0  # the largest peak GPU memory any trial of this study reported
        self._requeued: list[tuple[int, float]] = []  # (trial, units): trials waiting to run again
        self._tasks: dict[int, TrainTask] = {}
        self._peers_pending: dict[int, int] = {}
        self._rank0_result: dict[int, dict[str, Any]] = {}
        self._inbox: queue.Queue[Inbox] = queue.Queue()
        self._cancelled = threading.Event()
        self._halted = threading.Event()
        self._running: dict[int, Allocation] = {}
        self._stop_reason: dict[int, str] = {}
        self._stop_time: dict[int, float] = {}
        self._killed: set[int] = set()
        self._epochs: dict[int, int] = {}  # last epoch stored per running trial
        self._reported: dict[int, int] = {}  # last epoch told to the early stopper per running trial
        self._retries: dict[int, int] = {}
        self._failures = 0
        self._best: TrialRecord | None = None
        self._front: list[tuple[int, list[float]]] = []
        self._searcher: Any = None
        self._stopper: Any = None
        self._next_id = 1

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

    def _publish(self, kind: str, payload: dict[str, Any]) -> None:
        self.hub.publish(self.study_id, kind, payload)

    def _set_state(self, state: StudyState, **fields: Any) -> None:
        payload: dict[str, Any] = {"state": state.value, "error": fields.get("error", "")}
        if "test_metrics" in fields:
            payload["test_metrics"] = fields["test_metrics"]
        with self.storage.atomic():
            self.storage.update_study(self.study_id, state=state, **fields)
            self._publish("study_state", payload)

    def _journal(self) -> None:
        """Stores the searcher's and stopper's state; called inside the transaction of a trial's
        start or end. The stopper's entry notes how far each running trial was reported, so a
        resumed runner replays exactly the epochs stored after it."""
        stopper_state = None
        if self._stopper is not None:
            stopper_state = {"state": plain_state(self._stopper, "early stopper"), "reported": dict(self._reported)}
        self.storage.update_study(
            self.study_id, searcher_state=plain_state(self._searcher, "searcher"), stopper_state=stopper_state
        )

    # ---- main loop ----

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - a runner bug or a failing store fails its study, not the server
            log.exception("study %s failed", self.study_id)
            for trial_id, alloc in list(self._running.items()):
                for worker in alloc.workers:
                    worker.stop(trial_id)
                self.scheduler.release(alloc)
            self._running.clear()
            self.scheduler.withdraw(self.study_id)
            store_failed = isinstance(exc, StoreError)  # says what to do about it; anything else is a bug
            self._fail_when_writable(str(exc) if store_failed else f"internal error: {type(exc).__name__}: {exc}")

    def _fail_when_writable(self, error: str) -> None:
        """Marks the study FAILED, retrying while the store refuses writes (a full disk): the study
        ends FAILED once space is freed, instead of staying RUNNING with no runner. A server
        shutdown meanwhile leaves it unfinished, for the next start to resume."""
        wait = STORE_RETRY_S
        while not self._halted.is_set():
            try:
                self._set_state(StudyState.FAILED, error=error, end_time=time.time())
                return
            except Exception as exc:  # noqa: BLE001 - the store is still failing; try again
                log.error("study %s: cannot store its failure yet (%s); retrying in %.0f s", self.study_id, exc, wait)
                self._halted.wait(wait)
                wait = min(wait * 2, STORE_RETRY_MAX_S)

    def _build_plugins(self) -> None:
        plan = self.plan
        searcher_spec = plan.spec["searcher"]
        self._searcher = self.registry.create(
            "searcher",
            searcher_spec["name"],
            searcher_spec["options"],
            space=plan.space,
            objective=plan.objective,
            seed=plan.seed,
        )
        if plan.spec.get("early_stopping"):
            es = plan.spec["early_stopping"]
            self._stopper = self.registry.create(
                "early_stopper", es["name"], es["options"], objective=plan.objective, max_epochs=self._max_epochs()
            )

    def _run(self) -> None:
        plan = self.plan
        self._build_plugins()
        study = self.storage.get_study(self.study_id)
        if study.start_time is None:
            started_at = time.time()
            self._set_state(StudyState.RUNNING, start_time=started_at)
        else:
            started_at = study.start_time
            self._restore()
        deadline = started_at + plan.max_duration_s if plan.max_duration_s else None
        exhausted = False
        while True:
            if self._halted.is_set():
                self._stop_all("halted")
                return
            self._restart_requeued()
            while not self._requeued and self._may_start(self._next_id, exhausted, deadline):
                alloc = self._acquire(self._units)
                if alloc is None:
                    break
                config = self._searcher.suggest(self._next_id)
                if config is None:
                    exhausted = True
                    self.scheduler.release(alloc)
                    break
                self._start_trial(self._next_id, config, alloc)
                self._next_id += 1
            wants_more = bool(self._requeued) or self._may_start(self._next_id, exhausted, deadline)
            if not wants_more:
                self.scheduler.withdraw(self.study_id)
                if not self._running:
                    break
            if deadline and time.time() >= deadline:
                self._stop_all("deadline")
            if self._cancelled.is_set():
                self._requeued.clear()
                self._stop_all("cancelled")
            self._police()
            try:
                msg = self._inbox.get(timeout=POLL_S)
            except queue.Empty:
                continue
            self._handle(msg)
        self._finish()

    # ---- resuming an unfinished study ----

    def _restore(self) -> None:
        """Rebuilds the runner from storage: search state, finished results, interrupted trials."""
        searcher_state, stopper_state = self.storage.search_state(self.study_id)
        if searcher_state is not None:
            self._searcher.load_state_dict(searcher_state)
        reported: dict[str, int] = {}
        if self._stopper is not None and stopper_state and stopper_state.get("state") is not None:
            self._stopper.load_state_dict(stopper_state["state"])
            reported = stopper_state.get("reported", {})
        study = self.storage.get_study(self.study_id)
        self._best = study.best_trial
        self._front = [(t.trial_id, t.objective_values) for t in study.pareto_front]
        trials, _ = self.storage.list_trials(self.study_id, 10**9, "")
        for trial in trials:
            self._next_id = max(self._next_id, trial.trial_id + 1)
            if trial.state == TrialState.FAILED:
                self._failures += 1
            if trial.state.terminal:
                continue
            self._epochs[trial.trial_id] = trial.epochs_completed
            self._retries[trial.trial_id] = trial.retries
            self._reported[trial.trial_id] = int(reported.get(str(trial.trial_id), 0))
            replayed_stop = False
            for epoch in trial.metrics:  # reports the stopper had not journaled yet
                replayed_stop = self._tell_stopper(trial.trial_id, epoch.epoch, epoch.values) or replayed_stop
            if trial.pruned_epoch or replayed_stop:
                self._end_pruned_before_crash(trial)
                continue
            self._tasks[trial.trial_id] = self._task(trial.trial_id, trial.config, trial.checkpoint)
            self._requeued.append((trial.trial_id, self._units))
        if trials or study.best_trial is not None:
            log.info(
                "study %s resumes: %d trials stored, %d to run again from their checkpoints",
                self.study_id,
                len(trials),
                len(self._requeued),
            )

    def _end_pruned_before_crash(self, trial: TrialRecord) -> None:
        """A trial the early stopper had pruned when the server died ends PRUNED now, with the
        metrics it had: it is not trained on (and cannot become the best trial)."""
        log.info(
            "study %s: trial %s was pruned at epoch %s before the restart; it ends PRUNED",
            self.study_id,
            trial.trial_id,
            trial.pruned_epoch or trial.epochs_completed,
        )
        self._stop_reason[trial.trial_id] = "pruned"
        result = {"final_metrics": trial.final_metrics, "stopped": True}
        self._finish_trial(trial.trial_id, Ending("done", result=result))
        self._stop_reason.pop(trial.trial_id, None)

    def _acquire(self, units: float) -> Allocation | None:
        need_gb = self._memory_gb or MEMORY_MARGIN * self._measured_gb
        return self.scheduler.try_acquire(self.study_id, units, self._wake, self._priority, int(need_gb * 2**30))

    def _restart_requeued(self) -> None:
        """Trials to run again — out of GPU memory beside others (with a larger share), crashed
        (a retry), or interrupted by a server stop — start from their last checkpoint."""
        while self._requeued and not self._cancelled.is_set() and not self._halted.is_set():
            trial_id, units = self._requeued[0]
            alloc = self._acquire(units)
            if alloc is None:
                return
            self._requeued.pop(0)
            alloc.holder = f"{self.study_id}/{trial_id}"
            self._running[trial_id] = alloc
            self.storage.update_trial(self.study_id, trial_id, device=alloc.name)
            task = replace(self._tasks[trial_id], placement=placement(alloc, self._memory_gb), resume=True)
            self._submit(Train(trial_id, task), alloc)

    def _max_epochs(self) -> int:
        """The most epochs any trial may train: training.epochs, or the top of its searched range."""
        most = int(self.plan.spec["training"]["epochs"])
        for param in self.plan.space:
            if param.name == "training.epochs":
                domain = param.domain
                most = max(int(v) for v in domain.values) if isinstance(domain, Choice) else int(domain.high)
        return most

    def _may_start(self, next_id: int, exhausted: bool, deadline: float | None) -> bool:
        plan = self.plan
        return (
            not self._cancelled.is_set()
            and not self._halted.is_set()
            and not exhausted
            and next_id <= plan.max_trials
            and len(self._running) + len(self._requeued) < plan.max_concurrent_trials
            and (deadline is None or time.time() < deadline)
            and not self._failures_exceeded()
        )

    def _failures_exceeded(self) -> bool:
        return bool(self.plan.max_failures) and self._failures > self.plan.max_failures

    def _stop_trial(self, trial_id: int, reason: str) -> None:
        if trial_id in self._stop_reason:
            return
        self._stop_reason[trial_id] = reason
        self._stop_time[trial_id] = time.monotonic()
        for worker in self._running[trial_id].workers:
            worker.stop(trial_id)

    def _stop_all(self, reason: str) -> None:
        for trial_id in list(self._running):
            self._stop_trial(trial_id, reason)

    def _police(self) -> None:
        """Kills the workers of trials that ignore a stop request or stopped sending heartbeats."""
        now = time.monotonic()
        for trial_id, alloc in self._running.items():
            if trial_id in self._killed:
                continue
            asked = self._stop_time.get(trial_id)
            if asked is not None and now - asked > STOP_GRACE_S:
                reason = "stopped"
            elif self.heartbeat_timeout and any(w.silent_for() > self.heartbeat_timeout for w in alloc.workers):
                reason = "timeout"
                log.warning(
                    "trial %s/%s sent no heartbeat for %.0f s; killing its worker",
                    self.study_id,
                    trial_id,
                    self.heartbeat_timeout,
                )
            else:
                continue
            self._killed.add(trial_id)
            for worker in alloc.workers:
                worker.kill(reason)

    def _task(self, trial_id: int, config: dict[str, Any], checkpoint: str) -> TrainTask:
        settings = resolve(self.plan.spec, config, self.registry)
        return TrainTask(trial_id, settings, checkpoint, self.plan.objective)

    def _start_trial(self, trial_id: int, config: dict[str, Any], alloc: Allocation) -> None:
        # The store keeps the checkpoint's path relative to its checkpoint directory, so the data
        # directory may be moved; `checkpoint_path` says where it lies now.
        checkpoint_key = f"{self.study_id}/trial-{trial_id}/checkpoint.pt"
        task = self._task(trial_id, config, self.storage.checkpoint_path(checkpoint_key))
        alloc.holder = f"{self.study_id}/{trial_id}"
        self._running[trial_id] = alloc
        self._epochs[trial_id] = 0
        self._reported[trial_id] = 0
        with self.storage.atomic():
            self.storage.create_trial(self.study_id, trial_id, config, alloc.name)
            trial = self.storage.update_trial(self.study_id, trial_id, checkpoint=checkpoint_key)
            self._journal()
            self._publish("trial_started", {"trial": trial_to_dict(trial)})
        self.registry.on_trial_start(self.study_id, trial_id, dict(config))
        self._tasks[trial_id] = task
        self._submit(Train(trial_id, replace(task, placement=placement(alloc, self._memory_gb))), alloc)

    def _submit(self, request: Train, alloc: Allocation) -> None:
        """Sends the task to every rank; ranks after the first report only how they end."""
        key, world = request.key, len(alloc.workers)
        port = free_port() if world > 1 else 0
        self._peers_pending[key] = world - 1
        for rank, worker in enumerate(alloc.workers):
            ranked = replace(request, task=replace(request.task, rank=Rank(rank, world, port)))
            sink = self._inbox.put if rank == 0 else (lambda msg, key=key: self._inbox.put(Peer(key, msg)))
            worker.submit(ranked, sink)

    # ---- messages from workers ----

    def _handle(self, msg: Inbox) -> None:
        match msg:
            case Wake():
                return
            case _ if msg.key not in self._running:
                return  # a late message of a trial already ended (e.g. another rank of a failed one)
            case Peer(key=trial_id, message=peer):
                folded = self._peer_message(trial_id, peer)
                if folded is not None:
                    self._on_message(folded)
            case Done(key=trial_id, result=result) if self._peers_pending.get(trial_id):
                self._rank0_result[trial_id] = result
            case _:
                self._on_message(msg)

    def _on_message(self, msg: TaskMessage) -> None:
        """An epoch or the end of a running trial (of its first rank, or folded from all ranks)."""
        match msg:
            case Epoch(key=trial_id, epoch=epoch, metrics=metrics):
                self._on_epoch(trial_id, epoch, metrics)
            case Done() | Error() | Infeasible() | Crashed():
                self._on_end(msg.key, ending_of(msg))

    def _tell_stopper(self, trial_id: int, epoch: int, metrics: dict[str, float]) -> bool:
        """Reports an epoch to the early stopper once; True when it says STOP."""
        value = metrics.get(self.plan.objective.metric)
        if self._stopper is None or value is None or epoch <= self._reported.get(trial_id, 0):
            return False
        self._reported[trial_id] = epoch
        return self._stopper.report(trial_id, epoch, value) == Decision.STOP

    def _on_epoch(self, trial_id: int, epoch: int, metrics: dict[str, float]) -> None:
        if epoch <= self._epochs.get(trial_id, 0):
            return  # a resumed run re-reports the epoch of its checkpoint; this one is stored already
        self._epochs[trial_id] = epoch
        stop = trial_id not in self._stop_reason and self._tell_stopper(trial_id, epoch, metrics)
        with self.storage.atomic():  # the stopper's verdict is stored with the epoch it judged
            self.storage.add_epoch(self.study_id, trial_id, epoch, metrics)
            if stop:
                self.storage.update_trial(self.study_id, trial_id, pruned_epoch=epoch)
            self._publish("trial_progress", {"trial_id": trial_id, "epoch": epoch, "metrics": metrics})
        self.registry.on_trial_report(self.study_id, trial_id, epoch, dict(metrics))
        self._measured_gb = max(self._measured_gb, float(metrics.get("peak_memory_gb", 0.0)))
        if stop:
            self._stop_trial(trial_id, "pruned")

    def _peer_message(self, trial_id: int, msg: TaskMessage) -> TaskMessage | None:
        """Folds another rank's message into the trial: its failure fails the trial; the last
        rank to finish releases rank 0's result; None when the trial learns nothing yet."""
        match msg:
            case Error(traceback=text):
                return replace(msg, key=trial_id, traceback=f"rank of a distributed trial failed: {text}")
            case Crashed(why=text):
                return replace(msg, key=trial_id, why=f"rank of a distributed trial failed: {text}")
            case Infeasible():
                return msg
            case Done():
                self._peers_pending[trial_id] -= 1
                if self._peers_pending[trial_id] == 0 and trial_id in self._rank0_result:
                    return Done(trial_id, self._rank0_result[trial_id])
        return None

    def _on_end(self, trial_id: int, ending: Ending) -> None:
        alloc = self._running.pop(trial_id)
        self._peers_pending.pop(trial_id, None)
        self._rank0_result.pop(trial_id, None)
        self._killed.discard(trial_id)
        stop = self._stop_reason.get(trial_id)
        if ending.kind != "done" and len(alloc.workers) > 1:
            for worker in alloc.workers:  # ranks still inside a collective would wait forever
                worker.kill()
        self.scheduler.release(alloc)
        decision = decide(
            ending,
            stop_reason=stop,
            share=alloc.share,
            units=alloc.units,
            retries=self._retries.get(trial_id, 0),
            max_retries=self.plan.trial_retries,
            kept_metrics=lambda: self.storage.get_trial(self.study_id, trial_id).final_metrics,
        )
        match decision:
            case RunAgain(units=units, retry=False):
                log.warning("trial %s ran out of GPU memory beside others; re-queued with more room", trial_id)
                self._requeued.append((trial_id, units))
            case RunAgain(units=units, retry=True):
                self._retries[trial_id] = self._retries.get(trial_id, 0) + 1
                log.warning(
                    "trial %s/%s: %s; retry %d of %d from its last checkpoint",
                    self.study_id,
                    trial_id,
                    ending.error,
                    self._retries[trial_id],
                    self.plan.trial_retries,
                )
                self.storage.update_trial(self.study_id, trial_id, retries=self._retries[trial_id])
                self._requeued.append((trial_id, units))
            case Finish(ending=final):
                self._finish_trial(trial_id, final)

    def _finish_trial(self, trial_id: int, ending: Ending) -> None:
        """Stores the trial's end with the search state and its events, in one transaction."""
        state = final_state(ending, self._stop_reason.get(trial_id))
        fields: dict[str, Any] = {"end_time": time.time(), "state": state}
        if ending.kind == "done":
            fields.update(self._objective_fields(ending.result["final_metrics"]))
        elif ending.kind == "infeasible":
            fields.update(error=ending.error)
        else:
            self._failures += 1
            fields.update(ending.failure_fields())
        value = fields.get("objective_value") if state in (TrialState.COMPLETED, TrialState.PRUNED) else None
        self._searcher.observe(trial_id, state.value, value)
        if self._stopper is not None:
            self._stopper.complete(trial_id, value)
        self._epochs.pop(trial_id, None)
        self._reported.pop(trial_id, None)
        with self.storage.atomic():
            trial = self.storage.update_trial(self.study_id, trial_id, **fields)
            self._journal()
            self._publish("trial_finished", {"trial": trial_to_dict(trial)})
            if trial.state == TrialState.COMPLETED and len(self.plan.objectives) > 1:
                self._update_pareto(trial)
            if trial.state == TrialState.COMPLETED and trial.objective_value is not None:
                best_value = self._best.objective_value if self._best is not None else None
                if best_value is None or self.plan.objective.better(trial.objective_value, best_value):
                    self._best = trial
                    self.storage.update_study(self.study_id, best_trial_id=trial_id)
                    self._publish("best_trial_changed", {"trial": trial_to_dict(trial)})
        self.registry.on_trial_end(self.study_id, trial_id, trial.state.value, dict(trial.final_metrics))

    def _objective_fields(self, metrics: dict[str, float]) -> dict[str, Any]:
        values = [metrics[o.metric] for o in self.plan.objectives if o.metric in metrics]
        return {
            "objective_value": metrics.get(self.plan.objective.metric),
            "objective_values": values if len(self.plan.objectives) > 1 else [],
        }

    def _update_pareto(self, trial: TrialRecord) -> None:
        """Keeps the completed trials that no other completed trial dominates."""
        if len(trial.objective_values) != len(self.plan.objectives):
            return
        self._front.append((trial.trial_id, trial.objective_values))
        self._front = pareto_front(self._front, [o.mode for o in self.plan.objectives])
        self.storage.update_study(self.study_id, pareto=[trial_id for trial_id, _ in self._front])

    # ---- the end ----

    def _finish(self) -> None:
        now = time.time()
        self.scheduler.withdraw(self.study_id)
        if self._halted.is_set():
            return
        if self._cancelled.is_set():
            self._set_state(StudyState.CANCELLED, end_time=now)
        elif self._failures_exceeded():
            self._set_state(
                StudyState.FAILED,
                error=f"{self._failures} trials failed (budget.max_failures is {self.plan.max_failures})",
                end_time=now,
            )
        elif self._best is None:
            self._set_state(StudyState.FAILED, error=f"no trial completed ({self._failures} failed)", end_time=now)
        else:
            test_metrics = self._evaluate_best()
            if test_metrics is None:
                return
            self._set_state(StudyState.COMPLETED, test_metrics=test_metrics, end_time=time.time())

    def _evaluate_best(self) -> dict[str, float] | None:
        """Runs the best trial's checkpoint on the test split in a worker; None when cancelled meanwhile."""
        best = self._best
        assert best is not None
        while True:
            alloc = self._acquire(min(self._units, 1.0))
            if alloc is not None:
                break
            if self._cancelled.is_set():
                self._set_state(StudyState.CANCELLED, end_time=time.time())
                return None
            if self._halted.is_set():
                return None
            self._next_message()
        try:
            alloc.holder = f"{self.study_id}/test"
            settings = resolve(self.plan.spec, best.config, self.registry)
            task = EvaluateTask(settings, best.checkpoint, placement(alloc, self._memory_gb))
            worker = alloc.workers[0]
            worker.submit(Evaluate("test", task), self._inbox.put)
            while not self._halted.is_set():
                if self._cancelled.is_set():
                    self._drop_evaluation(worker)
                    self._set_state(StudyState.CANCELLED, end_time=time.time())
                    return None
                if self.heartbeat_timeout and worker.silent_for() > self.heartbeat_timeout:
                    worker.kill("timeout")
                match self._next_message():
                    case Done(key="test", result=result):
                        return dict(result)
                    case (
                        Error(key="test", traceback=text)
                        | Crashed(key="test", why=text)
                        | Infeasible(key="test", reason=text)
                    ):  # an evaluation that cannot run ends the study: waiting would never end
                        self._set_state(
                            StudyState.FAILED,
                            error=f"test evaluation of trial {best.trial_id} failed: {text}",
                            end_time=time.time(),
                        )
                        return None
            return None
        finally:
            self.scheduler.withdraw(self.study_id)
            self.scheduler.release(alloc)

    def _drop_evaluation(self, worker: Any) -> None:
        """The test score is no longer wanted: let a nearly done evaluation end, else kill it."""
        until = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < until:
            match self._next_message():
                case Done(key="test") | Error(key="test") | Crashed(key="test") | Infeasible(key="test"):
                    return
        worker.kill("stopped")

    def _next_message(self) -> Inbox | None:
        try:
            return self._inbox.get(timeout=POLL_S)
        except queue.Empty:
            return None

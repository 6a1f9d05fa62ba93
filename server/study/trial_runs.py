"""What the study runner holds per task it runs: one record per unfinished trial, one for the test
evaluation, instead of parallel dicts keyed by trial id."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tuneyard.server.execution.messages import MemberKey, Placement, TrainTask
from tuneyard.server.execution.scheduler import Allocation

log = logging.getLogger(__name__)


def placement(alloc: Allocation, memory_gb: float) -> Placement:
    """What a worker needs to know of its share: threads to use and a GPU memory cap."""
    device = alloc.devices[0]
    memory_fraction = 0.0
    if device.kind == "cuda" and alloc.share < 1:
        memory_fraction = alloc.share
        if memory_gb and device.memory_bytes:
            memory_fraction = min(1.0, memory_gb * 2**30 / device.memory_bytes)
    return Placement(threads=max(1, int(device.threads * alloc.share)), memory_fraction=memory_fraction)


@dataclass(kw_only=True)
class TaskRun:
    """A task on its allocation, as the runner polices it: asked to stop when, killed yet."""

    alloc: Allocation | None = None  # None while waiting for a slot
    stop_reason: str | None = None  # why it was asked to stop: cancelled, deadline, pruned, halted
    stop_time: float | None = None  # monotonic time of that request
    killed: bool = False

    def asked_to_stop(self, reason: str, now: float) -> bool:
        """Notes a stop request; False when one was made already."""
        if self.stop_reason is not None:
            return False
        self.stop_reason, self.stop_time = reason, now
        return True


@dataclass(kw_only=True)
class TrialRun(TaskRun):
    """An unfinished trial: running, or waiting to run again from its checkpoint."""

    trial_id: int
    task: TrainTask
    units: float  # of a device it asks for (doubled after an out-of-memory beside other trials)
    config: dict[str, Any] = field(default_factory=dict)  # its searched values now (its last PBT exploit's)
    epochs: int = 0  # the last epoch stored
    retries: int = 0
    paused_at: int = 0  # PBT: the decision epoch its run ended at, to be judged when it runs again
    group: str = ""  # the fused group it trains in now (`GroupRun.key`); "" when solo or waiting
    solo: bool = False  # a group it was in could not train fused: it runs solo from now on


@dataclass(kw_only=True)
class GroupRun(TaskRun):
    """A fused group of trials (`resources.fuse`) training as one task on one allocation; its
    members' `TrialRun`s hold no allocation of their own while it runs."""

    key: str
    members: list[int]
    resume: bool = False


@dataclass(kw_only=True)
class EvaluationRun(TaskRun):
    """The best trial's checkpoint scored on the test split, the study's last task."""

    trial_id: int
    error: str = ""  # why it failed, once it has
    test_metrics: dict[str, float] | None = field(default=None)


TEST = "test"  # the key of the test evaluation's task (trials' keys are their ids)
STOP_GRACE_S = 3.0  # a task told to stop that is still running this long after has its worker killed


class TaskBoard:
    """A study's tasks: its unfinished trials (running, or waiting in order to run again) and the test
    evaluation. It asks them to stop and polices them: a worker that ignores a stop request for
    STOP_GRACE_S, or sends no heartbeat for `heartbeat_timeout`, is killed."""

    def __init__(self, study_id: str, heartbeat_timeout: float) -> None:
        self.study_id, self.heartbeat_timeout = study_id, heartbeat_timeout
        self.trials: dict[int, TrialRun] = {}
        self.groups: dict[str, GroupRun] = {}  # fused groups, by key, while they hold an allocation
        self.requeued: list[int] = []
        self.evaluation: EvaluationRun | None = None

    def running(self) -> Iterator[tuple[Any, TaskRun]]:
        """Every task that holds an allocation, with its key: running trials, fused groups and the test
        evaluation."""
        for trial_id, run in self.trials.items():
            if run.alloc is not None:
                yield trial_id, run
        for key, group in self.groups.items():
            if group.alloc is not None:
                yield key, group
        if self.evaluation is not None and self.evaluation.alloc is not None:
            yield TEST, self.evaluation

    def running_trial(self, key: Any) -> TrialRun | None:
        """The trial a message of task `key` belongs to, while that run holds its allocation."""
        run = self.trials.get(key) if key != TEST else None
        return run if run is not None and run.alloc is not None else None

    def hold(self, key: Any, run: TaskRun, alloc: Allocation) -> None:
        """`run` starts on `alloc`."""
        alloc.holder = f"{self.study_id}/{key}"
        run.alloc, run.stop_reason, run.stop_time, run.killed = alloc, None, None, False

    def drop_requeued(self) -> None:
        """A cancelled study runs no trial again."""
        for trial_id in self.requeued:
            del self.trials[trial_id]
        self.requeued.clear()

    def ask_stop(self, key: Any, run: TaskRun, reason: str) -> None:
        if run.asked_to_stop(reason, time.monotonic()) and run.alloc is not None:
            run.alloc.gang.stop(key)

    def ask_stop_trial(self, run: TrialRun, reason: str) -> None:
        """Asks one trial to stop: its own task, or its member of the fused group it trains in."""
        group = self.groups.get(run.group) if run.group else None
        if group is None:
            self.ask_stop(run.trial_id, run, reason)
        elif run.asked_to_stop(reason, time.monotonic()) and group.alloc is not None:
            group.alloc.gang.stop(MemberKey(group.key, run.trial_id))

    def stop_trials(self, reason: str) -> None:
        for key, run in list(self.running()):
            if key != TEST:
                self.ask_stop(key, run, reason)

    def stop_all(self, reason: str) -> None:
        for key, run in list(self.running()):
            self.ask_stop(key, run, reason)

    def police(self) -> None:
        """Kills the workers of tasks that ignore a stop request or stopped sending heartbeats."""
        now = time.monotonic()
        for key, run in self.running():
            assert run.alloc is not None
            if run.killed:
                continue
            if run.stop_time is not None and run.alloc.gang.starting:
                run.stop_time = now  # the grace starts once the worker can hear the stop
                continue
            if run.stop_time is not None and now - run.stop_time > STOP_GRACE_S:
                reason = "stopped"
            elif self.heartbeat_timeout and run.alloc.gang.silent_for() > self.heartbeat_timeout:
                reason = "timeout"
                log.warning(
                    "task %s/%s sent no heartbeat for %.0f s; killing its worker",
                    self.study_id,
                    key,
                    self.heartbeat_timeout,
                )
            else:
                continue
            run.killed = True
            run.alloc.gang.kill(reason)

"""The seam inside a worker process: what runs a task once `main` has received it.

`main.run_task` drives any `TaskTrainer`: the built-in image-classification `trainer.Trainer` today;
a user's training function (a trainable) or a fused group of trials is another implementation,
chosen in `main.make_trainer`, with the worker protocol and the study runner unchanged. This module
imports no torch, so the server may type against it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from tuneyard.server.execution.messages import EvaluateTask, TrainGroupTask, TrainTask

Report = Callable[[int, dict[str, float]], None]  # (epoch, validation metrics), once per finished epoch
ShouldStop = Callable[[], bool]  # polled at batch boundaries: the server asked this task to end
GroupReport = Callable[[int, int, dict[str, float]], None]  # (trial_id, epoch, metrics) of a fused group's member
GroupShouldStop = Callable[[int], bool]  # (trial_id): the server asked this member, or the whole group, to end


class TaskTrainer(Protocol):
    """Trains and evaluates trials in one worker process, one task at a time."""

    heartbeat: Callable[[], None]  # set by the worker; called while a task makes progress

    def train(self, task: TrainTask, report: Report, should_stop: ShouldStop) -> dict[str, Any]:
        """Runs the trial's epochs from `task.checkpoint` (when `task.resume`), calling `report` after
        each; returns {"final_metrics", "epochs", "stopped", ...}. Raises `plugins.api.Infeasible` for
        a configuration that cannot run."""
        ...

    def evaluate(self, task: EvaluateTask) -> dict[str, float]:
        """Scores the checkpoint on the test split."""
        ...


@runtime_checkable
class GroupTaskTrainer(Protocol):
    """A `TaskTrainer` that also trains fused groups of trials (issue 17)."""

    def train_group(self, group: TrainGroupTask, report: GroupReport, should_stop: GroupShouldStop) -> dict[str, Any]:
        """{"members": {trial_id: result}} (a member's result as `train`'s, or {"error": ...} for one that
        diverged), or {"refused": why} when the members cannot train fused (the server runs them solo)."""
        ...

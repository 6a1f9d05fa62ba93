"""The seam inside a worker process: what runs a task once `main` has received it.

`main.run_task` drives any `TaskTrainer`: the built-in image-classification `trainer.Trainer` today;
a user's training function (a trainable) or a fused group of trials is another implementation,
chosen in `main.make_trainer`, with the worker protocol and the study runner unchanged. This module
imports no torch, so the server may type against it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from tuneyard.server.execution.messages import EvaluateTask, TrainTask

Report = Callable[[int, dict[str, float]], None]  # (epoch, validation metrics), once per finished epoch
ShouldStop = Callable[[], bool]  # polled at batch boundaries: the server asked this task to end


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

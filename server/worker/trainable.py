"""Runs a user's trainable (`tuneyard_register_trainables`) as a trial, inside a worker process.

The trainable is the user's own training loop; this module gives it a `TrialContext` and turns
what it does into the worker protocol the built-in trainer speaks: each `trial.report(step,
metrics)` becomes an `Epoch` message (so the runner stores it, asks the early stopper and counts a
heartbeat), a stop the server asked for (pruned, cancelled, past the deadline) becomes `Pruned`
at the next report, and its return value becomes the trial's final metrics. The trial's folder
(`checkpoint_dir`) is the one the built-in trainer keeps its checkpoint in, so it survives
retries and server restarts alike.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneyard.plugins.api import Pruned
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.execution.messages import EvaluateTask, TrainTask
from tuneyard.server.execution.snapshots import decision_epoch, take_snapshot
from tuneyard.server.study.settings import TrainableSettings
from tuneyard.server.worker.protocol import Report, ShouldStop


class TrainableError(Exception):
    """What the trainable did that a trial cannot accept: a bad report, a bad return value, or no
    report of the objective. Its message is the trial's error."""


def clean_metrics(metrics: Any, what: str) -> dict[str, float]:
    """`metrics` as {name: finite float}; TrainableError naming the first bad entry."""
    if not isinstance(metrics, Mapping):
        raise TrainableError(f"{what} must be a dict of metric name to number, got {type(metrics).__name__}")
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name:
            raise TrainableError(f"{what}: a metric name must be a non-empty string, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
            raise TrainableError(f"{what}: metric {name!r} must be a number, got {type(value).__name__}")
        number = float(value)  # a 0-d tensor or numpy scalar too
        if not math.isfinite(number):
            raise TrainableError(f"{what}: metric {name!r} is {number}")
        out[name] = number
    return out


@dataclass
class TrialHandle:
    """The `TrialContext` a trainable receives (see `plugins.api.TrialContext`), and what it reported."""

    device: str
    threads: int
    seed: int
    study_id: str
    trial_id: int
    data_root: str
    checkpoint_dir: Path
    resumed: bool
    epochs: int  # the most steps it may report
    send: Report
    stop_requested: ShouldStop
    explored_at: int = 0  # the step of its last PBT exploit (0: none): its folder held the source's files then
    task: TrainTask | None = None  # what it runs (PBT: `decide_every`)
    last: dict[str, float] = field(default_factory=dict)  # the last step's metrics
    steps: int = 0  # the last step reported
    stopped: bool = False  # a report raised Pruned

    def report(self, step: int, metrics: dict[str, float]) -> None:
        """Stores the step's metrics and asks the early stopper; `Pruned` when the trial must end."""
        if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= self.epochs:
            why = f"trial.report: step must be an int from 1 to training.epochs ({self.epochs}), got {step!r}"
            raise TrainableError(why)
        clean = clean_metrics(metrics, "trial.report")
        if self.stop_requested():  # a verdict on an earlier step, a cancel, the deadline: this step is not kept
            self.stopped = True
            raise Pruned(f"trial {self.trial_id} was asked to stop before step {step}")
        decides = self.task is not None and decision_epoch(self.task, step, self.epochs)
        if decides:  # PBT: the step's files, before the step counts
            take_snapshot(self.checkpoint_dir, step, link=False)
        self.send(step, clean)
        self.last, self.steps = clean, step
        if decides:  # the run ends here; the server judges the trial and runs it again (`resumed`)
            self.stopped = True
            raise Pruned(f"trial {self.trial_id} waits at step {step} for population-based training")


class TrainableRunner:
    """Runs trials whose settings are a trainable's (`TrainableSettings`); a `TaskTrainer`."""

    def __init__(self, registry: PluginRegistry, device: str, threads: int, data_root: str = "") -> None:
        self.registry = registry
        self.device = device
        self.threads = threads
        self.data_root = data_root
        self.heartbeat: Callable[[], None] = lambda: None

    def _handle(self, task: TrainTask, report: Report, should_stop: ShouldStop) -> TrialHandle:
        settings = task.settings
        assert isinstance(settings, TrainableSettings)
        folder = Path(task.checkpoint).parent
        folder.mkdir(parents=True, exist_ok=True)
        return TrialHandle(
            device=self.device,
            threads=task.placement.threads or self.threads,
            seed=settings.seed,
            study_id=task.study_id,
            trial_id=task.trial_id,
            data_root=self.data_root,
            checkpoint_dir=folder,
            resumed=task.resume,
            epochs=settings.epochs,
            explored_at=task.explored_at,
            task=task,
            send=report,
            stop_requested=should_stop,
        )

    def train(self, task: TrainTask, report: Report, should_stop: ShouldStop) -> dict[str, Any]:
        """Calls the trainable with its options, seeded and on its share of the device."""
        import torch

        settings = task.settings
        assert isinstance(settings, TrainableSettings)
        trial = self._handle(task, report, should_stop)
        torch.set_num_threads(trial.threads)
        if self.device.startswith("cuda"):  # a packed trial keeps to its share of the GPU
            torch.cuda.set_per_process_memory_fraction(task.placement.memory_fraction or 1.0, self.device)
        random.seed(settings.seed)
        torch.manual_seed(settings.seed)
        component = settings.trainable
        try:
            returned = self.registry.create(
                "trainable", component.name, component.options, trial=trial, epochs=settings.epochs
            )
        except Pruned:  # from a report (trial.stopped is set), or raised by the trainable on its own
            returned = None
        final = trial.last if returned is None else clean_metrics(returned, f"trainable {component.name!r} returned")
        if task.objective.metric not in final and not trial.stopped:
            reported = ", ".join(sorted(final)) or "nothing"
            raise TrainableError(
                f"trainable {component.name!r} never reported the objective metric {task.objective.metric!r} "
                f"(its final metrics: {reported})"
            )
        return {"final_metrics": final, "epochs": trial.steps, "stopped": trial.stopped}

    def evaluate(self, task: EvaluateTask) -> dict[str, float]:
        raise TypeError("a trainable's trial has no test evaluation")

"""A task's loss and metrics over a pass of batches: the task built for a trial, and its totals.

The built-in trainer never looks at a task's name: it builds the dataset's task plugin here and
adds up what the task sums per batch. The sums stay tensors on the device, so a pass costs one
synchronisation per sum at its end (`TaskTotals.read`), not one per batch.

Imported only in worker processes (it imports torch).
"""

from __future__ import annotations

from typing import cast

import torch

from tuneyard.plugins.api import DatasetSplits, Task
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.study.settings import TrialSettings


def build_task(
    registry: PluginRegistry, settings: TrialSettings, splits: DatasetSplits, label_smoothing: float = 0.0
) -> Task:
    """The trial's task object, with its options; the dataset's splits must be of the task it declares.

    `label_smoothing` is the training loss's (a task that takes none ignores it); measurements use a
    task built without it, so a split's loss is the plain loss, however the trial trained.
    """
    if splits.task != settings.task.name:
        raise ValueError(
            f"dataset {settings.dataset.name!r} returned {splits.task} targets but declares task {settings.task.name!r}"
        )
    made = registry.create(
        "task",
        settings.task.name,
        settings.task.options,
        num_classes=splits.num_classes,
        label_smoothing=label_smoothing,
    )
    return cast(Task, made)


class TaskTotals:
    """The summed loss and the task's sums over a pass, on the device, and the metrics they give."""

    def __init__(self, task: Task, device: torch.device) -> None:
        self.task = task
        self.loss = torch.zeros((), device=device)
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, loss: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Adds one batch: `loss` is its mean loss; `targets` are the dataset's (never soft labels)."""
        n = len(targets)
        self.loss += loss.detach().float() * n
        for key, value in self.task.sums(outputs.detach(), targets).items():
            value = value.detach()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.count += n

    def read(self) -> dict[str, float]:
        """`loss` (the mean per sample) and the task's metrics; waits for the device."""
        totals = {key: float(value.item()) for key, value in self.sums.items()}
        loss = float(self.loss.item()) / max(self.count, 1)
        return {"loss": loss, **self.task.metrics(totals, self.count)}


def prefixed(split: str, values: dict[str, float]) -> dict[str, float]:
    """`loss` and the task's metrics as a split reports them: `val_loss`, `val_accuracy`, ..."""
    return {f"{split}_{name}": value for name, value in values.items()}

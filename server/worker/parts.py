"""What one trial of the built-in trainer runs with: its parts, built once per run by the trainer.

A record of torch objects (so not frozen) with the few things asked of the parts as a whole: which
weights are evaluated, which parts a resume restores, how an epoch schedule steps.

Imported only in worker processes (it imports torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from tuneyard.plugins.api import Task
from tuneyard.server.study.settings import TrainingSettings
from tuneyard.server.worker.batches import Batches
from tuneyard.server.worker.ranks import Ranks

BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TrialParts:
    """What one trial trains with, built once per run (torch objects, so not a frozen record)."""

    training: TrainingSettings
    core: nn.Module  # the model itself
    model: nn.Module  # what the batches go through: `core`, or its DistributedDataParallel wrapper
    optimizer: Any
    scheduler: Any
    interval: str  # when the schedule steps: "epoch" or "batch"
    monitor: str  # the metric an epoch schedule steps on, "" for none
    ema: AveragedModel | None
    scaler: torch.amp.GradScaler | None
    task: Task  # the training loss (label smoothing included) and the train split's metrics
    measured: Task  # the same task without label smoothing: the val split's loss and metrics
    batch_augs: list[BatchTransform]
    train_batches: Batches
    val_batches: Batches

    @property
    def evaluated(self) -> nn.Module:
        """The weights validation, the checkpoint and a test run use: the average when averaging."""
        return self.ema.module if self.ema is not None else self.core

    def stateful(self) -> dict[str, Any]:
        """The parts whose state a resume restores (None where the trial has no such part)."""
        return {
            "model": self.core,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "ema": self.ema,
            "scaler": self.scaler,
        }

    def schedule_epoch(self, ranks: Ranks, metrics: dict[str, float]) -> None:
        """Steps an epoch schedule; a monitored one on rank 0's metric (the other ranks have none)."""
        if self.scheduler is None or self.interval != "epoch":
            return
        if self.monitor:
            self.scheduler.step(ranks.share(metrics[self.monitor] if ranks.leader else 0.0))
        else:
            self.scheduler.step()

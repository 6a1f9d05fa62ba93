"""Built-in learning-rate schedulers (torch.optim.lr_scheduler); the trainer steps them once per epoch."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LRScheduler

from tuneyard.plugins import hookimpl


def constant(optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int) -> LRScheduler:
    """Keep the optimizer's learning rate unchanged."""
    return ConstantLR(optimizer, factor=1.0, total_iters=0)


def cosine(optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int, min_lr: float = 0.0) -> LRScheduler:
    """Cosine annealing from the initial learning rate down to min_lr over the trial's epochs.

    Args:
        min_lr: learning rate reached at the last epoch.
    """
    if min_lr < 0:
        raise ValueError(f"min_lr must be >= 0, got {min_lr}")
    return CosineAnnealingLR(optimizer, T_max=max(1, epochs), eta_min=min_lr)


@hookimpl
def tuneyard_register_lr_schedulers(register: Any) -> None:
    register("constant", constant)
    register("cosine", cosine)

"""Built-in learning-rate schedulers (torch.optim.lr_scheduler).

Each is registered with its stepping granularity, so the trainer never special-cases names:

===========================  ========  =========  =========================================
name                         interval  monitor    schedule
===========================  ========  =========  =========================================
``constant``                 epoch                the optimizer's lr throughout
``step``                     epoch                x gamma every ``step_size`` epochs
``multistep``                epoch                x gamma at each epoch in ``milestones``
``cosine``                   epoch                cosine from lr to ``min_lr`` over the epochs
``onecycle``                 batch                OneCycleLR up to ``max_lr`` and back down
``linear_warmup_cosine``     batch                linear warmup, then cosine to ``min_lr``
``reduce_on_plateau``        epoch     val_loss   x factor after ``patience`` bad epochs
===========================  ========  =========  =========================================

``interval="batch"``: the trainer calls ``scheduler.step()`` after every optimizer step, and
``steps_per_epoch`` is the number of optimizer steps in one epoch; ``interval="epoch"``: after
every epoch. With a ``monitor``, the call is ``scheduler.step(metrics[monitor])``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, cast

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import Bounds

if TYPE_CHECKING:  # the server reads these factories' schemas without importing torch; workers call them
    import torch
    from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau


def constant(optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int) -> LRScheduler:
    """Keep the optimizer's learning rate unchanged."""
    from torch.optim.lr_scheduler import ConstantLR

    return ConstantLR(optimizer, factor=1.0, total_iters=0)


def step(
    optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int, step_size: int = 10, gamma: float = 0.1
) -> LRScheduler:
    """Multiply the learning rate by gamma every step_size epochs.

    Args:
        step_size: epochs between two drops of the learning rate.
        gamma: factor applied to the learning rate at each drop.
    """
    from torch.optim.lr_scheduler import StepLR

    if step_size < 1:
        raise ValueError(f"step_size must be >= 1, got {step_size}")
    return StepLR(optimizer, step_size=step_size, gamma=gamma)


def multistep(
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    milestones: list[int] | None = None,
    gamma: float = 0.1,
) -> LRScheduler:
    """Multiply the learning rate by gamma at each milestone epoch.

    Args:
        milestones: epochs (counted from 0) from which the next lower learning rate applies, e.g. [30, 60];
            default: half and three quarters of the trial's epochs.
        gamma: factor applied to the learning rate at each milestone.
    """
    from torch.optim.lr_scheduler import MultiStepLR

    if milestones is None:
        milestones = sorted({max(1, epochs // 2), max(1, (3 * epochs) // 4)})
    bad = [m for m in milestones if isinstance(m, bool) or not isinstance(m, (int, float)) or m != int(m) or m < 1]
    if bad:
        raise ValueError(f"milestones must be whole numbers of epochs >= 1, got {bad[0]!r}")
    return MultiStepLR(optimizer, milestones=sorted(int(m) for m in milestones), gamma=gamma)


def cosine(optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int, min_lr: float = 0.0) -> LRScheduler:
    """Cosine annealing, stepped per epoch, from the initial learning rate down to min_lr.

    Args:
        min_lr: learning rate reached at the end of the trial's last epoch.
    """
    from torch.optim.lr_scheduler import CosineAnnealingLR

    if min_lr < 0:
        raise ValueError(f"min_lr must be >= 0, got {min_lr}")
    return CosineAnnealingLR(optimizer, T_max=max(1, epochs), eta_min=min_lr)


def onecycle(
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    max_lr: float | None = None,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    cycle_momentum: bool = False,
) -> LRScheduler:
    """One-cycle policy (OneCycleLR), stepped per batch: warm up to max_lr, then anneal far below the start.

    Args:
        max_lr: peak learning rate; default: the optimizer's lr.
        pct_start: fraction of the trial's steps spent increasing the learning rate.
        anneal_strategy: "cos" or "linear".
        div_factor: the first learning rate is max_lr / div_factor.
        final_div_factor: the last learning rate is max_lr / (div_factor * final_div_factor).
        cycle_momentum: also cycle momentum (or beta1) inversely, between 0.85 and 0.95; needs an
            optimizer with momentum or betas, and replaces its momentum setting.
    """
    from torch.optim.lr_scheduler import OneCycleLR

    if not 0.0 < pct_start < 1.0:
        raise ValueError(f"pct_start must be between 0 and 1, got {pct_start}")
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
    peak = [g["lr"] for g in optimizer.param_groups] if max_lr is None else max_lr
    return OneCycleLR(
        optimizer,
        max_lr=peak,
        total_steps=max(1, epochs * steps_per_epoch),
        pct_start=pct_start,
        anneal_strategy=cast(Literal["cos", "linear"], anneal_strategy),  # checked above
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        cycle_momentum=cycle_momentum,
    )


class WarmupCosine:
    """The factor of `linear_warmup_cosine` at step t: a plain object, so LambdaLR's state_dict keeps it."""

    def __init__(self, warmup_steps: int, total_steps: int, min_factor: float) -> None:
        self.warmup_steps, self.total_steps, self.min_factor = warmup_steps, total_steps, min_factor

    def __call__(self, t: int) -> float:
        if t < self.warmup_steps:
            return (t + 1) / self.warmup_steps
        progress = min(1.0, (t - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def linear_warmup_cosine(
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 1.0,
    min_lr: float = 0.0,
) -> LRScheduler:
    """Linear warmup to the optimizer's lr, then cosine decay to min_lr; stepped per batch.

    Step t (0-based) of the warmup's W steps uses lr * (t + 1) / W; the remaining steps follow a
    cosine from lr down to min_lr, reached after the last step. The learning rate stays at min_lr
    if stepped past the end.

    Args:
        warmup_epochs: length of the warmup in epochs (fractions allowed; 0 disables it).
        min_lr: learning rate reached at the end of the trial's last epoch.
    """
    from torch.optim.lr_scheduler import LambdaLR

    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    if min_lr < 0:
        raise ValueError(f"min_lr must be >= 0, got {min_lr}")
    total = max(1, epochs * steps_per_epoch)
    warmup = min(total, round(warmup_epochs * steps_per_epoch))
    lambdas: list[Callable[[int], float]] = []
    for group in optimizer.param_groups:
        base = group.get("initial_lr", group["lr"])
        lambdas.append(WarmupCosine(warmup, total, min_lr / base if base > 0 else 0.0))
    return LambdaLR(optimizer, lambdas)


def reduce_on_plateau(
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    factor: float = 0.1,
    patience: int = 2,
    threshold: float = 1e-4,
    cooldown: int = 0,
    min_lr: float = 0.0,
) -> ReduceLROnPlateau:
    """Multiply the learning rate by factor when val_loss has not improved for patience epochs.

    Stepped once per epoch with the epoch's validation loss (mode "min").

    Args:
        factor: factor applied to the learning rate at each reduction (< 1).
        patience: epochs without improvement tolerated before reducing; the reduction happens at the
            end of the (patience + 1)-th such epoch.
        threshold: relative improvement below which a new val_loss does not count as better.
        cooldown: epochs to wait after a reduction before counting bad epochs again.
        min_lr: lower bound on the learning rate.
    """
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    if not 0.0 < factor < 1.0:
        raise ValueError(f"factor must be between 0 and 1, got {factor}")
    if patience < 0:
        raise ValueError(f"patience must be >= 0, got {patience}")
    return ReduceLROnPlateau(
        optimizer, mode="min", factor=factor, patience=patience, threshold=threshold, cooldown=cooldown, min_lr=min_lr
    )


@hookimpl
def tuneyard_register_lr_schedulers(register: Any) -> None:
    # A negative factor, learning rate or count has no meaning to these schedules (a negative lr ascends).
    gamma, min_lr, positive = Bounds(ge=0), Bounds(ge=0), Bounds(gt=0)
    register("constant", constant, interval="epoch")
    register("step", step, interval="epoch", bounds={"step_size": Bounds(ge=1), "gamma": gamma})
    register("multistep", multistep, interval="epoch", bounds={"gamma": gamma})
    register("cosine", cosine, interval="epoch", bounds={"min_lr": min_lr})
    register(
        "onecycle",
        onecycle,
        interval="batch",
        bounds={
            "max_lr": positive,
            "pct_start": Bounds(gt=0, lt=1),
            "div_factor": positive,
            "final_div_factor": positive,
        },
    )
    register(
        "linear_warmup_cosine",
        linear_warmup_cosine,
        interval="batch",
        bounds={"warmup_epochs": Bounds(ge=0), "min_lr": min_lr},
    )
    register(
        "reduce_on_plateau",
        reduce_on_plateau,
        interval="epoch",
        monitor="val_loss",
        bounds={
            "factor": Bounds(gt=0, lt=1),
            "patience": Bounds(ge=0),
            "threshold": Bounds(ge=0),
            "cooldown": Bounds(ge=0),
            "min_lr": min_lr,
        },
    )

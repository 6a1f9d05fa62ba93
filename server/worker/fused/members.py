"""What a fused group is made of and what it refuses: the members' own parts, views, and checks.

A group trains K trials whose settings differ only in the fusable ones (`FUSABLE`): the
optimizer's options, label smoothing and the lr schedule's options. Everything else (dataset,
model, task, seed, batch size, epochs, ...) must be equal, so every member sees the same batches.
What the group trainer does not implement is refused with a reason (`settings_problem`), never
run differently from the solo trainer.

Each member keeps a *shadow* optimizer: the plugin's real torch optimizer, built on meta copies of
the member's parameters and never stepped, which its real torch scheduler drives; the group copies
the shadow's lr into the fused optimizer's per-member `lr`. The views (`ModelView`,
`OptimizerView`) give a member's slice of the fused model and optimizer the `state_dict` /
`load_state_dict` of a solo part, so `checkpoints.save_epoch` / `load_resume` write and read the
solo trainer's per-epoch format unchanged.

Imported only in worker processes (it imports torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tuneyard.plugins.api import Task
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.execution.messages import TrainTask
from tuneyard.server.study.settings import FUSABLE, TrialSettings, fusion_key
from tuneyard.server.worker.fused.optimizers import FACTORIES, StackedOptimizer, Unfusable, fuse_optimizer
from tuneyard.server.worker.fused.stack import FusedModel


def _one_problem(task: TrainTask, registry: PluginRegistry, device: torch.device) -> str | None:
    """What this one member asks for that a fused group does not implement."""
    settings = task.settings
    if not isinstance(settings, TrialSettings):
        return "a trainable (a user's training function) cannot train fused"
    training = settings.training
    if task.rank.world_size > 1:
        return "data-parallel trials (world_size > 1) cannot train fused"
    if training.optimizer.name not in FACTORIES:
        return f"optimizer {training.optimizer.name!r} has no fused implementation"
    if training.grad_accumulation_steps != 1:
        return "gradient accumulation is not implemented for fused groups"
    if training.ema_decay:
        return "EMA of weights is not implemented for fused groups"
    if training.precision == "fp16" and device.type == "cuda":
        return "fp16 needs a gradient scaler per member, which fused groups do not implement"
    for aug in training.augmentations:
        if registry.get("augmentation", aug.name).batch_level:
            return f"batch-level augmentation {aug.name!r} is not implemented for fused groups"
    schedule = training.lr_scheduler
    if schedule is not None and schedule.options.get("cycle_momentum"):
        return "a schedule that cycles momentum changes more than the lr, which fused groups do not follow"
    return None


def settings_problem(tasks: Sequence[TrainTask], registry: PluginRegistry, device: torch.device) -> str | None:
    """Why these tasks' settings cannot train as one fused group; None when they can."""
    if not tasks:
        return "no members"
    if len({task.trial_id for task in tasks}) != len(tasks):
        return "two members have the same trial id"
    for index, task in enumerate(tasks):
        problem = _one_problem(task, registry, device)
        if problem is not None:
            return f"member {index} (trial {task.trial_id}): {problem}"
    first = fusion_key(tasks[0].settings, registry)
    for index, task in enumerate(tasks[1:], start=1):
        if fusion_key(task.settings, registry) != first:
            fusable = ", ".join((*FUSABLE, "the model's fusable options"))
            return f"member {index} (trial {task.trial_id}) differs from member 0 outside {fusable}"
        if task.resume != tasks[0].resume:
            return f"member {index} (trial {task.trial_id}) resumes and member 0 does not, or the other way round"
    return None


def meta_copies(model: nn.Module) -> list[torch.Tensor]:
    """Weightless stand-ins for a model's parameters (shapes only): what a shadow optimizer holds."""
    return [torch.empty_like(p, device="meta").requires_grad_(p.requires_grad) for p in model.parameters()]


@dataclass
class Member:
    """One trial of a group: its task, its losses, its shadow optimizer and schedule, its progress."""

    task: TrainTask
    settings: TrialSettings
    loss: Task  # the training loss, with the member's label smoothing
    measured: Task  # the plain task: val loss and metrics
    shadow: torch.optim.Optimizer  # never stepped; the schedule sets its lr
    scheduler: Any
    metrics: dict[str, float] = field(default_factory=dict)
    best: Any = None
    since_best: int = 0

    @property
    def lr(self) -> float:
        return float(self.shadow.param_groups[0]["lr"])


class ModelView:
    """Member `index` of a fused model, with a solo module's state_dict / load_state_dict."""

    def __init__(self, fused: FusedModel, index: int) -> None:
        self.fused, self.index = fused, index

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.fused.member_state_dict(self.index)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.fused.load_member_state_dict(self.index, state)


class OptimizerView:
    """Member `index` of a fused optimizer, with its solo optimizer's state_dict / load_state_dict.

    The shadow's param groups carry what the schedule wrote (``initial_lr``); they are merged in,
    so the saved groups are exactly a solo run's, and a load sets the shadow's groups too.
    """

    def __init__(self, optimizer: StackedOptimizer, index: int, shadow: torch.optim.Optimizer) -> None:
        self.optimizer, self.index, self.shadow = optimizer, index, shadow

    def state_dict(self) -> dict[str, Any]:
        state = self.optimizer.member_state_dict(self.index)
        groups = [
            {**{k: v for k, v in shadow.items() if k != "params"}, **group}
            for group, shadow in zip(state["param_groups"], self.shadow.param_groups, strict=True)
        ]
        return {"state": state["state"], "param_groups": groups}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_member_state_dict(self.index, state)
        for group, saved in zip(self.shadow.param_groups, state["param_groups"], strict=True):
            group.update({k: v for k, v in saved.items() if k != "params"})


@torch.no_grad()
def clip_members(params: dict[str, torch.Tensor], max_norm: float) -> None:
    """`nn.utils.clip_grad_norm_` for each member on its own slice of the stacked gradients."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    if not grads:
        return
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), 2, dim=1) for g in grads], dim=1)
    total = torch.linalg.vector_norm(norms, 2, dim=1)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))


def regroup(
    fused: FusedModel, optimizer: StackedOptimizer, keep: Sequence[int], member_options: list[dict[str, Any]]
) -> tuple[FusedModel, StackedOptimizer]:
    """The stack rebuilt from members `keep` (weights, buffers, optimizer state and lr carried over exactly)."""
    smaller = FusedModel([fused.unstack(i) for i in keep])
    made = fuse_optimizer(optimizer.name, smaller.params, member_options)
    if isinstance(made, Unfusable):  # the same members' options fused before
        raise RuntimeError(made.why)
    for new, old in enumerate(keep):
        made.load_member_state_dict(new, optimizer.member_state_dict(old))
    return smaller, made

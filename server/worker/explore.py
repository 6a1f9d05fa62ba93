"""A trial that resumes from another trial's checkpoint (a PBT exploit, `TrainTask.explored_at`)
loads the source's optimizer and schedule state: this puts its own, explored options over it.

The options are the plugin's keyword arguments, which for torch's optimizers and schedules are the
param-group keys and the schedule's attributes of the same names; options a part does not hold
under their own name are left as the checkpoint has them. A searched learning rate is the base
rate a schedule scales, so the group's rate is scaled by new base / old base (a schedule's state
goes on from the source's step) and the schedule's base rates become the new one.
"""

from __future__ import annotations

from typing import Any

from tuneyard.server.study.settings import TrainingSettings


def apply_explored(optimizer: Any, scheduler: Any, training: TrainingSettings) -> None:
    """Writes the trial's optimizer options into the loaded param groups, and its schedule options
    into the loaded schedule."""
    options = training.optimizer.options
    for index, group in enumerate(optimizer.param_groups):
        for key, value in options.items():
            if key == "lr":
                old_base = float(group.get("initial_lr", group["lr"]))
                group["lr"] = group["lr"] * float(value) / old_base if old_base else float(value)
                if "initial_lr" in group:
                    group["initial_lr"] = float(value)
                if scheduler is not None and hasattr(scheduler, "base_lrs"):
                    scheduler.base_lrs[index] = float(value)
            elif key in group:
                group[key] = tuple(value) if isinstance(group[key], tuple) else value
    schedule = training.lr_scheduler
    if scheduler is None or schedule is None:
        return
    for key, value in schedule.options.items():
        if hasattr(scheduler, key) and not callable(getattr(scheduler, key)):
            setattr(scheduler, key, value)

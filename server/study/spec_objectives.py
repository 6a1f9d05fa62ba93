"""Checks a spec's objectives: each names a metric the study's trials report, with its direction.

The built-in trainer reports the same metrics for every task (`COMMON`), its loss, and the metrics of
the dataset's task (`train_<name>`, `val_<name>`, as the task plugin registered them), so an
objective must be one of those. A trainable reports what it wants: any metric name is accepted, and
its direction must be given unless the name is one whose direction is known.
"""

from __future__ import annotations

from typing import Any

from tuneyard.plugins.api import Objective, PluginEntry
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.limits import MAX_NAME_CHARS
from tuneyard.server.study.domain import InvalidArgument

# Reported by the built-in trainer for every task, per epoch, with whether higher ("max") is better.
COMMON: dict[str, str] = {
    "train_loss": "min",
    "val_loss": "min",
    "params": "min",
    "trainable_params": "min",
    "inference_latency_ms": "min",
    "epoch_seconds": "min",
    "train_seconds": "min",
    "lr": "max",
    "peak_memory_gb": "min",
}
SPLITS = ("train", "val")
MODES = {"MAXIMIZE": "max", "MINIMIZE": "min"}


def task_metrics(task: PluginEntry) -> dict[str, str]:
    """Every metric the built-in trainer reports per epoch for `task`, with its direction."""
    return COMMON | {f"{split}_{m.name}": m.mode for m in task.metrics for split in SPLITS}


class ObjectiveChecker:
    """`objective`, or several `objectives`, against the metrics a study's trials report."""

    def __init__(self, registry: PluginRegistry) -> None:
        self.registry = registry

    def check(self, spec: dict[str, Any], normalised: dict[str, Any]) -> tuple[Objective, ...]:
        """The objectives; the first one guides searchers and early stoppers."""
        many = spec.get("objectives") or []
        if not isinstance(many, list):
            raise InvalidArgument("spec.objectives", "must be a list")
        if many and spec.get("objective"):
            raise InvalidArgument("spec.objectives", "give either objective or objectives, not both")
        if not many:
            return (self._objective(spec.get("objective") or {}, "spec.objective", normalised),)
        objectives = tuple(self._objective(o, f"spec.objectives[{i}]", normalised) for i, o in enumerate(many))
        metrics = [o.metric for o in objectives]
        if len(set(metrics)) != len(metrics):
            raise InvalidArgument("spec.objectives", "each metric may appear once")
        return objectives

    def _objective(self, objective: Any, path: str, normalised: dict[str, Any]) -> Objective:
        if not isinstance(objective, dict):
            raise InvalidArgument(path, "must be an object")
        metric, known = self.metric_name(objective.get("metric"), f"{path}.metric", normalised)
        mode = objective.get("mode") or ""
        if mode and mode not in MODES:
            raise InvalidArgument(f"{path}.mode", f"must be MAXIMIZE or MINIMIZE, got {mode!r}")
        if not mode and metric not in known:
            raise InvalidArgument(f"{path}.mode", f"say whether {metric!r} is to be MAXIMIZEd or MINIMIZEd")
        return Objective(metric=metric, mode=MODES[mode] if mode else known[metric])

    def metric_name(self, metric: Any, path: str, normalised: dict[str, Any]) -> tuple[str, dict[str, str]]:
        """The metric's name (the task's default when absent) and the metrics whose direction is known."""
        if metric is not None and not isinstance(metric, str):
            raise InvalidArgument(path, f"must be a metric name, got {metric!r}")
        if "trainable" in normalised or "external" in normalised:
            if not metric:
                raise InvalidArgument(path, "required: name a metric the trials report")
            if len(metric) > MAX_NAME_CHARS:
                raise InvalidArgument(path, f"longer than {MAX_NAME_CHARS} characters")
            known: dict[str, str] = dict(COMMON)
            for task in self.registry.entries("task"):
                known.update(task_metrics(task))
            return metric, known
        task = self.registry.get("task", normalised["task"]["name"])
        known = task_metrics(task)
        metric = metric or ("val_accuracy" if "val_accuracy" in known else "val_loss")
        if metric not in known:
            raise InvalidArgument(
                path, f"unknown metric {metric!r} for a {task.name} study (known: {', '.join(sorted(known))})"
            )
        return metric, known

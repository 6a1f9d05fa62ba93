"""Built-in tasks: the loss and metrics of the built-in trainer for each kind of target.

A dataset declares its task when it registers (`task="regression"`); the trainer builds that task's
object (`tasks.heads`, which imports torch, so only workers load it) and never looks at a task's
name. The metrics registered here are what a spec's objective may name, as `train_<name>` and
`val_<name>` (the test evaluation reports `test_<name>`).
"""

from __future__ import annotations

from typing import Any

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import Bounds

REGRESSION_LOSSES = ("mse", "huber", "l1")


def classification(*, num_classes: int, label_smoothing: float = 0.0) -> Any:
    """Single-label classification: cross-entropy on logits; accuracy of the arg-max."""
    from tuneyard.plugins.builtin.tasks.heads import Classification

    return Classification(num_classes=num_classes, label_smoothing=label_smoothing)


def regression(*, num_classes: int, loss: str = "mse", huber_delta: float = 1.0) -> Any:
    """Regression of float targets: MSE (or Huber, L1) loss; mse, mae and r2 (pooled over targets).

    Args:
        loss: the training loss: mse, huber or l1 (the metrics are the same for all three).
        huber_delta: where the Huber loss turns from quadratic to linear.
    """
    if loss not in REGRESSION_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(REGRESSION_LOSSES)}, got {loss!r}")
    from tuneyard.plugins.builtin.tasks.heads import Regression

    return Regression(loss=loss, huber_delta=huber_delta)


def multilabel(*, num_classes: int, threshold: float = 0.5) -> Any:
    """Multi-label classification: BCE on logits; micro-averaged f1 and label-wise accuracy.

    Args:
        threshold: the probability above which a label counts as predicted.
    """
    from tuneyard.plugins.builtin.tasks.heads import Multilabel

    return Multilabel(threshold=threshold)


@hookimpl
def tuneyard_register_tasks(register: Any) -> None:
    register("classification", classification, metrics={"accuracy": "max"})
    register(
        "regression",
        regression,
        metrics={"mse": "min", "mae": "min", "r2": "max"},
        bounds={"huber_delta": Bounds(gt=0)},
    )
    register(
        "multilabel", multilabel, metrics={"f1": "max", "accuracy": "max"}, bounds={"threshold": Bounds(gt=0, lt=1)}
    )

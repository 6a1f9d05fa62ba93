"""The built-in tasks' objects: a batch's loss, its sums, and an epoch's metrics from the sums.

Sums stay tensors on the device (the trainer adds them up over an epoch and reads them once), so a
metric costs no synchronisation per batch. Every metric here is a ratio of sums, so it is exact
over an epoch however the batches fall.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention


class Classification:
    """Cross-entropy (with label smoothing) on logits (N, C); `accuracy` of the arg-max."""

    def __init__(self, *, num_classes: int, label_smoothing: float = 0.0) -> None:
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), targets, label_smoothing=self.label_smoothing)

    def sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"correct": (outputs.argmax(1) == targets).sum()}

    def metrics(self, totals: dict[str, float], count: int) -> dict[str, float]:
        return {"accuracy": totals["correct"] / max(count, 1)}


def _like(outputs: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Targets as floats of the outputs' shape: (N,) targets of a one-output model become (N, 1)."""
    if targets.numel() != outputs.numel():
        raise ValueError(
            f"the model's outputs {tuple(outputs.shape)} do not match the targets {tuple(targets.shape)}: "
            "a model needs one output per target (num_classes of them)"
        )
    return targets.to(dtype).reshape(outputs.shape)


def _count(like: torch.Tensor) -> torch.Tensor:
    """The number of values in `like`, as a tensor made on its device (a fill, never a host copy)."""
    return torch.full((), float(like.numel()), dtype=torch.float64, device=like.device)


class Regression:
    """MSE, Huber or L1 loss on outputs (N, T); `mse`, `mae` and `r2` pooled over all N*T values."""

    def __init__(self, *, loss: str = "mse", huber_delta: float = 1.0) -> None:
        self.kind = loss
        self.huber_delta = huber_delta

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        outputs, targets = outputs.float(), _like(outputs, targets)
        if self.kind == "huber":
            return F.huber_loss(outputs, targets, delta=self.huber_delta)
        if self.kind == "l1":
            return F.l1_loss(outputs, targets)
        return F.mse_loss(outputs, targets)

    def sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        # float64: r2's total sum of squares is a difference of large sums, which float32 would
        # lose to cancellation when the targets' mean is far from 0 (prices, years).
        targets = _like(outputs, targets, torch.float64)
        error = outputs.double() - targets
        return {
            "squared_error": (error * error).sum(),
            "absolute_error": error.abs().sum(),
            "target": targets.sum(),
            "target_squared": (targets * targets).sum(),
            "values": _count(targets),
        }

    def metrics(self, totals: dict[str, float], count: int) -> dict[str, float]:
        values = max(totals["values"], 1.0)
        spread = totals["target_squared"] - totals["target"] ** 2 / values  # the total sum of squares
        r2 = 1.0 - totals["squared_error"] / spread if spread > 0 and math.isfinite(spread) else 0.0
        return {"mse": totals["squared_error"] / values, "mae": totals["absolute_error"] / values, "r2": r2}


class Multilabel:
    """BCE with logits on outputs (N, L) against 0/1 targets; micro `f1` and label-wise `accuracy`."""

    def __init__(self, *, threshold: float = 0.5) -> None:
        self.logit_threshold = math.log(threshold / (1.0 - threshold))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(outputs.float(), _like(outputs, targets))

    def sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        truth = _like(outputs, targets) > 0.5
        predicted = outputs.float() > self.logit_threshold
        return {
            "true_positive": (predicted & truth).sum(),
            "false_positive": (predicted & ~truth).sum(),
            "false_negative": (~predicted & truth).sum(),
            "agree": (predicted == truth).sum(),
            "values": _count(truth),
        }

    def metrics(self, totals: dict[str, float], count: int) -> dict[str, float]:
        tp = totals["true_positive"]
        denominator = 2 * tp + totals["false_positive"] + totals["false_negative"]
        return {
            "f1": 2 * tp / denominator if denominator else 0.0,
            "accuracy": totals["agree"] / max(totals["values"], 1.0),
        }

"""What a trial measures on its device: a split's loss and task metrics, latency, peak memory.

Imported only in worker processes (it imports torch).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from tuneyard.plugins.api import Task
from tuneyard.server.worker.batches import Batches
from tuneyard.server.worker.task_totals import TaskTotals


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """Mixed precision on CUDA only; CPU trials train in fp32."""
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    enabled = device.type == "cuda" and precision in ("auto", "bf16", "fp16")
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    batches: Batches,
    task: Task,
    precision: str,
    device: torch.device,
    heartbeat: Callable[[], None],
) -> dict[str, float]:
    """`loss` (the task's, per sample) and the task's metrics over `batches`; `heartbeat` per batch.

    Val and test are measured alike, so a study's test metrics are the val metrics' names.
    """
    model.eval()
    totals = TaskTotals(task, device)
    for x, y in batches:
        heartbeat()
        with autocast(device, precision):
            outputs = model(x)
        totals.add(task.loss(outputs, y), outputs, y)
    return totals.read()


def peak_memory(device: torch.device) -> dict[str, float]:
    """The trial's peak GPU memory so far; the scheduler packs later trials by it."""
    if device.type != "cuda":
        return {}
    return {"peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30}


@torch.no_grad()
def latency_ms(model: nn.Module, sample: torch.Tensor, device: torch.device, repeats: int = 5) -> float:
    """Median time of the model on one input on the trial's device, in milliseconds."""
    model.eval()
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        model(sample)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - started) * 1000)
    return sorted(times[1:])[repeats // 2]

"""What a trial measures on its device: loss and accuracy over batches, latency, peak memory.

Imported only in worker processes (it imports torch).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from tuneyard.server.worker.batches import Batches


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """Mixed precision on CUDA only; CPU trials train in fp32."""
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    enabled = device.type == "cuda" and precision in ("auto", "bf16", "fp16")
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


@torch.no_grad()
def loss_and_accuracy(
    model: nn.Module, batches: Batches, precision: str, device: torch.device, heartbeat: Callable[[], None]
) -> dict[str, float]:
    """Mean cross-entropy and accuracy over `batches`; `heartbeat` is called per batch."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total = 0
    correct = torch.zeros((), device=device, dtype=torch.long)
    loss = torch.zeros((), device=device)
    for x, y in batches:
        heartbeat()
        with autocast(device, precision):
            logits = model(x)
        loss += loss_fn(logits.float(), y)
        correct += (logits.argmax(1) == y).sum()
        total += len(y)
    return {"loss": loss.item() / max(total, 1), "accuracy": correct.item() / max(total, 1)}


def peak_memory(device: torch.device) -> dict[str, float]:
    """The trial's peak GPU memory so far; the scheduler packs later trials by it."""
    if device.type != "cuda":
        return {}
    return {"peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30}


@torch.no_grad()
def latency_ms(model: nn.Module, sample: torch.Tensor, device: torch.device, repeats: int = 5) -> float:
    """Median time to classify one input on the trial's device, in milliseconds."""
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

"""Diagnosis of the trainer's throughput gap against a plain loop (GPU): which difference costs time."""

from __future__ import annotations

import statistics
import sys
import time

import torch
from torch import nn

from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.trainer import Trainer

sys.path.insert(0, "bench")
from gpu_check import BIG  # noqa: E402


def plain(benchmark: bool, sums: bool, epochs: int = 4, batch: int = 256) -> float:
    torch.backends.cudnn.benchmark = benchmark
    registry = PluginRegistry.load()
    splits = registry.create("dataset", BIG["name"], BIG["options"], root="")
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = registry.create("model", "resnet18", {"small_input": True}, input_shape=tuple(splits.input_shape),
                            num_classes=splits.num_classes).to(device, memory_format=torch.channels_last)  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = (t.to(device) for t in splits.train.tensors)
    mean = torch.tensor(splits.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(splits.std, device=device).view(1, -1, 1, 1)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for _ in range(epochs):
        torch.cuda.synchronize()
        started = time.perf_counter()
        total = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        order = torch.randperm(len(x), device=device)
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            inputs = ((x[idx] - mean) / std).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(inputs)
                loss = loss_fn(logits.float(), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if sums:
                total += loss.detach() * len(idx)
                correct += (logits.argmax(1) == y[idx]).sum()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return len(x) / statistics.median(times[1:])


def trainer_in_process(epochs: int = 4) -> float:
    trainer = Trainer(PluginRegistry.load(), "cuda:0")
    settings = {
        "dataset": BIG, "model": {"name": "resnet18", "options": {"small_input": True}},
        "training": {"epochs": epochs, "batch_size": 256, "seed": 0, "precision": "auto", "augmentations": [],
                     "label_smoothing": 0.0, "lr_scheduler": None,
                     "optimizer": {"name": "sgd", "options": {"lr": 0.05, "momentum": 0.9}}},
    }  # fmt: skip
    reports = []
    trainer.train({"settings": settings, "checkpoint": "/tmp/diag.pt"}, lambda e, m: reports.append(m), lambda: False)
    n = int(BIG["options"]["num_samples"] * 0.8)
    return n / statistics.median(m["train_seconds"] for m in reports[1:])


if __name__ == "__main__":
    for label, fn in [
        ("plain", lambda: plain(False, False)),
        ("plain+benchmark", lambda: plain(True, False)),
        ("plain+benchmark+sums", lambda: plain(True, True)),
        ("trainer in-process", trainer_in_process),
        ("plain again", lambda: plain(False, False)),
    ]:
        print(f"{label:<24} {fn():>10,.0f} samples/s", flush=True)

"""Trains and evaluates one trial inside a worker process, building every part from the registry.

Imported only in worker processes (it imports torch). Datasets are cached per worker, so
consecutive trials on the same data skip loading it again.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tuneyard.plugins.api import DatasetSplits
from tuneyard.plugins.manager import PluginRegistry

Report = Callable[[int, dict[str, float]], None]
ShouldStop = Callable[[], bool]
Transform = Callable[[torch.Tensor], torch.Tensor]


class _Batches:
    """Yields (inputs, labels) batches, slicing tensors directly when the split is a TensorDataset."""

    def __init__(self, data: Dataset, batch_size: int, *, shuffle: bool, seed: int, transform: Any) -> None:
        self.data, self.batch_size, self.shuffle, self.transform = data, batch_size, shuffle, transform
        self.generator = torch.Generator().manual_seed(seed)
        self.tensors = data.tensors if isinstance(data, TensorDataset) else None

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def __iter__(self):
        if self.tensors is None:
            loader = DataLoader(self.data, batch_size=self.batch_size, shuffle=self.shuffle, generator=self.generator)
            for x, y in loader:
                yield self._apply(x), y
            return
        x_all, y_all = self.tensors
        n = len(x_all)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self._apply(x_all[idx]), y_all[idx]

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x) if self.transform is not None else x


class Trainer:
    """Builds dataset, augmentations, model, optimizer and schedule for a trial, and trains it."""

    def __init__(self, registry: PluginRegistry, device: str, data_root: str = "") -> None:
        self.registry = registry
        self.device = torch.device(device)
        self.data_root = data_root
        self._datasets: dict[str, DatasetSplits] = {}

    def _dataset(self, component: dict[str, Any]) -> DatasetSplits:
        key = json.dumps(component, sort_keys=True)
        if key not in self._datasets:
            self._datasets[key] = self.registry.create(
                "dataset", component["name"], component["options"], root=self.data_root
            )
        return self._datasets[key]

    def _model(self, settings: dict[str, Any], splits: DatasetSplits) -> nn.Module:
        model = self.registry.create(
            "model",
            settings["model"]["name"],
            settings["model"]["options"],
            input_shape=tuple(splits.input_shape),
            num_classes=splits.num_classes,
        ).to(self.device)
        if self.device.type == "cuda" and len(splits.input_shape) == 3:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _normalise(self, splits: DatasetSplits) -> Transform:
        if not splits.mean:
            return lambda x: x
        shape = (1, -1) + (1,) * (len(splits.input_shape) - 1)
        mean = torch.tensor(splits.mean).view(shape)
        std = torch.tensor(splits.std).view(shape)
        return lambda x: (x - mean) / std

    def _train_transform(self, settings: dict[str, Any], splits: DatasetSplits) -> Transform:
        normalise = self._normalise(splits)
        per_sample = [
            self.registry.create("augmentation", a["name"], a["options"], input_shape=tuple(splits.input_shape))
            for a in settings["training"]["augmentations"]
        ]
        if not per_sample:
            return normalise

        def transform(x: torch.Tensor) -> torch.Tensor:
            out = x.clone()
            for i in range(len(out)):
                sample = out[i]
                for aug in per_sample:
                    sample = aug(sample)
                out[i] = sample
            return normalise(out)

        return transform

    def _autocast(self, precision: str):
        use_bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        non_blocking = self.device.type == "cuda"
        x = x.to(self.device, non_blocking=non_blocking)
        if self.device.type == "cuda" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=non_blocking)

    @torch.no_grad()
    def _evaluate(self, model: nn.Module, batches: _Batches, precision: str) -> dict[str, float]:
        model.eval()
        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        total, correct, loss = 0, 0, 0.0
        for x, y in batches:
            x, y = self._to_device(x, y)
            with self._autocast(precision):
                logits = model(x)
            loss += loss_fn(logits.float(), y).item()
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
        return {"loss": loss / max(total, 1), "accuracy": correct / max(total, 1)}

    def train(self, task: dict[str, Any], report: Report, should_stop: ShouldStop) -> dict[str, Any]:
        """Runs the trial's epochs; reports after each; stops early when `should_stop()` says so."""
        settings, training = task["settings"], task["settings"]["training"]
        seed = int(training["seed"])
        torch.manual_seed(seed)
        splits = self._dataset(settings["dataset"])
        model = self._model(settings, splits)
        optimizer = self.registry.create(
            "optimizer", training["optimizer"]["name"], training["optimizer"]["options"], args=(model.parameters(),)
        )
        batch_size = int(training["batch_size"])
        train_batches = _Batches(
            splits.train, batch_size, shuffle=True, seed=seed, transform=self._train_transform(settings, splits)
        )
        val_batches = _Batches(splits.val, 512, shuffle=False, seed=seed, transform=self._normalise(splits))
        epochs = int(training["epochs"])
        scheduler = None
        if training.get("lr_scheduler"):
            sched = training["lr_scheduler"]
            scheduler = self.registry.create(
                "lr_scheduler", sched["name"], sched["options"], args=(optimizer,),
                epochs=epochs, steps_per_epoch=len(train_batches),
            )  # fmt: skip
        loss_fn = nn.CrossEntropyLoss(label_smoothing=float(training["label_smoothing"]))
        checkpoint = Path(task["checkpoint"])
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        metrics: dict[str, float] = {}
        epoch = 0
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            model.train()
            seen, correct, total_loss = 0, 0, 0.0
            for x, y in train_batches:
                if should_stop():
                    return {"final_metrics": metrics, "epochs": epoch - 1, "stopped": True}
                x, y = self._to_device(x, y)
                with self._autocast(training["precision"]):
                    logits = model(x)
                    loss = loss_fn(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
            if scheduler is not None:
                scheduler.step()
            if not math.isfinite(total_loss):
                raise FloatingPointError(f"training loss diverged at epoch {epoch}")
            val = self._evaluate(model, val_batches, training["precision"])
            metrics = {
                "train_loss": total_loss / max(seen, 1),
                "train_accuracy": correct / max(seen, 1),
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "lr": float(optimizer.param_groups[0]["lr"]),
                "epoch_seconds": time.perf_counter() - started,
            }
            self._save(checkpoint, model, optimizer, epoch)
            report(epoch, metrics)
            if should_stop():
                return {"final_metrics": metrics, "epochs": epoch, "stopped": True}
        return {"final_metrics": metrics, "epochs": epoch, "stopped": False}

    def _save(self, path: Path, model: nn.Module, optimizer: Any, epoch: int) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, tmp)
        os.replace(tmp, path)

    def evaluate(self, task: dict[str, Any]) -> dict[str, float]:
        """Evaluates a trial's checkpoint on the test split."""
        settings = task["settings"]
        splits = self._dataset(settings["dataset"])
        model = self._model(settings, splits)
        state = torch.load(task["checkpoint"], map_location=self.device, weights_only=True)
        model.load_state_dict(state["model"])
        batches = _Batches(splits.test, 512, shuffle=False, seed=0, transform=self._normalise(splits))
        result = self._evaluate(model, batches, settings["training"]["precision"])
        return {"test_loss": result["loss"], "test_accuracy": result["accuracy"]}

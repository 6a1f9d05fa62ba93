"""Trains and evaluates one trial inside a worker process, building every part from the registry.

Imported only in worker processes (it imports torch). Datasets are cached per worker, so consecutive
trials on the same data skip loading it again. Training techniques (gradient clipping and
accumulation, mixed precision, EMA of weights, early stop on plateau, deterministic seeding,
channels_last on CUDA) are plain `training` settings, read as validation left them
(`study.settings.TrainingSettings`): the trainer applies no defaults of its own. Every epoch ends
with a checkpoint holding all a run needs to go on (`checkpoints`), so a trial whose worker (or
server) died resumes after its last finished epoch and trains the same number of epochs in all.
The loss and the metrics are the dataset's task's (a task plugin, `task_totals`): the trainer
names no loss and no metric of its own.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from tuneyard.plugins.api import DatasetSplits, Objective
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.execution.messages import EvaluateTask, Placement, TrainTask
from tuneyard.server.execution.snapshots import decision_epoch, take_snapshot
from tuneyard.server.study.settings import Component, TrainingSettings, TrialSettings
from tuneyard.server.worker.batches import Batches, Transform
from tuneyard.server.worker.checkpoints import load_resume, save_epoch
from tuneyard.server.worker.explore import apply_explored
from tuneyard.server.worker.measure import autocast, evaluate_split, latency_ms, peak_memory
from tuneyard.server.worker.parts import BatchTransform, TrialParts
from tuneyard.server.worker.protocol import Report, ShouldStop
from tuneyard.server.worker.ranks import Ranks
from tuneyard.server.worker.task_totals import TaskTotals, build_task, prefixed

EVAL_BATCH = 512
LOADER_WORKERS = 2  # DataLoader worker processes on the loader path


class _EpochAware(Protocol):
    """A model that changes between epochs (e.g. unfreezes layers); see the model hook in hookspecs."""

    def on_epoch_start(self, epoch: int) -> None: ...


@dataclass(frozen=True, slots=True)
class _EpochSums:
    """One epoch's training totals, read from the device once."""

    train: dict[str, float]  # `loss` and the task's metrics, unprefixed
    last_input: torch.Tensor  # a sample for the latency measurement
    counts: dict[str, float]  # parameter counts after on_epoch_start
    started: float
    train_seconds: float


def optimizer_step(model: nn.Module, optimizer: Any, scaler: Any, clip: float) -> None:
    """One optimizer step: unscale (fp16), clip the gradient norm when `clip`, step, clear gradients."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _result(metrics: dict[str, float], epochs: int, stopped: bool) -> dict[str, Any]:
    return {"final_metrics": metrics, "epochs": epochs, "stopped": stopped}


def _track(objective: Objective, metrics: dict[str, float], best: Any, since_best: int) -> tuple[Any, int]:
    """The best objective value so far and the epochs since it improved."""
    value = metrics.get(objective.metric)
    if value is not None and (best is None or objective.better(value, best)):
        return value, 0
    return best, since_best + 1


class Trainer:
    """Builds dataset, augmentations, model, optimizer and schedule for a trial, and trains it."""

    def __init__(self, registry: PluginRegistry, device: str, data_root: str = "") -> None:
        self.registry = registry
        self.device = torch.device(device)
        self.data_root = data_root
        self._datasets: dict[str, DatasetSplits] = {}
        self.heartbeat: Callable[[], None] = lambda: None  # the worker sets it: "this task is making progress"

    # ---- building blocks ----

    def _dataset(self, component: Component) -> DatasetSplits:
        key = json.dumps({"name": component.name, "options": component.options}, sort_keys=True)
        if key not in self._datasets:
            self._datasets[key] = self.registry.create(
                "dataset", component.name, component.options, root=self.data_root
            )
        return self._datasets[key]

    def _sized(self, kind: str, component: Component, splits: DatasetSplits) -> Any:
        """A plugin that is built for the dataset's input shape and class count (a model, an augmentation)."""
        return self.registry.create(
            kind,
            component.name,
            component.options,
            input_shape=tuple(splits.input_shape),
            num_classes=splits.num_classes,
        )

    def _model(self, component: Component, splits: DatasetSplits) -> nn.Module:
        model = self._sized("model", component, splits).to(self.device)
        if self.device.type == "cuda" and len(splits.input_shape) == 3:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _normalise(self, splits: DatasetSplits) -> Transform | None:
        """Normalisation with the training split's statistics, on the trial's device."""
        if not splits.mean:
            return None
        shape = (1, -1) + (1,) * (len(splits.input_shape) - 1)
        mean = torch.tensor(splits.mean, device=self.device).view(shape)
        std = torch.tensor(splits.std, device=self.device).view(shape)
        return lambda x: (x - mean) / std

    def _batches(
        self, data: Any, batch_size: int, training: TrainingSettings, splits: DatasetSplits, **kwargs: Any
    ) -> Batches:
        return Batches(
            data,
            batch_size,
            device=self.device,
            normalise=self._normalise(splits),
            pipeline=training.data_pipeline,
            loader_workers=LOADER_WORKERS,
            **kwargs,
        )

    def _train_batches(
        self, training: TrainingSettings, splits: DatasetSplits, per_sample: list[Transform], shard: tuple[int, int]
    ) -> Batches:
        """The training split's batches: shuffled by the trial's seed, augmented per sample, one rank's shard."""
        return self._batches(
            splits.train,
            training.batch_size,
            training,
            splits,
            shuffle=True,
            seed=training.seed,
            augmentations=per_sample,
            shard=shard,
        )

    def _augmentations(
        self, training: TrainingSettings, splits: DatasetSplits
    ) -> tuple[list[Transform], list[BatchTransform]]:
        """Per-sample augmentations (before normalisation) and batch-level ones (after it)."""
        per_sample: list[Transform] = []
        per_batch: list[BatchTransform] = []
        for aug in training.augmentations:
            made = self._sized("augmentation", aug, splits)
            (per_batch if self.registry.get("augmentation", aug.name).batch_level else per_sample).append(made)
        return per_sample, per_batch

    def _scheduler(self, training: TrainingSettings, optimizer: Any, steps_per_epoch: int) -> tuple[Any, str, str]:
        """The schedule and how to step it, as its plugin registered (never by name)."""
        spec = training.lr_scheduler
        if spec is None:
            return None, "epoch", ""
        entry = self.registry.get("lr_scheduler", spec.name)
        scheduler = self.registry.create(
            "lr_scheduler",
            spec.name,
            spec.options,
            args=(optimizer,),
            epochs=training.epochs,
            steps_per_epoch=steps_per_epoch,
        )
        return scheduler, entry.interval, entry.monitor

    def _apply_placement(self, placement: Placement) -> None:
        """Threads for this trial's share of the device, and a memory cap when packed on a GPU."""
        if placement.threads:
            torch.set_num_threads(placement.threads)
        if self.device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(placement.memory_fraction or 1.0, self.device)

    @staticmethod
    def _seed(seed: int, deterministic: bool) -> None:
        random.seed(seed)
        torch.manual_seed(seed)
        # Only on a change: the call imports torch._inductor (2.6 s of a new worker's first trial).
        enabled = torch.are_deterministic_algorithms_enabled()
        if enabled != deterministic or (deterministic and not torch.is_deterministic_algorithms_warn_only_enabled()):
            torch.use_deterministic_algorithms(deterministic, warn_only=True)

    def _build(self, settings: TrialSettings, ranks: Ranks) -> TrialParts:
        """Every part of a run, in a fixed order (the seeded generators are drawn from in this order)."""
        training = settings.training
        self._seed(training.seed, training.deterministic)
        splits = self._dataset(settings.dataset)
        task = build_task(self.registry, settings, splits, training.label_smoothing)
        core = self._model(settings.model, splits)
        model: nn.Module = core
        if ranks.world > 1:
            model = DistributedDataParallel(core, device_ids=[0] if self.device.type == "cuda" else None)
        optimizer = self.registry.create(
            "optimizer", training.optimizer.name, training.optimizer.options, args=(model.parameters(),)
        )
        per_sample, batch_augs = self._augmentations(training, splits)
        train_batches = self._train_batches(training, splits, per_sample, shard=(ranks.rank, ranks.world))
        val_batches = self._batches(splits.val, EVAL_BATCH, training, splits, shuffle=False, seed=training.seed)
        steps_per_epoch = math.ceil(len(train_batches) / training.grad_accumulation_steps)
        scheduler, interval, monitor = self._scheduler(training, optimizer, steps_per_epoch)
        decay = training.ema_decay
        ema = AveragedModel(core, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True) if decay else None
        fp16_cuda = training.precision == "fp16" and self.device.type == "cuda"
        return TrialParts(
            training=training,
            core=core,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            interval=interval,
            monitor=monitor,
            ema=ema,
            scaler=torch.amp.GradScaler("cuda") if fp16_cuda else None,
            task=task,
            measured=build_task(self.registry, settings, splits),
            batch_augs=batch_augs,
            train_batches=train_batches,
            val_batches=val_batches,
        )

    # ---- training ----

    def train(self, task: TrainTask, report: Report, should_stop: ShouldStop) -> dict[str, Any]:
        """Runs the trial's epochs; reports after each; stops early when `should_stop()` says so.

        A data-parallel trial runs this on every rank; rank 0 evaluates, reports and checkpoints.
        """
        self._apply_placement(task.placement)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        ranks = Ranks(task.rank, self.device)
        try:
            return self._train(task, ranks, report if ranks.leader else (lambda epoch, metrics: None), should_stop)
        finally:
            ranks.close()

    def _train(self, task: TrainTask, ranks: Ranks, report: Report, should_stop: ShouldStop) -> dict[str, Any]:
        assert isinstance(task.settings, TrialSettings)  # `main` hands trainables to their own runner
        parts = self._build(task.settings, ranks)
        patience = parts.training.early_stop_patience
        checkpoint = Path(task.checkpoint)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        metrics: dict[str, float] = {}
        best, since_best, done = None, 0, 0
        saved = load_resume(checkpoint, parts.stateful(), parts.train_batches, self.device) if task.resume else None
        if saved is not None:
            done, metrics, best, since_best = saved["epoch"], saved["metrics"], saved["best"], saved["since_best"]
            if task.explored_at and done == task.explored_at:  # another trial's state, this trial's options
                apply_explored(parts.optimizer, parts.scheduler, parts.training)
            report(done, metrics)  # the server keeps what it already has of this epoch
            if bool(patience) and since_best >= patience:
                return _result(metrics, done, False)
        epoch = done
        for epoch in range(done + 1, parts.training.epochs + 1):
            sums = self._train_epoch(parts, epoch, ranks, should_stop)
            if sums is None:
                return _result(metrics, epoch - 1, True)
            if not ranks.leader:  # rank 0 evaluates, reports and decides; the others follow
                parts.schedule_epoch(ranks, {})
                if ranks.agree(False):
                    break
                continue
            metrics = self._epoch_metrics(parts, sums)
            parts.schedule_epoch(ranks, metrics)
            best, since_best = _track(task.objective, metrics, best, since_best)
            progress = {"epoch": epoch, "metrics": metrics, "best": best, "since_best": since_best}
            save_epoch(checkpoint, parts.evaluated, parts.stateful(), parts.train_batches, progress, self.device)
            decides = decision_epoch(task, epoch, parts.training.epochs)
            if decides:
                take_snapshot(checkpoint.parent, epoch, link=True)
            report(epoch, metrics)
            if should_stop():
                ranks.agree(True)
                return _result(metrics, epoch, True)
            if ranks.agree(decides or (bool(patience) and since_best >= patience)):
                return _result(metrics, epoch, decides)  # a PBT decision epoch: the server judges, then resumes it
        return _result(metrics, epoch, False)

    def _train_epoch(self, parts: TrialParts, epoch: int, ranks: Ranks, should_stop: ShouldStop) -> _EpochSums | None:
        """One pass over the training batches; None when a stop came before its end."""
        started = time.perf_counter()
        core, training = parts.core, parts.training
        if hasattr(core, "on_epoch_start"):
            cast(_EpochAware, core).on_epoch_start(epoch)
        counts = {  # after on_epoch_start, which may unfreeze layers
            "params": float(sum(p.numel() for p in core.parameters())),
            "trainable_params": float(sum(p.numel() for p in core.parameters() if p.requires_grad)),
        }
        parts.model.train()
        accumulation = training.grad_accumulation_steps
        totals = TaskTotals(parts.task, self.device)  # on the device: one synchronisation per sum and epoch
        n_batches = len(parts.train_batches)
        for i, (x, y) in enumerate(parts.train_batches):
            if ranks.agree(should_stop()):
                return None
            targets = y
            for aug in parts.batch_augs:
                x, targets = aug(x, targets)
            with autocast(self.device, training.precision):
                logits = parts.model(x)
                loss = parts.task.loss(logits, targets)  # soft targets after a batch-level augmentation
            (parts.scaler.scale(loss / accumulation) if parts.scaler else loss / accumulation).backward()
            if (i + 1) % accumulation == 0 or i + 1 == n_batches:
                optimizer_step(parts.model, parts.optimizer, parts.scaler, training.grad_clip_norm)
                if parts.ema is not None:
                    parts.ema.update_parameters(core)
                if parts.scheduler is not None and parts.interval == "batch":
                    parts.scheduler.step()
            totals.add(loss, logits, y)
        train = totals.read()  # waits for the device
        train_seconds = time.perf_counter() - started
        if not math.isfinite(train["loss"]):
            raise FloatingPointError(f"training loss diverged at epoch {epoch}")
        return _EpochSums(train, x, counts, started, train_seconds)

    def _epoch_metrics(self, parts: TrialParts, sums: _EpochSums) -> dict[str, float]:
        """The epoch's reported metrics; validation runs on the evaluated (EMA) weights."""
        evaluated = parts.evaluated
        precision = parts.training.precision
        val = evaluate_split(evaluated, parts.val_batches, parts.measured, precision, self.device, self.heartbeat)
        return {
            "inference_latency_ms": latency_ms(evaluated, sums.last_input[:1], self.device),
            **prefixed("train", sums.train),
            **prefixed("val", val),
            "lr": float(parts.optimizer.param_groups[0]["lr"]),
            "epoch_seconds": time.perf_counter() - sums.started,
            "train_seconds": sums.train_seconds,
            **peak_memory(self.device),
            **sums.counts,
        }

    def evaluate(self, task: EvaluateTask) -> dict[str, float]:
        """Evaluates a trial's checkpoint on the test split."""
        self._apply_placement(task.placement)
        settings: TrialSettings = task.settings
        splits = self._dataset(settings.dataset)
        measured = build_task(self.registry, settings, splits)
        model = self._model(settings.model, splits)
        state = torch.load(task.checkpoint, map_location=self.device, weights_only=True)
        model.load_state_dict(state["model"])
        batches = self._batches(splits.test, EVAL_BATCH, settings.training, splits, shuffle=False, seed=0)
        result = evaluate_split(model, batches, measured, settings.training.precision, self.device, self.heartbeat)
        return prefixed("test", result)

"""Trains and evaluates one trial inside a worker process, building every part from the registry.

Imported only in worker processes (it imports torch). Datasets are cached per worker, so
consecutive trials on the same data skip loading it again. Training techniques (gradient
clipping and accumulation, mixed precision, EMA of weights, early stop on plateau,
deterministic seeding, channels_last on CUDA) are plain `training` settings.

Every epoch ends with a checkpoint holding all a run needs to go on — weights, optimizer,
schedule, EMA, gradient scaler, random generators, early-stop counters and the epoch's metrics —
so a trial whose worker (or server) died resumes after its last finished epoch and trains the same
number of epochs in all.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from tuneyard.plugins.api import DatasetSplits
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.execution.messages import EvaluateTask, Placement, TrainTask
from tuneyard.server.worker.batches import Batches, Transform

Report = Callable[[int, dict[str, float]], None]
ShouldStop = Callable[[], bool]
BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
EVAL_BATCH = 512
LOADER_WORKERS = 2  # DataLoader worker processes on the loader path
RENDEZVOUS_TIMEOUT = timedelta(seconds=60)


def resume_path(checkpoint: Path) -> Path:
    """Where the state to resume a trial lives: beside its checkpoint."""
    return checkpoint.with_name("resume.pt")


class _Ranks:
    """The trial's process group (one rank per device of a data-parallel trial), or a single rank."""

    def __init__(self, task: TrainTask, device: torch.device) -> None:
        self.rank, self.world = task.rank.rank, task.rank.world_size
        if self.world > 1:
            dist.init_process_group(
                backend="nccl" if device.type == "cuda" else "gloo",
                init_method=f"tcp://127.0.0.1:{task.rank.dist_port}",
                rank=self.rank,
                world_size=self.world,
                timeout=RENDEZVOUS_TIMEOUT,
            )
        self.device = device

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def agree(self, local: bool) -> bool:
        """True on every rank when any rank says so, so all ranks stop at the same batch."""
        if self.world == 1:
            return local
        flag = torch.tensor([1.0 if local else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def share(self, value: float) -> float:
        """Rank 0's value on every rank (a monitored metric for the LR schedule)."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


class _EpochAware(Protocol):
    """A model that changes between epochs (e.g. unfreezes layers); see the model hook in hookspecs."""

    def on_epoch_start(self, epoch: int) -> None: ...


class Trainer:
    """Builds dataset, augmentations, model, optimizer and schedule for a trial, and trains it."""

    def __init__(self, registry: PluginRegistry, device: str, data_root: str = "") -> None:
        self.registry = registry
        self.device = torch.device(device)
        self.data_root = data_root
        self._datasets: dict[str, DatasetSplits] = {}
        self.heartbeat: Callable[[], None] = lambda: None  # the worker sets it: "this task is making progress"

    # ---- building blocks ----

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

    def _normalise(self, splits: DatasetSplits) -> Transform | None:
        """Normalisation with the training split's statistics, on the trial's device."""
        if not splits.mean:
            return None
        shape = (1, -1) + (1,) * (len(splits.input_shape) - 1)
        mean = torch.tensor(splits.mean, device=self.device).view(shape)
        std = torch.tensor(splits.std, device=self.device).view(shape)
        return lambda x: (x - mean) / std

    def _batches(
        self, data: Any, batch_size: int, training: dict[str, Any], splits: DatasetSplits, **kwargs: Any
    ) -> Batches:
        return Batches(
            data,
            batch_size,
            device=self.device,
            normalise=self._normalise(splits),
            pipeline=training.get("data_pipeline") or "auto",
            loader_workers=LOADER_WORKERS,
            **kwargs,
        )

    def _augmentations(
        self, training: dict[str, Any], splits: DatasetSplits
    ) -> tuple[list[Transform], list[BatchTransform]]:
        """Per-sample augmentations (before normalisation) and batch-level ones (after it)."""
        per_sample: list[Transform] = []
        per_batch: list[BatchTransform] = []
        for aug in training["augmentations"]:
            made = self.registry.create(
                "augmentation",
                aug["name"],
                aug["options"],
                input_shape=tuple(splits.input_shape),
                num_classes=splits.num_classes,
            )
            (per_batch if self.registry.get("augmentation", aug["name"]).batch_level else per_sample).append(made)
        return per_sample, per_batch

    def _autocast(self, precision: str) -> torch.autocast:
        """Mixed precision on CUDA only; CPU trials train in fp32."""
        dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        enabled = self.device.type == "cuda" and precision in ("auto", "bf16", "fp16")
        return torch.autocast(self.device.type, dtype=dtype, enabled=enabled)

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
        torch.use_deterministic_algorithms(deterministic, warn_only=True)

    @torch.no_grad()
    def _evaluate(self, model: nn.Module, batches: Batches, precision: str) -> dict[str, float]:
        model.eval()
        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        total = 0
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        loss = torch.zeros((), device=self.device)
        for x, y in batches:
            self.heartbeat()
            with self._autocast(precision):
                logits = model(x)
            loss += loss_fn(logits.float(), y)
            correct += (logits.argmax(1) == y).sum()
            total += len(y)
        return {"loss": loss.item() / max(total, 1), "accuracy": correct.item() / max(total, 1)}

    # ---- training ----

    def train(self, task: TrainTask, report: Report, should_stop: ShouldStop) -> dict[str, Any]:
        """Runs the trial's epochs; reports after each; stops early when `should_stop()` says so.

        A data-parallel trial runs this on every rank; rank 0 evaluates, reports and checkpoints.
        """
        self._apply_placement(task.placement)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        ranks = _Ranks(task, self.device)
        try:
            return self._train(task, ranks, report if ranks.leader else (lambda epoch, metrics: None), should_stop)
        finally:
            ranks.close()

    def _train(self, task: TrainTask, ranks: _Ranks, report: Report, should_stop: ShouldStop) -> dict[str, Any]:
        settings, training = task.settings, task.settings["training"]
        seed = int(training["seed"])
        self._seed(seed, bool(training.get("deterministic", False)))
        splits = self._dataset(settings["dataset"])
        core = self._model(settings, splits)
        model: nn.Module = core
        if ranks.world > 1:
            model = DistributedDataParallel(core, device_ids=[0] if self.device.type == "cuda" else None)
        optimizer = self.registry.create(
            "optimizer", training["optimizer"]["name"], training["optimizer"]["options"], args=(model.parameters(),)
        )
        per_sample, batch_augs = self._augmentations(training, splits)
        train_batches = self._batches(
            splits.train,
            int(training["batch_size"]),
            training,
            splits,
            shuffle=True,
            seed=seed,
            augmentations=per_sample,
            shard=(ranks.rank, ranks.world),
        )
        val_batches = self._batches(splits.val, EVAL_BATCH, training, splits, shuffle=False, seed=seed)
        epochs = int(training["epochs"])
        accumulation = max(1, int(training.get("grad_accumulation_steps", 1)))
        steps_per_epoch = math.ceil(len(train_batches) / accumulation)
        scheduler, interval, monitor = self._scheduler(training, optimizer, epochs, steps_per_epoch)
        decay = float(training.get("ema_decay", 0.0))
        ema = AveragedModel(core, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True) if decay else None
        precision = training["precision"]
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and self.device.type == "cuda" else None
        clip = float(training.get("grad_clip_norm", 0.0))
        loss_fn = nn.CrossEntropyLoss(label_smoothing=float(training["label_smoothing"]))
        objective = task.objective
        patience = int(training.get("early_stop_patience", 0))
        checkpoint = Path(task.checkpoint)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        parts = {"model": core, "optimizer": optimizer, "scheduler": scheduler, "ema": ema, "scaler": scaler}
        metrics: dict[str, float] = {}
        best, since_best, done = None, 0, 0
        saved = self._resume(checkpoint, parts, train_batches) if task.resume else None
        if saved is not None:
            done, metrics, best, since_best = saved["epoch"], saved["metrics"], saved["best"], saved["since_best"]
            report(done, metrics)  # the server keeps what it already has of this epoch
            if bool(patience) and since_best >= patience:
                return {"final_metrics": metrics, "epochs": done, "stopped": False}
        epoch = done
        for epoch in range(done + 1, epochs + 1):
            started = time.perf_counter()
            if hasattr(core, "on_epoch_start"):
                cast(_EpochAware, core).on_epoch_start(epoch)
            counts = {  # after on_epoch_start, which may unfreeze layers
                "params": float(sum(p.numel() for p in core.parameters())),
                "trainable_params": float(sum(p.numel() for p in core.parameters() if p.requires_grad)),
            }
            model.train()
            # Sums stay on the device: one synchronisation per epoch, not two per batch.
            seen = 0
            correct = torch.zeros((), device=self.device, dtype=torch.long)
            summed_loss = torch.zeros((), device=self.device)
            n_batches = len(train_batches)
            for i, (x, y) in enumerate(train_batches):
                if ranks.agree(should_stop()):
                    return {"final_metrics": metrics, "epochs": epoch - 1, "stopped": True}
                targets = y
                for aug in batch_augs:
                    x, targets = aug(x, targets)
                with self._autocast(precision):
                    logits = model(x)
                    loss = loss_fn(logits.float(), targets)
                (scaler.scale(loss / accumulation) if scaler else loss / accumulation).backward()
                if (i + 1) % accumulation == 0 or i + 1 == n_batches:
                    self._step(model, optimizer, scaler, clip)
                    if ema is not None:
                        ema.update_parameters(core)
                    if scheduler is not None and interval == "batch":
                        scheduler.step()
                summed_loss += loss.detach() * len(y)
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
            total_loss, n_correct = summed_loss.item(), int(correct.item())  # waits for the device
            train_seconds = time.perf_counter() - started
            if not math.isfinite(total_loss):
                raise FloatingPointError(f"training loss diverged at epoch {epoch}")
            evaluated = ema.module if ema is not None else core
            if not ranks.leader:  # rank 0 evaluates, reports and decides; the others follow
                if scheduler is not None and interval == "epoch":
                    scheduler.step(ranks.share(0.0)) if monitor else scheduler.step()
                if ranks.agree(False):
                    break
                continue
            val = self._evaluate(evaluated, val_batches, precision)
            metrics = {
                "inference_latency_ms": self._latency_ms(evaluated, x[:1]),
                "train_loss": total_loss / max(seen, 1),
                "train_accuracy": n_correct / max(seen, 1),
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "lr": float(optimizer.param_groups[0]["lr"]),
                "epoch_seconds": time.perf_counter() - started,
                "train_seconds": train_seconds,
                **self._peak_memory(),
                **counts,
            }
            if scheduler is not None and interval == "epoch":
                scheduler.step(ranks.share(metrics[monitor])) if monitor else scheduler.step()
            value = metrics.get(objective.metric)
            if value is not None and (best is None or objective.better(value, best)):
                best, since_best = value, 0
            else:
                since_best += 1
            progress = {"epoch": epoch, "metrics": metrics, "best": best, "since_best": since_best}
            self._save(checkpoint, evaluated, parts, train_batches, progress)
            report(epoch, metrics)
            if should_stop():
                ranks.agree(True)
                return {"final_metrics": metrics, "epochs": epoch, "stopped": True}
            if ranks.agree(bool(patience) and since_best >= patience):
                break
        return {"final_metrics": metrics, "epochs": epoch, "stopped": False}

    def _scheduler(
        self, training: dict[str, Any], optimizer: Any, epochs: int, steps_per_epoch: int
    ) -> tuple[Any, str, str]:
        """The schedule and how to step it, as its plugin registered (never by name)."""
        spec = training.get("lr_scheduler")
        if not spec or not spec.get("name"):
            return None, "epoch", ""
        entry = self.registry.get("lr_scheduler", spec["name"])
        scheduler = self.registry.create(
            "lr_scheduler",
            spec["name"],
            spec["options"],
            args=(optimizer,),
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
        )
        return scheduler, entry.interval, entry.monitor

    def _peak_memory(self) -> dict[str, float]:
        """The trial's peak GPU memory so far; the scheduler packs later trials by it."""
        if self.device.type != "cuda":
            return {}
        return {"peak_memory_gb": torch.cuda.max_memory_allocated(self.device) / 2**30}

    @torch.no_grad()
    def _latency_ms(self, model: nn.Module, sample: torch.Tensor, repeats: int = 5) -> float:
        """Median time to classify one input on the trial's device, in milliseconds."""
        model.eval()
        times = []
        for _ in range(repeats + 1):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            started = time.perf_counter()
            model(sample)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            times.append((time.perf_counter() - started) * 1000)
        return sorted(times[1:])[repeats // 2]

    @staticmethod
    def _step(model: nn.Module, optimizer: Any, scaler: Any, clip: float) -> None:
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

    def _save(
        self, path: Path, evaluated: nn.Module, parts: dict[str, Any], batches: Batches, progress: dict[str, Any]
    ) -> None:
        """Writes the epoch's two files atomically: the checkpoint (plain weights a test run evaluates,
        EMA weights when averaging) and beside it the state that lets an interrupted run go on."""
        rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "shuffle": batches.generator.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        parts_state = {name: part.state_dict() for name, part in parts.items() if part is not None}
        self._write(resume_path(path), {**progress, "parts": parts_state, "rng": rng})
        self._write(path, {"model": evaluated.state_dict(), "epoch": progress["epoch"]})

    @staticmethod
    def _write(path: Path, state: dict[str, Any]) -> None:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def _resume(self, path: Path, parts: dict[str, Any], batches: Batches) -> dict[str, Any] | None:
        """Restores a run from the trial's last epoch, when an earlier attempt left its state."""
        saved = resume_path(path)
        if not saved.exists():
            return None
        # Written by this trainer into the server's own data directory; it holds schedule objects
        # that weights_only loading refuses.
        state = torch.load(saved, map_location="cpu", weights_only=False)
        for name, part_state in state["parts"].items():
            if parts.get(name) is not None:
                parts[name].load_state_dict(part_state)
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        batches.generator.set_state(rng["shuffle"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        return state

    def evaluate(self, task: EvaluateTask) -> dict[str, float]:
        """Evaluates a trial's checkpoint on the test split."""
        self._apply_placement(task.placement)
        settings = task.settings
        splits = self._dataset(settings["dataset"])
        model = self._model(settings, splits)
        state = torch.load(task.checkpoint, map_location=self.device, weights_only=True)
        model.load_state_dict(state["model"])
        batches = self._batches(splits.test, EVAL_BATCH, settings["training"], splits, shuffle=False, seed=0)
        result = self._evaluate(model, batches, settings["training"]["precision"])
        return {"test_loss": result["loss"], "test_accuracy": result["accuracy"]}

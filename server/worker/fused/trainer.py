"""Trains a group of trials as one fused model in one worker (issue 17): one forward and backward per batch.

The members' settings differ only in the fusable ones (`settings.FUSABLE`: optimizer options, label
smoothing, lr-schedule options). `GroupTrainer.prepare` builds a group once, both to check it (or
say why it must train solo) and to train it. Each member is built as the solo `Trainer` builds it,
in the same order of random draws (seed, dataset, task, model), then the members are stacked
(`stack.FusedModel`) under one fused optimizer (`optimizers.fuse_optimizer`). All members share one
pass of batches (same seed, batch size, shuffle, per-sample augmentations), which is what the solo
run of each would draw. On CPU a step's forward and backward go by parts of the stack that keep its
activations near L2's size (`epoch.train_parts`); the optimizer steps all members at once.

Per member: its loss (its task with its label smoothing), a real torch schedule driving a shadow
optimizer whose lr is copied into the fused `lr` (`members`), its train and val sums (a row each of
`epoch.FusedTotals`; validation is one fused pass over the val batches for all members, the same
batches and sums as `measure.evaluate_split`), `report(trial_id, epoch, metrics)` with the solo
trainer's metric names, and its entry in the group's one resume file an epoch (`group_resume`,
written before any member's report), which a member resuming solo reads too, as a group reads solo
trials' states; a member's own checkpoint and resume file are written when it leaves the group.
`inference_latency_ms` is the architecture's, measured once per group epoch on one member's module.
Without dropout a member's metrics match its solo run to float rounding (see
`stack` for where rounding differs); with dropout each member draws its own masks.

A member leaves the group at a batch boundary when `should_stop(trial_id)` says so, when its early
stop patience runs out, or when its train loss is not finite (its result is then an error): the
stack is rebuilt without it (`members.regroup`, weights and optimizer state carried over exactly),
and the others go on. Resume (`task.resume`, all members or none): every member's state must be
at one epoch with the same random generators (as a group's file, or solo runs of one seed, leave
them); otherwise the group is refused and the members resume solo.

Imported only in worker processes (it imports torch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.execution.messages import TrainTask
from tuneyard.server.study.settings import TrainingSettings, TrialSettings
from tuneyard.server.worker.batches import Batches
from tuneyard.server.worker.checkpoints import capture_rng, restore
from tuneyard.server.worker.fused.epoch import (
    FusedTotals,
    MemberLosses,
    StateOf,
    evaluate_members,
    train_part,
    train_parts,
)
from tuneyard.server.worker.fused.group_resume import Entry, GroupResume, common_resume
from tuneyard.server.worker.fused.members import (
    Member,
    ModelView,
    OptimizerView,
    clip_members,
    meta_copies,
    regroup,
    settings_problem,
)
from tuneyard.server.worker.fused.optimizers import StackedOptimizer, Unfusable, fuse_optimizer
from tuneyard.server.worker.fused.stack import FusedModel, fusable
from tuneyard.server.worker.measure import latency_ms, peak_memory
from tuneyard.server.worker.task_totals import build_task, prefixed
from tuneyard.server.worker.trainer import EVAL_BATCH, Trainer

GroupReport = Callable[[int, int, dict[str, float]], None]  # (trial_id, epoch, metrics)
GroupShouldStop = Callable[[int], bool]  # (trial_id) -> stop this member now


@dataclass
class _Group:
    """The fused run's parts (torch objects, so not frozen): the members still training, in stack order."""

    training: TrainingSettings  # member 0's; the non-fusable fields are every member's
    members: list[Member]
    fused: FusedModel
    optimizer: StackedOptimizer
    interval: str
    monitor: str
    train_batches: Batches
    val_batches: Batches
    counts: dict[str, float]
    epoch: int = 0  # the last epoch every remaining member finished
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    totals: FusedTotals | None = None  # this pass's training sums, a row per member
    resume: GroupResume | None = None  # the run's resume file (`train_prepared` opens it)
    resume_from: list[dict[str, Any] | None] | None = None  # per member, the state to resume (`prepare`)

    def losses(self) -> MemberLosses:
        """The members' training losses (their label smoothing), in one op when the task is built in."""
        return MemberLosses([m.loss for m in self.members])

    def sync_lr(self) -> None:
        """The members' schedules' lr into the fused optimizer."""
        self.optimizer.lr = torch.tensor([m.lr for m in self.members], dtype=torch.float64)


@dataclass(frozen=True, slots=True)
class _Pass:
    """One training pass's shared facts: a sample input (latency) and its timing."""

    last_input: torch.Tensor
    started: float
    train_seconds: float


def _result(metrics: dict[str, float], epochs: int, stopped: bool) -> dict[str, Any]:
    return {"final_metrics": metrics, "epochs": epochs, "stopped": stopped}


class GroupTrainer(Trainer):
    """The solo trainer's building blocks, used to train K members of one fused group."""

    # ---- refusals and building ----

    def prepare(self, tasks: Sequence[TrainTask]) -> _Group | str:
        """The group built to train (`train_prepared`), or why these tasks cannot train fused here."""
        problem = settings_problem(tasks, self.registry, self.device)
        common = common_resume(tasks) if problem is None and tasks[0].resume else None
        if problem is not None or isinstance(common, str):
            return problem or cast(str, common)
        self._apply_placement(tasks[0].placement)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        group = self._build_group(tasks)
        if not isinstance(group, str):
            group.resume_from = common
        return group

    def _build_group(self, tasks: Sequence[TrainTask]) -> _Group | str:
        """Every member's parts in the solo trainer's order of random draws, then the shared ones; or
        why the models or optimizers cannot be fused (checked on the built members, drawing nothing)."""
        settings = [cast(TrialSettings, task.settings) for task in tasks]
        losses, models = [], []
        for each in settings:
            self._seed(each.training.seed, each.training.deterministic)
            splits = self._dataset(each.dataset)
            losses.append(build_task(self.registry, each, splits, each.training.label_smoothing))
            models.append(self._model(each.model, splits))
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            first = splits.train[0][0] if len(splits.train) > 1 else None
            sample = torch.stack([first, splits.train[1][0]]).to(self.device) if torch.is_tensor(first) else None
            problem = fusable(models, sample)  # a trial forward and backward (dropout draws) on copies
        if problem is not None:
            return problem
        training = settings[0].training
        per_sample, _ = self._augmentations(training, splits)  # batch-level ones are refused
        train_batches = self._train_batches(training, splits, per_sample, shard=(0, 1))
        val_batches = self._batches(splits.val, EVAL_BATCH, training, splits, shuffle=False, seed=training.seed)
        fused = FusedModel(models)
        made = fuse_optimizer(training.optimizer.name, fused.params, [s.training.optimizer.options for s in settings])
        if isinstance(made, Unfusable):
            return made.why
        members, interval, monitor = [], "epoch", ""
        for task, each, loss, model in zip(tasks, settings, losses, models, strict=True):
            optimizer = each.training.optimizer
            shadow = self.registry.create("optimizer", optimizer.name, optimizer.options, args=(meta_copies(model),))
            scheduler, interval, monitor = self._scheduler(each.training, shadow, len(train_batches))
            shadow.step()  # no gradients, so a no-op: the schedule then knows its optimizer steps
            members.append(Member(task, each, loss, build_task(self.registry, each, splits), shadow, scheduler))
        counts = {
            "params": float(sum(p.numel() for p in models[0].parameters())),
            "trainable_params": float(sum(p.numel() for p in models[0].parameters() if p.requires_grad)),
        }
        group = _Group(training, members, fused, made, interval, monitor, train_batches, val_batches, counts)
        group.sync_lr()  # a schedule sets its first lr when it is built
        return group

    def _parts(self, group: _Group, index: int) -> dict[str, Any]:
        """Member `index`'s parts as the solo trainer's `TrialParts.stateful()` names them."""
        member = group.members[index]
        return {
            "model": ModelView(group.fused, index),
            "optimizer": OptimizerView(group.optimizer, index, member.shadow),
            "scheduler": member.scheduler,
            "ema": None,
            "scaler": None,
        }

    # ---- training ----

    def train_group(
        self, tasks: Sequence[TrainTask], report: GroupReport, should_stop: GroupShouldStop
    ) -> dict[int, dict[str, Any]]:
        """Trains the members' epochs fused; per trial id, the solo result shape or `{"error": ...}`.

        Raises ValueError for tasks that `prepare` refuses (for their settings, their models or
        optimizers, or on resume their checkpoints' epochs or generator states).
        """
        group = self.prepare(tasks)
        if isinstance(group, str):
            raise ValueError(f"these trials cannot train fused: {group}")
        return self.train_prepared(group, report, should_stop)

    def train_prepared(
        self, group: _Group, report: GroupReport, should_stop: GroupShouldStop
    ) -> dict[int, dict[str, Any]]:
        """Trains a group `prepare` built, as `train_group` does."""
        tasks = [member.task for member in group.members]
        for task in tasks:
            Path(task.checkpoint).parent.mkdir(parents=True, exist_ok=True)
        group.resume = GroupResume(tasks)
        if tasks[0].resume:
            self._resume(group, report)
        for epoch in range(group.epoch + 1, group.training.epochs + 1):
            if not group.members:
                break
            done = self._fused_epoch(group, epoch, should_stop)
            if done is not None:
                self._end_epoch(group, epoch, done, report, should_stop)
        for member in group.members:
            group.results[member.task.trial_id] = _result(member.metrics, group.epoch, False)
        group.resume.end([member.task.trial_id for member in group.members])
        return group.results

    def _resume(self, group: _Group, report: GroupReport) -> None:
        """Every member from its own checkpoint; they must agree on the epoch and the generators."""
        saved = group.resume_from
        assert saved is not None, "prepare reads the members' states of a group that resumes"
        for i, state in enumerate(saved):
            if state is not None:
                restore(state, self._parts(group, i), group.train_batches, self.device)
        group.sync_lr()
        leaving: dict[int, dict[str, Any]] = {}
        for member, state in zip(group.members, saved, strict=True):
            if state is None:
                continue
            group.epoch = int(state["epoch"])
            member.metrics, member.best, member.since_best = state["metrics"], state["best"], state["since_best"]
            report(member.task.trial_id, group.epoch, member.metrics)  # the server keeps what it has
            patience = member.settings.training.early_stop_patience
            if patience and member.since_best >= patience:
                leaving[member.task.trial_id] = _result(member.metrics, group.epoch, False)
        self._leave(group, leaving)

    def _leave(self, group: _Group, leaving: dict[int, dict[str, Any]]) -> None:
        """These members end with these results; the stack is rebuilt from the others."""
        if not leaving:
            return
        group.results.update(leaving)
        assert group.resume is not None
        for trial_id in leaving:
            group.resume.leave(trial_id)
        keep = [i for i, m in enumerate(group.members) if m.task.trial_id not in leaving]
        if keep:
            options = [group.members[i].settings.training.optimizer.options for i in keep]
            group.fused, group.optimizer = regroup(group.fused, group.optimizer, keep, options)
            if group.totals is not None:
                group.totals.keep(keep)
        group.members = [group.members[i] for i in keep]

    def _fused_epoch(self, group: _Group, epoch: int, should_stop: GroupShouldStop) -> _Pass | None:
        """One pass over the batches for every member; None when every member stopped before its end."""
        started = time.perf_counter()
        group.fused.train()
        group.totals = FusedTotals(group.members[0].loss, len(group.members), self.device)
        losses = group.losses()
        x = torch.empty(0)
        for x, y in group.train_batches:
            stopped = [m for m in group.members if should_stop(m.task.trial_id)]
            if stopped:
                self._leave(group, {m.task.trial_id: _result(m.metrics, epoch - 1, True) for m in stopped})
                if not group.members:
                    return None
                losses = group.losses()
            self._step(group, losses, x, y)
        return _Pass(x, started, time.perf_counter() - started)

    def _step(self, group: _Group, member_losses: MemberLosses, x: torch.Tensor, y: torch.Tensor) -> None:
        """One fused step: every member's loss, one backward per part of the stack (`train_parts`: one
        on a GPU), clipping and the step per member."""
        fused, training = group.fused, group.training
        parts = [
            train_part(fused, member_losses, x, y, part, self.device, training.precision)
            for part in train_parts(fused, x, self.device)
        ]
        outputs = torch.cat([out for out, _ in parts]) if len(parts) > 1 else parts[0][0]
        losses = torch.cat([loss for _, loss in parts]) if len(parts) > 1 else parts[0][1]
        if training.grad_clip_norm:
            clip_members(fused.params, training.grad_clip_norm)
        group.optimizer.step({name: p.grad for name, p in fused.params.items() if p.grad is not None})
        fused.zero_grad()
        if group.interval == "batch" and group.members[0].scheduler is not None:
            for member in group.members:
                member.scheduler.step()
            group.sync_lr()
        assert group.totals is not None
        group.totals.add(losses, outputs, y)

    def _end_epoch(
        self, group: _Group, epoch: int, done: _Pass, report: GroupReport, should_stop: GroupShouldStop
    ) -> None:
        """Each member's metrics and schedule step, the checkpoints (written together), the reports; then who leaves."""
        leaving: dict[int, dict[str, Any]] = {}
        saved: list[int] = []
        for index, (member, metrics) in enumerate(zip(group.members, self._measure(group, done), strict=True)):
            if not math.isfinite(metrics["train_loss"]):
                leaving[member.task.trial_id] = {"error": f"training loss diverged at epoch {epoch}"}
                continue
            member.metrics = {
                **metrics,
                "lr": member.lr,
                "epoch_seconds": time.perf_counter() - done.started,
                "train_seconds": done.train_seconds,
                **peak_memory(self.device),
                **group.counts,
            }
            if member.scheduler is not None and group.interval == "epoch":
                member.scheduler.step(member.metrics[group.monitor]) if group.monitor else member.scheduler.step()
                group.optimizer.lr[index] = member.lr  # before the checkpoint, which saves it
            member.best, member.since_best = _track(member, member.metrics)
            saved.append(index)
        self._save(group, saved, epoch)
        for index in saved:
            member = group.members[index]
            report(member.task.trial_id, epoch, member.metrics)
            patience = member.settings.training.early_stop_patience
            if should_stop(member.task.trial_id):
                leaving[member.task.trial_id] = _result(member.metrics, epoch, True)
            elif patience and member.since_best >= patience:
                leaving[member.task.trial_id] = _result(member.metrics, epoch, False)
        group.epoch = epoch
        self._leave(group, leaving)

    def _measure(self, group: _Group, done: _Pass) -> list[dict[str, float]]:
        """Every member's train and val metrics (one fused validation) and the group's latency, solo names.

        The inference latency is the architecture's (one input through one member's module), which
        every member shares, so it is measured once per group and reported by each member.
        """
        assert group.totals is not None
        trains = group.totals.read()
        measured, precision = group.members[0].measured, group.training.precision
        vals = evaluate_members(group.fused, group.val_batches, measured, precision, self.device, self.heartbeat)
        latency = latency_ms(group.fused.probe(0), done.last_input[:1], self.device)
        return [
            {
                "inference_latency_ms": latency,
                **prefixed("train", train),
                **prefixed("val", val),
            }
            for train, val in zip(trains, vals, strict=True)
        ]

    def _save(self, group: _Group, indices: list[int], epoch: int) -> None:
        """These members' states of `epoch` in the group's one resume file; each writes its own files
        (its checkpoint among them) when it leaves the group (`group_resume`)."""
        entries: dict[int, Entry] = {}
        for index in indices:
            member = group.members[index]
            parts = {**self._parts(group, index), "model": StateOf(group.fused.member_state_dict(index))}
            progress = {"epoch": epoch, "metrics": member.metrics, "best": member.best, "since_best": member.since_best}
            states = {name: part.state_dict() for name, part in parts.items() if part is not None}
            entries[member.task.trial_id] = {**progress, "parts": states}
        assert group.resume is not None
        group.resume.save(epoch, entries, capture_rng(group.train_batches, self.device))


def _track(member: Member, metrics: dict[str, float]) -> tuple[Any, int]:
    """The member's best objective value so far and the epochs since it improved (as the solo trainer)."""
    objective = member.task.objective
    value = metrics.get(objective.metric)
    if value is not None and (member.best is None or objective.better(value, member.best)):
        return value, 0
    return member.best, member.since_best + 1


def group_problem(
    tasks: Sequence[TrainTask], registry: PluginRegistry, data_root: str = "", device: str = "cpu"
) -> str | None:
    """Why these tasks cannot train as one fused group on `device`; None when they can (then `train_group`)."""
    made = GroupTrainer(registry, device, data_root).prepare(tasks)
    return made if isinstance(made, str) else None

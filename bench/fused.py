"""Fused trials (issue 17): K trials trained as one fused model against one by one, in one process
and through a server on two CPU slots.

    .venv/bin/python bench/fused.py              # 32 trials x 6 epochs per workload, K in 1, 2, 4, 8, 16, 3 rounds
    .venv/bin/python bench/fused.py --quick      # 16 trials x 3 epochs per workload, 3 rounds
    .venv/bin/python bench/fused.py --no-server  # the engine half alone

The engine half measures the trainers in this process: the same trials trained by
`server.worker.fused.trainer.GroupTrainer.train_group` in groups of K, and one by one by the solo
`server.worker.trainer.Trainer` (K=1: what today's warm worker does per trial), both warm (datasets
loaded and code paths run once before the clocks) and on one torch thread (`Placement(threads=1)`,
one CPU slot). The server half (`fused_server`) runs the same studies through a real server with
two CPU slots, over gRPC, with and without `resources.fuse`: the issue's baseline, today's unfused
warm workers on the same 2 slots, as a user meets it.

Workloads: `simple_cnn` on `digits` (SGD with momentum) and `mlp` on `breast_cancer` (Adam), one
shared seed (fusion needs it), searching `optimizer.lr` (log range) and `optimizer.weight_decay`
(log range). The configs come from the real `random` searcher built as the runner builds it
(`SpecValidator` → `build_search`, seeded) and are resolved with `study.settings.resolve`.

Figures per (workload, K), medians over `--repeat` rounds: wall, trials/s, samples/s (train
samples x epochs x trials / wall), the speedup in trials/s over K=1, and the largest difference of
any member's per-epoch val_accuracy / val_loss from its solo run, how many members left 1e-4 of
it, and how far the study's best val_accuracy (the value the search returns) is from the solo
study's. Below it, the same comparison for the solo runs trained again on two torch threads (no
fusion, untimed): another order of the float32 sums alone moves the members that are sensitive to
rounding, which is the floor for any fused run. The issue's CPU target: >= 3x the solo trials/s at
the best K. The last line printed is one JSON object (`server`: the server half's figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fused_server import ServerRow, measure_server, print_server_table, server_summary

from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.execution.messages import Placement, TrainTask
from tuneyard.server.study.search import build_search
from tuneyard.server.study.settings import TrialSettings, resolve
from tuneyard.server.study.spec import SpecValidator
from tuneyard.server.worker.allocator import keep_freed_memory
from tuneyard.server.worker.fused.trainer import GroupTrainer, group_problem
from tuneyard.server.worker.trainer import Trainer

TARGET = 3.0  # issue 17's CPU target: fused trials/s >= 3x the solo trials/s at the best K
COMPARED = ("val_accuracy", "val_loss")
ATOL = 1e-4  # tests/test_fused_trainer.py's tolerance per metric and epoch
FLOOR_THREADS = 2  # the solo runs again on this many torch threads: how far rounding alone moves them
SEED = 7
Reports = dict[int, list[tuple[int, dict[str, float]]]]  # trial id -> [(epoch, metrics)]


@dataclass(frozen=True)
class Workload:
    """One family of trials: a dataset, a model and an optimizer whose lr and weight decay are searched."""

    name: str
    dataset: str
    model: dict[str, Any]
    optimizer: dict[str, Any]
    batch_size: int
    lr: tuple[float, float]


WORKLOADS = (
    Workload(
        "digits simple_cnn",
        "digits",
        {"name": "simple_cnn", "options": {"num_filters": 16, "num_conv_layers": 2}},
        {"name": "sgd", "options": {"momentum": 0.9}},
        64,
        (1e-3, 0.3),
    ),
    Workload(
        "breast_cancer mlp",
        "breast_cancer",
        {"name": "mlp", "options": {"width": 64, "depth": 2}},
        {"name": "adam", "options": {}},
        32,
        (1e-4, 3e-2),
    ),
)


@dataclass(frozen=True)
class Row:
    """One (workload, K) measurement: median wall over the rounds, and the largest metric difference."""

    workload: str
    k: int
    trials: int
    wall_s: float
    trials_per_s: float
    samples_per_s: float
    train_pass_s: float  # the training passes' own seconds (the rest: validation, checkpoints, set-up)
    max_diff: dict[str, float]  # per compared metric, the largest |member - solo| over every epoch (0 for K=1)
    off_members: int  # members whose compared metrics left ATOL of their solo run at some epoch
    best_difference: float  # |the study's best val_accuracy - the solo study's| (what the search returns)

    @property
    def largest(self) -> float:
        return max(self.max_diff.values())


@dataclass(frozen=True)
class Floor:
    """The solo runs again on FLOOR_THREADS torch threads against the same solo runs on one: no fusion,
    only another order of the float32 sums. Members that move here are sensitive to rounding itself."""

    workload: str
    max_diff: dict[str, float]
    off_members: int
    best_difference: float


def spec_for(workload: Workload, trials: int, epochs: int) -> dict[str, Any]:
    """The study spec a user would send: the searched lr and weight decay, everything else fixed."""
    return {
        "dataset": {"name": workload.dataset},
        "model": workload.model,
        "training": {
            "epochs": epochs,
            "batch_size": workload.batch_size,
            "seed": SEED,
            "precision": "fp32",
            "optimizer": workload.optimizer,
        },
        "search_space": [
            {"name": "optimizer.lr", "float_range": {"low": workload.lr[0], "high": workload.lr[1], "log": True}},
            {"name": "optimizer.weight_decay", "float_range": {"low": 1e-6, "high": 1e-2, "log": True}},
        ],
        "searcher": {"name": "random"},
        "objective": {"metric": "val_accuracy", "mode": "MAXIMIZE"},
        "budget": {"max_trials": trials},
    }


def make_tasks(
    registry: PluginRegistry, spec: dict[str, Any], root: Path, tag: str, threads: int = 1
) -> list[TrainTask]:
    """The study's trials as the runner would hand them to workers: the searcher's configs, resolved."""
    plan = SpecValidator(registry).validate(spec)
    searcher, _ = build_search(plan, registry)
    tasks = []
    for trial_id in range(plan.max_trials):
        config = searcher.suggest(trial_id)
        assert config is not None, "the random searcher ran out of configurations"
        settings = resolve(plan.spec, config, registry)
        checkpoint = str(root / tag / f"t{trial_id}" / "checkpoint.pt")
        tasks.append(TrainTask(trial_id, settings, checkpoint, plan.objective, placement=Placement(threads=threads)))
    return tasks


def _append(into: list[tuple[int, dict[str, float]]], epoch: int, metrics: dict[str, float]) -> None:
    into.append((epoch, metrics))


def run_solo(trainer: Trainer, tasks: Sequence[TrainTask]) -> Reports:
    """Every task one after another on the warm solo trainer."""
    reports: Reports = {t.trial_id: [] for t in tasks}
    for task in tasks:
        trainer.train(task, functools.partial(_append, reports[task.trial_id]), lambda: False)
    return reports


def run_fused(trainer: GroupTrainer, tasks: Sequence[TrainTask], k: int) -> Reports:
    """The tasks in consecutive groups of K (the last one smaller when K does not divide them)."""
    reports: Reports = {t.trial_id: [] for t in tasks}
    for start in range(0, len(tasks), k):
        group = tasks[start : start + k]
        results = trainer.train_group(group, lambda i, e, m: reports[i].append((e, m)), lambda i: False)
        failed = {i: r["error"] for i, r in results.items() if "error" in r}
        if failed:
            raise RuntimeError(f"fused members failed: {failed}")
    return reports


def max_difference(fused: Reports, solo: Reports) -> tuple[dict[str, float], int]:
    """Per compared metric the largest |fused - solo| over every member and epoch; members off by > ATOL."""
    worst = dict.fromkeys(COMPARED, 0.0)
    off = 0
    for trial_id, alone in solo.items():
        mine = fused[trial_id]
        if [e for e, _ in mine] != [e for e, _ in alone]:
            return dict.fromkeys(COMPARED, math.inf), len(solo)  # other epochs than its solo run
        member = dict.fromkeys(COMPARED, 0.0)
        for (_, a), (_, b) in zip(mine, alone, strict=True):
            member = {key: max(member[key], abs(a[key] - b[key])) for key in COMPARED}
        worst = {key: max(worst[key], member[key]) for key in COMPARED}
        off += max(member.values()) > ATOL
    return worst, off


def study_best(reports: Reports) -> float:
    """The best val_accuracy any trial reached at any epoch: the value the study would return."""
    return max(m["val_accuracy"] for epochs in reports.values() for _, m in epochs)


def train_pass_s(reports: Reports, k: int) -> float:
    """Seconds in training passes: every trial's `train_seconds`, once per group (members share a pass)."""
    ids = sorted(reports)
    return sum(m["train_seconds"] for i in ids[::k] for _, m in reports[i])


def timed(solo: Trainer, fused: GroupTrainer, tasks: Sequence[TrainTask], k: int) -> tuple[float, Reports]:
    """The wall seconds of training these tasks solo (K=1) or in fused groups of K, and their reports."""
    started = time.perf_counter()
    reports = run_solo(solo, tasks) if k == 1 else run_fused(fused, tasks, k)
    return time.perf_counter() - started, reports


def warm_up(solo: Trainer, fused: GroupTrainer, tasks: Sequence[TrainTask]) -> None:
    """One epoch solo and one fused pair, so that the clocks exclude dataset loading and first calls."""
    short = []
    for task in tasks[:2]:
        settings = task.settings
        assert isinstance(settings, TrialSettings)
        one_epoch = dataclasses.replace(settings, training=dataclasses.replace(settings.training, epochs=1))
        short.append(dataclasses.replace(task, settings=one_epoch, checkpoint=f"{task.checkpoint}.warm"))
    run_solo(solo, short[:1])
    run_fused(fused, short, 2)


def check_groups(registry: PluginRegistry, spec: dict[str, Any], root: Path, ks: Sequence[int]) -> float:
    """Seconds `group_problem` takes to accept every group (outside the timed walls); raises if it refuses one."""
    started = time.perf_counter()
    tasks = make_tasks(registry, spec, root, "check")
    for k in (k for k in ks if k > 1):
        for start in range(0, len(tasks), k):
            problem = group_problem(tasks[start : start + k], registry)
            if problem is not None:
                raise RuntimeError(f"these trials cannot train fused: {problem}")
    return time.perf_counter() - started


def measure(
    workload: Workload, trials: int, epochs: int, ks: Sequence[int], repeat: int, root: Path
) -> tuple[list[Row], Floor, float]:
    """Every K's rows for one workload, its rounding floor, and the seconds `group_problem` took to
    accept its groups."""
    registry = PluginRegistry.load(entry_points=False)
    solo, fused = Trainer(registry, "cpu"), GroupTrainer(registry, "cpu")
    spec = spec_for(workload, trials, epochs)
    tasks = make_tasks(registry, spec, root, "warm")
    warm_up(solo, fused, tasks)
    settings = tasks[0].settings
    assert isinstance(settings, TrialSettings)
    samples = len(solo._dataset(settings.dataset).train) * epochs * trials  # the warm trainer's cached splits
    check_s = check_groups(registry, spec, root, ks)
    walls: dict[int, list[float]] = {k: [] for k in ks}
    passes: dict[int, list[float]] = {k: [] for k in ks}
    reports: dict[int, Reports] = {}
    for round_ in range(repeat):  # rounds interleave the Ks, so a swing of the machine's load touches each
        for k in ks:
            wall, reports[k] = timed(solo, fused, make_tasks(registry, spec, root, f"r{round_}k{k}"), k)
            walls[k].append(wall)
            passes[k].append(train_pass_s(reports[k], k))
    rows = []
    for k in ks:
        wall = statistics.median(walls[k])
        diff, off = max_difference(reports[k], reports[1]) if k > 1 else (dict.fromkeys(COMPARED, 0.0), 0)
        rate = trials / wall
        best = abs(study_best(reports[k]) - study_best(reports[1]))
        rows.append(
            Row(workload.name, k, trials, wall, rate, samples / wall, statistics.median(passes[k]), diff, off, best)
        )
    return rows, rounding_floor(workload, solo, registry, spec, root, reports[1]), check_s


def rounding_floor(
    workload: Workload, solo: Trainer, registry: PluginRegistry, spec: dict[str, Any], root: Path, alone: Reports
) -> Floor:
    """The solo runs once more on FLOOR_THREADS threads (untimed), compared as the fused rows are."""
    again = run_solo(solo, make_tasks(registry, spec, root, "floor", threads=FLOOR_THREADS))
    torch.set_num_threads(1)  # the placement set more; the next workload's clocks run on one slot
    diff, off = max_difference(again, alone)
    return Floor(workload.name, diff, off, abs(study_best(again) - study_best(alone)))


def print_floor(floors: Sequence[Floor]) -> None:
    print(f"solo runs on {FLOOR_THREADS} torch threads against the same solo runs on 1 (no fusion: rounding alone)")
    print("| workload          | max d val_acc | max d val_loss | members > 1e-4 | d best val_acc |")
    print("|-------------------|---------------|----------------|----------------|----------------|")
    for f in floors:
        print(
            f"| {f.workload:17s} | {f.max_diff['val_accuracy']:13.2e} | {f.max_diff['val_loss']:14.2e} "
            f"| {f.off_members:14d} | {f.best_difference:14.2e} |"
        )


def print_table(rows: Sequence[Row]) -> None:
    solo = {r.workload: r.trials_per_s for r in rows if r.k == 1}
    print(
        "| workload          |  K | trials |  wall s | train pass s | trials/s | samples/s | speedup "
        "| max d val_acc | max d val_loss | members > 1e-4 | d best val_acc |"
    )
    print(
        "|-------------------|----|--------|---------|--------------|----------|-----------|---------"
        "|---------------|----------------|----------------|----------------|"
    )
    for r in rows:
        speedup = r.trials_per_s / solo[r.workload]
        print(
            f"| {r.workload:17s} | {r.k:2d} | {r.trials:6d} | {r.wall_s:7.2f} | {r.train_pass_s:12.2f} "
            f"| {r.trials_per_s:8.3f} | {r.samples_per_s:9.0f} | {speedup:6.2f}x "
            f"| {r.max_diff['val_accuracy']:13.2e} | {r.max_diff['val_loss']:14.2e} | {r.off_members:14d} "
            f"| {r.best_difference:14.2e} |"
        )


def summary(
    rows: Sequence[Row],
    floors: Sequence[Floor],
    server_rows: Sequence[ServerRow],
    args: argparse.Namespace,
    check_s: dict[str, float],
) -> dict[str, Any]:
    """The headline figures: per workload the best K's speedup over K=1, in one process and through the
    server on two slots, and whether the target is met in each."""
    speedup, best_k, solo_rate, best_rate = {}, {}, {}, {}
    server = server_summary(server_rows) if server_rows else {}
    for name in dict.fromkeys(r.workload for r in rows):
        mine = [r for r in rows if r.workload == name]
        base = next(r for r in mine if r.k == 1)
        best = max(mine, key=lambda r: r.trials_per_s)
        speedup[name], best_k[name] = best.trials_per_s / base.trials_per_s, best.k
        solo_rate[name], best_rate[name] = base.trials_per_s, best.trials_per_s
    return {
        "trials": args.trials,
        "epochs": args.epochs,
        "ks": args.ks,
        "repeat": args.repeat,
        "torch_threads": 1,
        "solo_trials_per_s": solo_rate,
        "best_trials_per_s": best_rate,
        "speedup_trials_per_s": speedup,
        "best_k": best_k,
        "max_member_metric_difference": max((r.largest for r in rows), default=0.0),
        "max_member_metric_difference_by_k": {f"{r.workload} K={r.k}": r.max_diff for r in rows if r.k > 1},
        "members_off_by_more_than_1e-4": {f"{r.workload} K={r.k}": r.off_members for r in rows if r.k > 1},
        "study_best_val_accuracy_difference": {f"{r.workload} K={r.k}": r.best_difference for r in rows if r.k > 1},
        "solo_rounding_floor": {
            f.workload: {
                "threads": FLOOR_THREADS,
                "max_difference": f.max_diff,
                "members_off_by_more_than_1e-4": f.off_members,
                "study_best_val_accuracy_difference": f.best_difference,
            }
            for f in floors
        },
        "group_problem_s": check_s,
        "target": f"fused trials/s >= {TARGET}x the solo trials/s at the best K, every workload (CPU)",
        "target_met": all(v >= TARGET for v in speedup.values()),
        "server": server,
        "server_target_met": bool(server_rows) and all(v >= TARGET for v in server["speedup_trials_per_s"].values()),
    }


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 trials x 3 epochs")
    parser.add_argument("--trials", type=int, default=0, help="trials per workload (default 32, quick 16)")
    parser.add_argument("--epochs", type=int, default=0, help="epochs per trial (default 6, quick 3)")
    parser.add_argument("--ks", default="1,2,4,8,16", help="group sizes, comma-separated (1: solo)")
    parser.add_argument("--repeat", type=int, default=0, help="rounds per K, median wall (default 3)")
    parser.add_argument("--workloads", default="", help="comma-separated workload names' first words")
    parser.add_argument("--no-server", action="store_true", help="skip the half through a server on 2 CPU slots")
    args = parser.parse_args(argv)
    args.trials = args.trials or (16 if args.quick else 32)
    args.epochs = args.epochs or (3 if args.quick else 6)
    args.repeat = args.repeat or 3
    args.ks = sorted({int(k) for k in args.ks.split(",")} | {1})  # K=1 is the baseline
    return args


def main(argv: Sequence[str] = sys.argv[1:]) -> dict[str, Any]:
    args = parse(argv)
    torch.set_num_threads(1)  # one CPU slot
    keep_freed_memory()  # as a worker process does
    chosen = [w for w in WORKLOADS if not args.workloads or w.name.split()[0] in args.workloads.split(",")]
    print(
        f"fused trials: {args.trials} trials x {args.epochs} epochs per workload, K in {args.ks}, "
        f"{args.repeat} round(s), 1 torch thread, torch {torch.__version__}"
    )
    rows: list[Row] = []
    floors: list[Floor] = []
    check_s: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="tuneyard-fused-bench-") as folder:
        for workload in chosen:
            mine, floor, check_s[workload.name] = measure(
                workload, args.trials, args.epochs, args.ks, args.repeat, Path(folder) / workload.dataset
            )
            rows.extend(mine)
            floors.append(floor)
    print_table(rows)
    print_floor(floors)
    server_rows: list[ServerRow] = []
    if not args.no_server:
        for workload in chosen:
            spec = spec_for(workload, args.trials, args.epochs)
            server_rows.extend(measure_server(workload.name, spec, args.trials, args.ks, args.repeat, COMPARED, ATOL))
        print_server_table(server_rows)
    result = summary(rows, floors, server_rows, args, check_s)
    verdicts = [("one process, 1 slot", result)] + ([("server, 2 slots", result["server"])] if server_rows else [])
    for where, figures in verdicts:
        for name, value in figures["speedup_trials_per_s"].items():
            verdict = "MET" if value >= TARGET else "NOT MET"
            print(f"target >= {TARGET}x ({name}, {where}): {value:.2f}x at K={figures['best_k'][name]}: {verdict}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

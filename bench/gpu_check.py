"""GPU check for a lent CUDA machine: (a) tuneyard's training throughput vs a plain PyTorch loop,
(b) 8 small trials with gpus_per_trial 1 vs 0.25, (c) the device data pipeline vs a DataLoader,
(d) fused trials vs one trial per GPU vs packed processes vs packed processes under MPS.

(d) is issue 17's GPU check: one study of 64 trials (`simple_cnn`, 16 filters, on `synthetic`
3x32x32 data, 4,000 train samples, 3 epochs, 2 with --quick; sgd with momentum, one seed,
searching `optimizer.lr` and `optimizer.weight_decay`, so any trials may fuse) four ways:
gpus_per_trial 1 (one trial at a time), 0.25 (4 packed worker processes), 0.25 on a server of its
own started with `mps=True` after the main one stopped ("n/a: <why>" when MPS cannot run or its
study fails), and `resources.fuse: 16` with gpus_per_trial 1. Each server first runs an unmeasured
warm-up study (4 packed one-epoch trials: its workers started, (d)'s data built). Aggregate
samples/s = train samples x epochs trained by all trials / the study's wall seconds (CreateStudy
until WatchStudy ends: scheduling, validation and checkpoints included); trials/s likewise.
Targets: fused >= 8x one per GPU and >= 2.5x the best packing (with or without MPS).
About 3 minutes of the check on an H100 (estimated; the whole check stays under 8).

Usage: python bench/gpu_check.py [--quick] [--smoke]    (prints one table; the last line is JSON)
    --smoke: tiny sizes on CPU (part (d): 4 trials x 2 epochs, fuse 2; its MPS row is n/a)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch
from google.protobuf import json_format
from torch import nn

from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.app import start_server
from tuneyard.server.execution.mps import MpsError
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc, spec_pb2

BIG = {
    "name": "synthetic",
    "options": {
        "num_samples": 24000,
        "num_classes": 10,
        "channels": 3,
        "size": 32,
        "val_fraction": 0.1,
        "test_fraction": 0.1,
    },
}
SMALL = {
    "name": "synthetic",
    "options": {
        "num_samples": 12000,
        "num_classes": 10,
        "channels": 1,
        "size": 16,
        "val_fraction": 0.1,
        "test_fraction": 0.1,
    },
}


CIFAR = {
    "name": "synthetic",
    "options": {
        "num_samples": 5000,
        "num_classes": 10,
        "channels": 3,
        "size": 32,
        "val_fraction": 0.1,
        "test_fraction": 0.1,
    },
}
CNN = {"name": "simple_cnn", "options": {"num_filters": 16, "num_conv_layers": 2}}
FUSE_TARGETS = {"fused_vs_one_per_gpu": 8.0, "fused_vs_best_packing": 2.5}  # issue 17, part (d)
STUDY_GUARD_S = 300  # part (d)'s budget.max_duration: a hung row ends, the check goes on


def spec(
    dataset: dict,
    model: dict,
    *,
    epochs: int,
    batch: int,
    trials: int = 1,
    gpus: float = 1.0,
    pipeline: str = "auto",
    concurrent: int = 1,
) -> dict[str, Any]:
    return {
        "name": "gpu-check",
        "dataset": dataset,
        "model": model,
        "training": {
            "epochs": epochs,
            "batch_size": batch,
            "seed": 0,
            "data_pipeline": pipeline,
            "optimizer": {"name": "sgd", "options": {"lr": 0.05, "momentum": 0.9}},
        },
        "search_space": [{"name": "training.seed", "int_range": {"low": 0, "high": 100000}}] if trials > 1 else [],
        "objective": {"metric": "val_accuracy", "mode": "MAXIMIZE"},
        "budget": {"max_trials": trials, "max_concurrent_trials": concurrent},
        "resources": {"gpus_per_trial": gpus},
    }


class StudyFailed(RuntimeError):
    """A study of the check did not complete (part (d) reports its MPS row n/a on this)."""


def run_study(stub, body: dict) -> tuple[float, list[pb.Trial]]:
    started = time.perf_counter()
    study = stub.CreateStudy(pb.CreateStudyRequest(spec=json_format.ParseDict(body, spec_pb2.StudySpec())))
    for _ in stub.WatchStudy(pb.WatchStudyRequest(study_id=study.study_id)):
        pass
    wall = time.perf_counter() - started
    done = stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id))
    if done.state != pb.STUDY_COMPLETED:
        raise StudyFailed(f"study {study.study_id} ended {pb.StudyState.Name(done.state)}: {done.error}")
    return wall, list(stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id)).trials)


def steady_epoch_s(trial: pb.Trial) -> float:
    """Median training time of an epoch (without validation), leaving out the first (warm-up)."""
    times = [m.values["train_seconds"] for m in trial.metrics]
    return statistics.median(times[1:] if len(times) > 1 else times)


def plain_loop(epochs: int, batch: int) -> float:
    """The same model, data and optimizer in a hand-written loop; returns the median epoch time."""
    registry = PluginRegistry.load()
    splits = registry.create("dataset", BIG["name"], BIG["options"], root="")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = registry.create(
        "model",
        "resnet18",
        {"small_input": True},
        input_shape=tuple(splits.input_shape),
        num_classes=splits.num_classes,
    ).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = (t.to(device) for t in splits.train.tensors)
    mean = torch.tensor(splits.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(splits.std, device=device).view(1, -1, 1, 1)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for _ in range(epochs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(x), device=device)
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            inputs = ((x[idx] - mean) / std).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = loss_fn(model(inputs).float(), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


Row = tuple[str, str, float | None, str]  # part, measurement, value (None: n/a), note


def part_a(stub, epochs: int, train: int) -> tuple[list[Row], dict[str, float]]:
    """(a) one resnet18 trial against the hand-written loop."""
    _, (trial,) = run_study(
        stub, spec(BIG, {"name": "resnet18", "options": {"small_input": True}}, epochs=epochs, batch=256)
    )
    ours = train / steady_epoch_s(trial)
    plain = train / plain_loop(epochs, 256)
    verdict = "met" if ours / plain >= 0.95 else "missed"
    rows: list[Row] = [
        ("a", "tuneyard trial, resnet18 32px, samples/s", ours, ""),
        ("a", "plain PyTorch loop, samples/s", plain, ""),
        ("a", "ratio (target >= 0.95)", ours / plain, verdict),
    ]
    return rows, {"throughput_ratio": ours / plain}


def parts_b_c(stub, epochs: int, train: int) -> tuple[list[Row], dict[str, float]]:
    """(b) 8 small trials, whole GPU each vs four packed per GPU; (c) device pipeline vs DataLoader."""
    small_model = {"name": "simple_cnn", "options": {"num_filters": 32, "num_conv_layers": 2}}
    rows: list[Row] = []
    rate = {}
    for gpus in (1.0, 0.25):
        wall, trials = run_study(
            stub, spec(SMALL, small_model, epochs=epochs, batch=128, trials=8, gpus=gpus, concurrent=8)
        )
        rate[gpus] = sum(train * t.epochs_completed for t in trials) / wall
        rows.append(("b", f"8 trials, gpus_per_trial {gpus:g}: aggregate samples/s", rate[gpus], f"{wall:.1f} s"))
    result = {"packing_ratio": rate[0.25] / rate[1.0]}
    rows.append(("b", "ratio 0.25 / 1", result["packing_ratio"], ""))
    speed = {}
    for pipeline in ("device", "loader"):
        _, (trial,) = run_study(stub, spec(SMALL, small_model, epochs=epochs, batch=128, pipeline=pipeline))
        speed[pipeline] = train / steady_epoch_s(trial)
        rows.append(("c", f"data_pipeline {pipeline}: samples/s", speed[pipeline], ""))
    result["fast_path_ratio"] = speed["device"] / speed["loader"]
    rows.append(("c", "ratio device / loader", result["fast_path_ratio"], ""))
    return rows, result


@dataclass(frozen=True)
class Sizes:
    """Part (d)'s study: its trials, their epochs and the fused group size."""

    trials: int
    epochs: int
    fuse: int


@dataclass(frozen=True)
class Aggregate:
    """One configuration of part (d): its study's wall time and what its trials trained in it."""

    wall_s: float
    samples: int
    trials_done: int
    fused: int  # trials that trained in a fused group

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s

    @property
    def trials_per_s(self) -> float:
        return self.trials_done / self.wall_s


def fusable_spec(sizes: Sizes, gpus: float, fuse: int = 0) -> dict[str, Any]:
    """Part (d)'s study: only the optimizer's lr and weight decay are searched (sgd with momentum,
    one seed), so every pair of trials may train fused."""
    body = spec(CIFAR, CNN, epochs=sizes.epochs, batch=128, trials=sizes.trials, gpus=gpus, concurrent=sizes.trials)
    body["search_space"] = [
        {"name": "optimizer.lr", "float_range": {"low": 1e-3, "high": 0.3, "log": True}},
        {"name": "optimizer.weight_decay", "float_range": {"low": 1e-6, "high": 1e-2, "log": True}},
    ]
    body["searcher"] = {"name": "random"}
    body["budget"]["max_duration"] = f"{STUDY_GUARD_S}s"  # a hung worker (e.g. under MPS) ends the row, not the check
    if fuse > 1:
        body["resources"]["fuse"] = fuse
    return body


def aggregate(stub, body: dict[str, Any]) -> Aggregate:
    wall, trials = run_study(stub, body)
    train = int(CIFAR["options"]["num_samples"] * (1 - 0.1 - 0.1))
    epochs = body["training"]["epochs"]
    done = sum(1 for t in trials if t.state == pb.TRIAL_COMPLETED and t.epochs_completed == epochs)
    fused = sum(1 for t in trials if t.fused_group)
    return Aggregate(wall, sum(train * t.epochs_completed for t in trials), done, fused)


def warm_up(stub) -> None:
    """An unmeasured study of 4 packed one-epoch trials: every worker has started and built (d)'s data."""
    run_study(stub, fusable_spec(Sizes(4, 1, 1), gpus=0.25))


def mps_aggregate(sizes: Sizes, devices: str) -> Aggregate | str:
    """Row (d3) on a server of its own started with `mps=True`, its packed workers started by an
    unmeasured warm-up study first, as on the main server; the reason when n/a."""
    try:
        handle = start_server(data_dir=Path(tempfile.mkdtemp()), devices=devices, mps=True)
    except MpsError as exc:
        return f"n/a: {exc}"
    try:
        stub = service_pb2_grpc.TrainingServiceStub(grpc.insecure_channel(handle.address))
        warm_up(stub)
        measured = aggregate(stub, fusable_spec(sizes, gpus=0.25))
    except StudyFailed as exc:
        return f"n/a: {exc}"
    finally:
        handle.stop()
    return measured if measured.samples else "n/a: no trial trained under MPS"


def part_d_runs(stub, sizes: Sizes) -> dict[str, Aggregate | str]:
    """(d) on the main server: one trial at a time, 4 packed processes, fused K (the MPS row needs
    a server of its own, started once this one has stopped and its workers' CUDA contexts are gone)."""
    warm_up(stub)
    return {
        "one_per_gpu": aggregate(stub, fusable_spec(sizes, gpus=1.0)),
        "packed": aggregate(stub, fusable_spec(sizes, gpus=0.25)),
        "fused": aggregate(stub, fusable_spec(sizes, gpus=1.0, fuse=sizes.fuse)),
    }


def part_d(runs: dict[str, Aggregate | str], sizes: Sizes) -> tuple[list[Row], dict[str, Any]]:
    """(d)'s rows and figures: its four runs, fused against one per GPU and against the best packing."""
    labels = {
        "one_per_gpu": "gpus_per_trial 1",
        "packed": "gpus_per_trial 0.25 (4 processes)",
        "packed_mps": "gpus_per_trial 0.25 under --mps",
        "fused": f"fuse {sizes.fuse}, gpus_per_trial 1",
    }
    head = f"{sizes.trials} trials x {sizes.epochs} epochs"
    rows: list[Row] = []
    for key in ("one_per_gpu", "packed", "packed_mps", "fused"):
        run = runs[key]
        if isinstance(run, str):
            rows.append(("d", f"{head}, {labels[key]}: aggregate samples/s", None, run))
            continue
        note = f"{run.wall_s:.1f} s, {run.trials_per_s:.2f} trials/s, {run.trials_done} done, {run.fused} fused"
        rows.append(("d", f"{head}, {labels[key]}: aggregate samples/s", run.samples_per_s, note))
    measured = {k: v for k, v in runs.items() if isinstance(v, Aggregate)}
    fused, best = measured["fused"].samples_per_s, max(measured[k].samples_per_s for k in measured if "packed" in k)
    result: dict[str, Any] = {
        "fused_vs_one_per_gpu": fused / measured["one_per_gpu"].samples_per_s,
        "fused_vs_best_packing": fused / best,
    }
    for key, target in FUSE_TARGETS.items():
        rows.append(("d", f"{key} (target >= {target:g})", result[key], "met" if result[key] >= target else "missed"))
    result["fused_raw"] = {k: raw(v) for k, v in runs.items()}
    return rows, result


def raw(run: Aggregate | str) -> dict[str, float | int] | str:
    if isinstance(run, str):
        return run
    return {
        "wall_s": round(run.wall_s, 3),
        "samples_per_s": round(run.samples_per_s, 1),
        "trials_per_s": round(run.trials_per_s, 4),
        "trials_done": run.trials_done,
        "fused": run.fused,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, to check the script itself")
    args = parser.parse_args()
    epochs = 3 if args.quick else 5
    sizes = Sizes(64, 2 if args.quick else 3, 16)
    if args.smoke:
        BIG["options"]["num_samples"], SMALL["options"]["num_samples"], epochs = 600, 600, 2
        CIFAR["options"]["num_samples"], sizes = 200, Sizes(4, 2, 2)
    train_big = int(BIG["options"]["num_samples"] * 0.8)
    train_small = int(SMALL["options"]["num_samples"] * 0.8)
    devices = "cpu" if args.smoke else "all"
    handle = start_server(data_dir=Path(tempfile.mkdtemp()), devices=devices)
    rows: list[Row] = []
    result: dict[str, Any] = {}
    try:
        stub = service_pb2_grpc.TrainingServiceStub(grpc.insecure_channel(handle.address))
        for part in (part_a(stub, epochs, train_big), parts_b_c(stub, epochs, train_small)):
            rows += part[0]
            result |= part[1]
        runs = part_d_runs(stub, sizes)
    finally:
        handle.stop()
    runs["packed_mps"] = mps_aggregate(sizes, devices)
    rows_d, result_d = part_d(runs, sizes)
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"device: {name}, torch {torch.__version__}")
    print("| part | measurement | value | note |\n|---|---|---|---|")
    for part_name, label, value, note in rows + rows_d:
        shown = "n/a" if value is None else f"{value:,.2f}"
        print(f"| {part_name} | {label} | {shown} | {note} |")
    result |= {k: round(v, 4) for k, v in result_d.items() if isinstance(v, float)}
    targets = {"throughput_target": 0.95} | {f"{k}_target": v for k, v in FUSE_TARGETS.items()}
    print(json.dumps({k: round(v, 4) for k, v in result.items()} | targets | {"fused_raw": result_d["fused_raw"]}))


if __name__ == "__main__":
    main()

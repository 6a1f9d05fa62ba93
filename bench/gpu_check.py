"""GPU check for a lent CUDA machine: (a) tuneyard's training throughput vs a plain PyTorch loop,
(b) 8 small trials with gpus_per_trial 1 vs 0.25, (c) the device data pipeline vs a DataLoader.

Usage: python bench/gpu_check.py [--quick]    (prints one table; the last line is JSON)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import torch
from google.protobuf import json_format
from torch import nn

from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.app import start_server
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


def run_study(stub, body: dict) -> tuple[float, list[pb.Trial]]:
    started = time.perf_counter()
    study = stub.CreateStudy(pb.CreateStudyRequest(spec=json_format.ParseDict(body, spec_pb2.StudySpec())))
    for _ in stub.WatchStudy(pb.WatchStudyRequest(study_id=study.study_id)):
        pass
    wall = time.perf_counter() - started
    done = stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id))
    assert done.state == pb.STUDY_COMPLETED, done.error
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, to check the script itself")
    args = parser.parse_args()
    epochs = 3 if args.quick else 5
    if args.smoke:
        BIG["options"]["num_samples"], SMALL["options"]["num_samples"], epochs = 600, 600, 2
    train_big = int(BIG["options"]["num_samples"] * 0.8)
    train_small = int(SMALL["options"]["num_samples"] * 0.8)
    handle = start_server(data_dir=Path(tempfile.mkdtemp()), devices="cpu" if args.smoke else "all")
    rows: list[tuple[str, str, float, str]] = []
    result: dict[str, Any] = {}
    try:
        stub = service_pb2_grpc.TrainingServiceStub(grpc.insecure_channel(handle.address))
        # (a) one trial vs the plain loop
        _, (trial,) = run_study(
            stub, spec(BIG, {"name": "resnet18", "options": {"small_input": True}}, epochs=epochs, batch=256)
        )
        ours = train_big / steady_epoch_s(trial)
        plain = train_big / plain_loop(epochs, 256)
        result["throughput_ratio"] = ours / plain
        verdict = "met" if ours / plain >= 0.95 else "missed"
        rows += [
            ("a", "tuneyard trial, resnet18 32px, samples/s", ours, ""),
            ("a", "plain PyTorch loop, samples/s", plain, ""),
            ("a", "ratio (target >= 0.95)", ours / plain, verdict),
        ]
        # (b) 8 small trials, whole GPU each vs four packed per GPU
        small_model = {"name": "simple_cnn", "options": {"num_filters": 32, "num_conv_layers": 2}}
        aggregate = {}
        for gpus in (1.0, 0.25):
            wall, trials = run_study(
                stub, spec(SMALL, small_model, epochs=epochs, batch=128, trials=8, gpus=gpus, concurrent=8)
            )
            aggregate[gpus] = sum(train_small * t.epochs_completed for t in trials) / wall
            label = f"8 trials, gpus_per_trial {gpus:g}: aggregate samples/s"
            rows.append(("b", label, aggregate[gpus], f"{wall:.1f} s"))
        result["packing_ratio"] = aggregate[0.25] / aggregate[1.0]
        rows.append(("b", "ratio 0.25 / 1", result["packing_ratio"], ""))
        # (c) device pipeline vs DataLoader, same trial
        speed = {}
        for pipeline in ("device", "loader"):
            _, (trial,) = run_study(stub, spec(SMALL, small_model, epochs=epochs, batch=128, pipeline=pipeline))
            speed[pipeline] = train_small / steady_epoch_s(trial)
            rows.append(("c", f"data_pipeline {pipeline}: samples/s", speed[pipeline], ""))
        result["fast_path_ratio"] = speed["device"] / speed["loader"]
        rows.append(("c", "ratio device / loader", result["fast_path_ratio"], ""))
    finally:
        handle.stop()
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"device: {name}, torch {torch.__version__}")
    print("| part | measurement | value | note |\n|---|---|---|---|")
    for part, label, value, note in rows:
        print(f"| {part} | {label} | {value:,.2f} | {note} |")
    print(json.dumps({k: round(v, 4) for k, v in result.items()} | {"throughput_target": 0.95}))


if __name__ == "__main__":
    main()

"""GPU check: runs the digits search on CUDA slots and prints a table of what ran where.

Usage: python bench/gpu_check.py [--trials 8] [--epochs 6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import yaml
from google.protobuf import json_format

from tuneyard.server.app import start_server
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc, spec_pb2

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits.yaml"


def run(devices: str, trials: int, epochs: int) -> dict:
    spec = yaml.safe_load(EXAMPLE.read_text())
    spec["training"]["epochs"] = epochs
    spec["budget"] = {"max_trials": trials, "max_concurrent_trials": 2}
    started = time.perf_counter()
    handle = start_server(data_dir=Path(tempfile.mkdtemp()), devices=devices)
    boot = time.perf_counter() - started
    try:
        stub = service_pb2_grpc.TrainingServiceStub(grpc.insecure_channel(handle.address))
        t0 = time.perf_counter()
        study = stub.CreateStudy(pb.CreateStudyRequest(spec=json_format.ParseDict(spec, spec_pb2.StudySpec())))
        first_epoch = None
        for event in stub.WatchStudy(pb.WatchStudyRequest(study_id=study.study_id)):
            if event.WhichOneof("event") == "trial_progress" and first_epoch is None:
                first_epoch = time.perf_counter() - t0
        wall = time.perf_counter() - t0
        done = stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id))
        trials_ = stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id)).trials
        epoch_s = [m.values["epoch_seconds"] for t in trials_ for m in t.metrics]
        return {
            "devices": devices,
            "state": pb.StudyState.Name(done.state),
            "error": done.error,
            "trial_devices": sorted({t.device for t in trials_}),
            "failed": [t.error.splitlines()[-1] for t in trials_ if t.state == pb.TRIAL_FAILED],
            "boot_s": boot,
            "first_epoch_s": first_epoch,
            "wall_s": wall,
            "median_epoch_s": statistics.median(epoch_s) if epoch_s else float("nan"),
            "best_val": done.best_trial.objective_value,
            "test_accuracy": done.test_metrics.get("test_accuracy", float("nan")),
        }
    finally:
        handle.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--devices", default="all,cpu")
    args = parser.parse_args()
    rows = [run(d, args.trials, args.epochs) for d in args.devices.split(",")]
    keys = ["devices", "state", "trial_devices", "boot_s", "first_epoch_s", "wall_s", "median_epoch_s", "best_val",
            "test_accuracy"]  # fmt: skip
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        cells = [f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        print("| " + " | ".join(cells) + " |")
    for row in rows:
        if row["error"] or row["failed"]:
            print(f"{row['devices']}: error={row['error']!r} failed={row['failed']}")


if __name__ == "__main__":
    main()

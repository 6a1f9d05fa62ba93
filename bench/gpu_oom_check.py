"""GPU check of packing under memory pressure: packed fp16 trials whose declared memory is too small run
out of GPU memory, are re-queued with a larger share, and complete. Prints what happened to each trial.

Usage: python bench/gpu_oom_check.py
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import grpc
from google.protobuf import json_format

from tuneyard.server.app import start_server
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc, spec_pb2

SPEC = {
    "name": "oom-requeue",
    "dataset": {"name": "synthetic", "options": {"num_samples": 4000, "num_classes": 10, "channels": 3, "size": 32}},
    "model": {"name": "resnet18", "options": {"small_input": True}},
    "training": {
        "epochs": 2,
        "batch_size": 512,
        "precision": "fp16",
        "optimizer": {"name": "sgd", "options": {"lr": 0.05, "momentum": 0.9}},
    },
    "search_space": [{"name": "training.seed", "int_range": {"low": 0, "high": 1000}}],
    "objective": {"metric": "val_accuracy", "mode": "MAXIMIZE"},
    "budget": {"max_trials": 2, "max_concurrent_trials": 2},
    "resources": {"gpus_per_trial": 0.25, "gpu_memory_gb": 0.3},
}


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
    handle = start_server(data_dir=Path(tempfile.mkdtemp()), devices="all")
    try:
        stub = service_pb2_grpc.TrainingServiceStub(grpc.insecure_channel(handle.address))
        started = time.perf_counter()
        study = stub.CreateStudy(pb.CreateStudyRequest(spec=json_format.ParseDict(SPEC, spec_pb2.StudySpec())))
        for _ in stub.WatchStudy(pb.WatchStudyRequest(study_id=study.study_id)):
            pass
        done = stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id))
        print(f"study {pb.StudyState.Name(done.state)} in {time.perf_counter() - started:.1f} s {done.error}")
        for t in stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id)).trials:
            peak = t.final_metrics.get("peak_memory_gb", float("nan"))
            print(
                f"trial {t.trial_id}: {pb.TrialState.Name(t.state)} on {t.device}, epochs {t.epochs_completed}, "
                f"val_accuracy {t.final_metrics.get('val_accuracy', float('nan')):.3f}, peak {peak:.2f} GB "
                f"{t.error.strip().splitlines()[-1] if t.error else ''}"
            )
    finally:
        handle.stop()


if __name__ == "__main__":
    main()

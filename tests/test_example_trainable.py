"""examples/trainable: the training file users copy runs as a study from its own spec, through a plugins
folder, on a real server (a shorter budget than the example's), and resumes exactly from its checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import json_format
from support import REPO, watch_all

from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc, spec_pb2

EXAMPLE = REPO / "examples" / "trainable"


def test_the_example_trainable_runs_its_own_spec(tmp_path: Path) -> None:
    from tuneyard.server.app import start_server

    spec: dict[str, Any] = yaml.safe_load((EXAMPLE / "spec.yaml").read_text())
    spec["training"]["epochs"] = 3
    spec["budget"] = {"max_trials": 2, "max_concurrent_trials": 2}
    handle = start_server(data_dir=tmp_path / "data", devices="cpu", cpu_slots=2, plugins_dir=EXAMPLE)
    try:
        with grpc.insecure_channel(handle.address) as channel:
            stub = service_pb2_grpc.TrainingServiceStub(channel)
            message = json_format.ParseDict(spec, spec_pb2.StudySpec())
            study_id = stub.CreateStudy(pb.CreateStudyRequest(spec=message), timeout=30).study_id
            assert watch_all(stub, study_id)[-1].study_state.state == pb.STUDY_COMPLETED
            trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study_id), timeout=30).trials
            assert len(trials) == 2
            for trial in trials:
                assert trial.state in (pb.TRIAL_COMPLETED, pb.TRIAL_PRUNED), trial.error
                assert math.isfinite(trial.final_metrics["val_mse"])
            best = stub.GetStudy(pb.GetStudyRequest(study_id=study_id), timeout=30).best_trial
            assert best.objective_value == min(t.objective_value for t in trials if t.state == pb.TRIAL_COMPLETED)
    finally:
        handle.stop()


class Crash(Exception):
    """The worker dying in the middle of a step."""


def test_the_example_trainable_resumed_from_its_checkpoint_goes_on_as_if_never_stopped(tmp_path: Path) -> None:
    import importlib.util

    import torch

    from tuneyard.server.worker.trainable import TrialHandle

    loaded = importlib.util.spec_from_file_location("example_regression", EXAMPLE / "regression.py")
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)

    def run(folder: Path, resumed: bool, crash_at: int = 0) -> dict[int, dict[str, float]]:
        reported: dict[int, dict[str, float]] = {}

        def send(step: int, metrics: dict[str, float]) -> None:
            reported.setdefault(step, metrics)
            if step == crash_at:
                raise Crash  # after the report, before the step's checkpoint

        trial = TrialHandle("cpu", 1, 7, "s", 1, "", folder, resumed, 6, send, lambda: False)
        torch.manual_seed(trial.seed)  # as the worker seeds every trial before calling its trainable
        try:
            module.diabetes_mlp(trial=trial, epochs=6, lr=0.003, width=16)
        except Crash:
            pass
        return reported

    (tmp_path / "straight").mkdir()
    (tmp_path / "crashed").mkdir()  # the runner makes the trial's folder before the call
    straight = run(tmp_path / "straight", resumed=False)
    first = run(tmp_path / "crashed", resumed=False, crash_at=4)
    again = run(tmp_path / "crashed", resumed=True)
    assert sorted(first) == [1, 2, 3, 4] and sorted(again) == [4, 5, 6]  # step 4 was not saved: done again
    assert {**first, **again} == straight  # the same numbers, exactly

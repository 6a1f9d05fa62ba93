"""Trials that raise, and budgets that end a study: the server records why and goes on."""

from __future__ import annotations

from support import tiny_spec, to_proto, watch_all

from tuneyard.v1 import service_pb2 as pb


def run_study(stub, spec) -> tuple[pb.Study, list[pb.StudyEvent]]:
    study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))
    events = watch_all(stub, study.study_id)
    return stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id)), events


def test_trial_that_raises_fails_with_its_error_and_the_worker_lives_on(stub):
    diverging = tiny_spec(
        training={"epochs": 2, "optimizer": {"name": "sgd", "options": {"lr": 1e30, "momentum": 0.9}}},
        search_space=[],
        budget={"max_trials": 1},
    )
    study, events = run_study(stub, diverging)
    assert study.state == pb.STUDY_FAILED
    assert "no trial completed" in study.error
    trial = stub.GetTrial(pb.GetTrialRequest(study_id=study.study_id, trial_id=1))
    assert trial.state == pb.TRIAL_FAILED
    assert "FloatingPointError" in trial.error and "diverged" in trial.error
    finished = [e.trial_finished.trial for e in events if e.WhichOneof("event") == "trial_finished"]
    assert finished[0].error == trial.error

    healthy, _ = run_study(stub, tiny_spec(budget={"max_trials": 1}))
    assert healthy.state == pb.STUDY_COMPLETED


def test_exceeding_max_failures_fails_the_study(stub):
    spec = tiny_spec(
        training={"epochs": 1, "optimizer": {"name": "sgd", "options": {"lr": 1e30, "momentum": 0.9}}},
        search_space=[{"name": "model.num_conv_layers", "int_range": {"low": 1, "high": 3}}],
        budget={"max_trials": 3, "max_concurrent_trials": 1, "max_failures": 1},
    )
    study, _ = run_study(stub, spec)
    assert study.state == pb.STUDY_FAILED
    assert "max_failures" in study.error
    assert study.trial_counts.failed == 2  # stops once failures exceed the budget


def test_max_duration_stops_running_trials_and_keeps_their_results(stub):
    spec = tiny_spec(
        training={"epochs": 500, "batch_size": 32, "optimizer": {"name": "adam"}},
        budget={"max_trials": 5, "max_concurrent_trials": 1, "max_duration": "8s"},
    )
    study, events = run_study(stub, spec)
    assert study.state == pb.STUDY_COMPLETED
    trial = stub.GetTrial(pb.GetTrialRequest(study_id=study.study_id, trial_id=1))
    assert 1 <= trial.epochs_completed < 500
    assert study.trial_counts.completed + study.trial_counts.cancelled == len(
        [e for e in events if e.WhichOneof("event") == "trial_started"]
    )
    assert "test_accuracy" in study.test_metrics

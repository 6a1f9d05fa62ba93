"""Multi-objective studies, compute accounting and the wall-clock budget, over a real server."""

from __future__ import annotations

import subprocess
import sys

from google.protobuf.timestamp_pb2 import Timestamp
from support import tiny_spec, to_proto, watch_all

from tuneyard.server.study.pareto import dominates, pareto_front
from tuneyard.v1 import service_pb2 as pb


def run(stub, spec) -> pb.Study:
    study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))
    watch_all(stub, study.study_id)
    return stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id))


def test_pareto_front_keeps_only_non_dominated_points():
    modes = ["max", "min"]
    points = [(1, [0.9, 100.0]), (2, [0.8, 50.0]), (3, [0.7, 80.0]), (4, [0.9, 120.0]), (5, [0.95, 500.0])]
    assert [p[0] for p in pareto_front(points, modes)] == [1, 2, 5]
    assert dominates([0.9, 100.0], [0.7, 80.0 + 30], modes) and not dominates([0.9, 100.0], [0.9, 100.0], modes)


def test_multi_objective_study_reports_its_pareto_front(stub, server):
    spec = tiny_spec(
        objective=None,
        objectives=[{"metric": "val_accuracy", "mode": "MAXIMIZE"}, {"metric": "params", "mode": "MINIMIZE"}],
        search_space=[{"name": "model.num_filters", "int_range": {"low": 2, "high": 32, "log": True}}],
        budget={"max_trials": 4, "max_concurrent_trials": 2},
    )
    del spec["objective"]
    study = run(stub, spec)
    assert study.state == pb.STUDY_COMPLETED
    trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id)).trials
    assert all(len(t.objective_values) == 2 for t in trials)
    assert all(t.objective_values[1] == t.final_metrics["params"] for t in trials)
    front = {t.trial_id for t in study.pareto_front}
    assert front
    modes = ["max", "min"]
    for t in trials:  # a trial is on the front exactly when no other trial dominates it
        dominated = any(dominates(list(o.objective_values), list(t.objective_values), modes) for o in trials)
        assert (t.trial_id in front) == (not dominated)
    assert trials[0].final_metrics["inference_latency_ms"] > 0
    shown = subprocess.run(
        [sys.executable, "-m", "tuneyard.client.cli", "--server", server.address, "best", study.study_id],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "pareto_front:" in shown.stdout and "compute spent: 8 epochs" in shown.stdout


def test_study_reports_the_epochs_it_spent(stub):
    study = run(stub, tiny_spec(training={"epochs": 3, "optimizer": {"name": "adam"}}))
    trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id)).trials
    assert study.epochs_spent == sum(t.epochs_completed for t in trials) == 6


# A trial is started when `time.time() < deadline`; its row is written a moment later.
START_SLACK_S = 1.0
# The search's budget: long enough for a warm worker's first epochs of batch 32 on a loaded machine,
# short enough not to dominate the suite (it was 30 s; the bounds below scale with it).
DURATION_S = 15


def seconds(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def test_max_duration_ends_a_long_search_on_time_with_a_best_trial(stub):
    spec = tiny_spec(
        training={"epochs": 1000, "batch_size": 32, "optimizer": {"name": "adam"}},
        search_space=[{"name": "model.num_filters", "int_range": {"low": 4, "high": 16}}],
        budget={"max_trials": 1000, "max_concurrent_trials": 2, "max_duration": f"{DURATION_S}s"},
    )
    study = run(stub, spec)
    assert study.state == pb.STUDY_COMPLETED
    # Timed on the server's own records, from the moment the study started running, so that neither
    # the RPCs around it nor the test evaluation after the search (both slow on a loaded machine)
    # count: the search runs its full DURATION_S, starts nothing after them, and stops its trials promptly.
    trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id)).trials
    started = seconds(study.start_time)
    assert trials and all(seconds(t.start_time) - started < DURATION_S + START_SLACK_S for t in trials)
    search_ended = max(seconds(t.end_time) for t in trials) - started
    assert DURATION_S <= search_ended < DURATION_S + 10, search_ended  # stopped within 10 s
    assert seconds(study.end_time) - started >= search_ended
    assert study.best_trial.trial_id and study.best_trial.epochs_completed >= 1
    assert "test_accuracy" in study.test_metrics
    assert study.trial_counts.running == 0

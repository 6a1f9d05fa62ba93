"""End to end over real loopback gRPC: studies train for real in worker processes."""

from __future__ import annotations

import os
import signal
import time

import grpc
import pytest
from google.protobuf import json_format
from support import tiny_spec, to_proto, watch_all

from tuneyard.v1 import service_pb2 as pb


def create(stub, spec, request_id: str = "") -> pb.Study:
    return stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec), request_id=request_id))


def kinds(events: list[pb.StudyEvent]) -> list[str]:
    return [e.WhichOneof("event") for e in events]


def test_create_watch_best_returns_a_trained_configuration(stub, server):
    study = create(stub, tiny_spec())
    events = watch_all(stub, study.study_id)

    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert kinds(events)[0] == "study_state" and kinds(events)[-1] == "study_state"
    assert events[-1].study_state.state == pb.STUDY_COMPLETED
    assert kinds(events).count("trial_started") == 2
    assert kinds(events).count("trial_finished") == 2
    assert kinds(events).count("trial_progress") == 4  # 2 trials x 2 epochs
    assert "best_trial_changed" in kinds(events)

    done = stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id))
    assert done.state == pb.STUDY_COMPLETED
    assert done.trial_counts.completed == 2
    best = done.best_trial
    assert set(json_format.MessageToDict(best.config)) == {"model.num_conv_layers", "optimizer.name"}
    assert best.objective_value == best.final_metrics["val_accuracy"]
    assert best.epochs_completed == 2 and len(best.metrics) == 2
    assert 0.0 < done.test_metrics["test_accuracy"] <= 1.0
    assert best.checkpoint == f"studies/{study.study_id}/trial-{best.trial_id}/checkpoint.pt"  # in the data dir
    assert os.path.exists(server.storage.data_dir / best.checkpoint)
    trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id)).trials
    assert max(t.objective_value for t in trials) == best.objective_value


def test_same_request_id_returns_the_first_study(stub):
    first = create(stub, tiny_spec(budget={"max_trials": 1}), request_id="retry-me")
    again = create(stub, tiny_spec(budget={"max_trials": 1}), request_id="retry-me")
    assert again.study_id == first.study_id
    watch_all(stub, first.study_id)


def test_watch_after_sequence_replays_only_later_events(stub):
    study = create(stub, tiny_spec(budget={"max_trials": 1}))
    everything = watch_all(stub, study.study_id)
    tail = watch_all(stub, study.study_id, after=3)
    assert tail == everything[3:]


def test_killed_worker_fails_its_trial_and_the_study_goes_on(server, stub):
    # 12 epochs: the victim, found running after its first epoch, has 11 more to be killed in; the two
    # trials after it train all of theirs (40 epochs each once, most of this test's time).
    spec = tiny_spec(
        training={"epochs": 12, "batch_size": 32, "optimizer": {"name": "adam"}},
        budget={"max_trials": 3, "max_concurrent_trials": 1},
    )
    study = create(stub, spec)
    stream = stub.WatchStudy(pb.WatchStudyRequest(study_id=study.study_id), timeout=300)
    seen = []
    for event in stream:
        seen.append(event)
        if event.WhichOneof("event") == "trial_progress":
            break
    victim = next(
        t for t in stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id)).trials if t.state == pb.TRIAL_RUNNING
    )
    worker = next(w for w in server.pool.workers if w.device.name == victim.device and w.busy)
    os.kill(worker.pid, signal.SIGKILL)
    stream.cancel()

    events = watch_all(stub, study.study_id)
    assert events[-1].study_state.state == pb.STUDY_COMPLETED
    failed = stub.GetTrial(pb.GetTrialRequest(study_id=study.study_id, trial_id=victim.trial_id))
    assert failed.state == pb.TRIAL_FAILED
    assert "died" in failed.error and "-9" in failed.error
    done = stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id))
    assert done.trial_counts.failed == 1 and done.trial_counts.completed == 2
    assert worker.process.is_alive() and worker.restarts >= 1  # replaced by a fresh process


def test_cancel_stops_running_trials_and_keeps_results(stub):
    spec = tiny_spec(training={"epochs": 200, "optimizer": {"name": "sgd"}}, budget={"max_trials": 4})
    study = create(stub, spec)
    for event in stub.WatchStudy(pb.WatchStudyRequest(study_id=study.study_id), timeout=300):
        if event.WhichOneof("event") == "trial_progress":
            break
    started = time.monotonic()
    cancelled = stub.CancelStudy(pb.CancelStudyRequest(study_id=study.study_id))
    assert time.monotonic() - started < 15
    assert cancelled.state == pb.STUDY_CANCELLED
    events = watch_all(stub, study.study_id)
    assert events[-1].study_state.state == pb.STUDY_CANCELLED
    trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id)).trials
    assert trials and all(t.state == pb.TRIAL_CANCELLED for t in trials)
    assert any(t.epochs_completed >= 1 and t.metrics for t in trials)
    with pytest.raises(grpc.RpcError) as err:
        stub.CancelStudy(pb.CancelStudyRequest(study_id=study.study_id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_list_studies_pages_through_every_study(stub):
    ids = set()
    token = ""
    while True:
        page = stub.ListStudies(pb.ListStudiesRequest(page_size=1, page_token=token))
        assert len(page.studies) <= 1
        ids.update(s.study_id for s in page.studies)
        token = page.next_page_token
        if not token:
            break
    everything = stub.ListStudies(pb.ListStudiesRequest(page_size=1000)).studies
    assert ids == {s.study_id for s in everything} and len(ids) >= 1
    completed = stub.ListStudies(pb.ListStudiesRequest(state=pb.STUDY_COMPLETED)).studies
    assert all(s.state == pb.STUDY_COMPLETED for s in completed)


def test_server_info_reports_cpu_slots(stub):
    info = stub.GetServerInfo(pb.GetServerInfoRequest())
    assert info.executor == "local" and info.version
    assert [d.name for d in info.devices] == ["cpu:0", "cpu:1"]
    assert all(d.kind == "cpu" and d.slots_total >= 1 and 0 <= d.share_in_use <= 1 for d in info.devices)


def test_finished_study_is_fully_readable_after_restart(server_process, tmp_path):
    data = tmp_path / "store"
    first = server_process(data)
    stub = first.stub()
    study = create(stub, tiny_spec())
    before_events = watch_all(stub, study.study_id)
    before_study = stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id))
    before_trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id)).trials
    assert first.stop() == 0

    second = server_process(data)
    stub = second.stub()
    after_study = stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id))
    assert after_study == before_study
    after_trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id)).trials
    assert list(after_trials) == list(before_trials)
    after_events = watch_all(stub, study.study_id)
    assert after_events == before_events

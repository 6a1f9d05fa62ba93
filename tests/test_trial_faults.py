"""Trial faults injected for real — a worker killed by a signal, exiting, segfaulting, hanging,
raising, out of memory; impossible configurations; retries; cancellation — and what is kept.

One `tuneyard serve` process with the `faulty` test model (tests/fault_plugins) on its
PYTHONPATH and an 8 s heartbeat timeout serves every test; it must survive them all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import REPO, ServerProcess, tiny_spec, to_proto, watch_all

from tuneyard.v1 import service_pb2 as pb

HEARTBEAT_TIMEOUT_S = 8


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("fault-store")
    proc = ServerProcess(
        store,
        "--cpu-slots",
        "2",
        "--trial-heartbeat-timeout",
        str(HEARTBEAT_TIMEOUT_S),
        env={"PYTHONPATH": str(REPO / "tests" / "fault_plugins")},
    )
    yield proc
    assert proc.stop() == 0


@pytest.fixture
def stub(fault_server: ServerProcess) -> Any:
    return fault_server.stub()


def faulty_spec(epochs: int = 2, trials: int = 1, **options: Any) -> dict[str, Any]:
    return tiny_spec(
        model={"name": "faulty", "options": options},
        training={"epochs": epochs, "batch_size": 256, "optimizer": {"name": "adam"}, "seed": 0},
        search_space=[],
        budget={"max_trials": trials, "max_concurrent_trials": 1},
    )


def run(stub: Any, spec: dict[str, Any]) -> tuple[pb.Study, list[pb.Trial], list[pb.StudyEvent]]:
    study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))
    events = watch_all(stub, study.study_id)
    trials = list(stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id)).trials)
    return stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id)), trials, events


def finished(events: list[pb.StudyEvent]) -> list[pb.Trial]:
    return [e.trial_finished.trial for e in events if e.WhichOneof("event") == "trial_finished"]


def assert_forensics(stub: Any, study: pb.Study, trial: pb.Trial, events: list[pb.StudyEvent], reason: str) -> None:
    """The failure is on GetTrial and on the trial_finished event alike, and the server lives on."""
    assert trial.state == pb.TRIAL_FAILED and trial.failure_reason == reason, (trial.failure_reason, trial.error)
    assert trial.error
    got = stub.GetTrial(pb.GetTrialRequest(study_id=study.study_id, trial_id=trial.trial_id))
    assert got == trial
    event_trial = finished(events)[-1]
    for field in ("failure_reason", "exit_code", "exit_signal", "stderr_tail", "error"):
        assert getattr(event_trial, field) == getattr(trial, field), field
    assert stub.GetServerInfo(pb.GetServerInfoRequest()).devices


def stderr_lines(trial: pb.Trial) -> list[str]:
    return trial.stderr_tail.splitlines()


def test_worker_killed_by_sigkill_is_a_crash_with_exit_signal_and_stderr_tail(stub):
    study, (trial,), events = run(stub, faulty_spec(fault="crash", at_epoch=2))
    assert_forensics(stub, study, trial, events, "crash")
    assert trial.HasField("exit_code") and trial.exit_code == -9 and trial.exit_signal == "SIGKILL"
    lines = stderr_lines(trial)
    assert len(lines) == 50 and lines[-1] == "faulty model: stderr line 59 before the crash"
    assert trial.epochs_completed == 1 and [m.epoch for m in trial.metrics] == [1]  # kept
    assert study.state == pb.STUDY_FAILED and study.trial_counts.failed == 1


def test_worker_that_exits_records_its_exit_code(stub):
    study, (trial,), events = run(stub, faulty_spec(fault="exit"))
    assert_forensics(stub, study, trial, events, "crash")
    assert trial.exit_code == 3 and trial.exit_signal == ""


def test_segfault_is_a_crash_with_the_fatal_error_in_the_stderr_tail(stub):
    study, (trial,), events = run(stub, faulty_spec(fault="segfault"))
    assert_forensics(stub, study, trial, events, "crash")
    assert trial.exit_signal == "SIGSEGV"
    assert "Segmentation fault" in trial.stderr_tail


def test_hung_trial_is_killed_after_the_heartbeat_timeout(stub):
    study, (trial,), events = run(stub, faulty_spec(fault="hang", at_epoch=2))
    assert_forensics(stub, study, trial, events, "timeout")
    assert trial.exit_signal == "SIGKILL" and "heartbeat" in trial.error
    assert trial.epochs_completed == 1


def test_trial_that_raises_is_an_error_with_its_traceback(stub):
    study, (trial,), events = run(stub, faulty_spec(fault="raise"))
    assert_forensics(stub, study, trial, events, "error")
    assert "Traceback" in trial.error and "RuntimeError: fault injected at epoch 1" in trial.error
    assert not trial.HasField("exit_code")  # the process lived on


def test_out_of_memory_on_a_whole_device_fails_as_oom(stub):
    study, (trial,), events = run(stub, faulty_spec(fault="oom"))
    assert_forensics(stub, study, trial, events, "oom")
    assert "OutOfMemoryError" in trial.error


def test_out_of_memory_beside_others_is_requeued_with_more_room(stub, tmp_path):
    spec = faulty_spec(fault="oom", once_marker=str(tmp_path / "oom-once"))
    spec["resources"] = {"gpus_per_trial": 0.5}
    study, (trial,), _ = run(stub, spec)
    assert (tmp_path / "oom-once").exists()  # the fault fired once
    assert trial.state == pb.TRIAL_COMPLETED and trial.epochs_completed == 2
    assert study.state == pb.STUDY_COMPLETED


def test_infeasible_configuration_is_its_own_state_not_a_failure(stub):
    spec = faulty_spec(trials=3)
    spec["search_space"] = [{"name": "model.width", "choice": {"values": [0, 1, 2]}}]
    spec["searcher"] = {"name": "grid"}
    spec["budget"]["max_failures"] = 0
    study, trials, events = run(stub, spec)
    by_width = {int(t.config["model.width"]): t for t in trials}
    assert by_width[0].state == pb.TRIAL_INFEASIBLE and "width 0 cannot build" in by_width[0].error
    assert by_width[0].failure_reason == ""
    assert by_width[1].state == by_width[2].state == pb.TRIAL_COMPLETED
    assert study.state == pb.STUDY_COMPLETED
    assert study.trial_counts.infeasible == 1 and study.trial_counts.failed == 0
    assert [t.state for t in finished(events)].count(pb.TRIAL_INFEASIBLE) == 1


def test_crashed_trial_is_retried_from_its_last_checkpoint(stub, tmp_path):
    log_dir = tmp_path / "epochs"
    log_dir.mkdir()
    spec = faulty_spec(
        epochs=3, fault="crash", at_epoch=2, once_marker=str(tmp_path / "crash-once"), epoch_log=str(log_dir)
    )
    spec["budget"]["trial_retries"] = 1
    study, (trial,), events = run(stub, spec)
    assert trial.state == pb.TRIAL_COMPLETED and trial.retries == 1
    assert trial.epochs_completed == 3 and [m.epoch for m in trial.metrics] == [1, 2, 3]
    epochs = [int(x) for x in (log_dir / "width-1.log").read_text().split()]
    assert epochs == [1, 2, 2, 3]  # epoch 2 crashed and ran again; epoch 1 came from the checkpoint
    assert study.state == pb.STUDY_COMPLETED
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))


def test_retries_run_out_and_the_trial_fails(stub):
    spec = faulty_spec(fault="exit", at_epoch=2)
    spec["budget"]["trial_retries"] = 2
    study, (trial,), events = run(stub, spec)
    assert_forensics(stub, study, trial, events, "crash")
    assert trial.retries == 2 and trial.exit_code == 3


def wait_for_epoch(stub: Any, study_id: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study_id)).trials
        if trials and trials[0].epochs_completed >= 1:
            return
        time.sleep(0.05)
    pytest.fail("no epoch finished")


@pytest.mark.parametrize("fault", ["none", "hang"])
def test_cancel_stops_running_trials_promptly_and_keeps_their_results(stub, fault):
    """A trial that honours the stop request ends at its next batch; one that hangs is killed."""
    spec = faulty_spec(epochs=1000, trials=5, fault=fault, at_epoch=2, batch_sleep=0.01)
    spec["budget"]["max_concurrent_trials"] = 2
    study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))
    stream = stub.WatchStudy(pb.WatchStudyRequest(study_id=study.study_id), timeout=120)
    wait_for_epoch(stub, study.study_id)
    started = time.monotonic()
    cancelled = stub.CancelStudy(pb.CancelStudyRequest(study_id=study.study_id))
    took = time.monotonic() - started
    print(f"CancelStudy ({fault}) answered in {took:.2f} s")
    assert cancelled.state == pb.STUDY_CANCELLED  # answered once the study had ended
    events = list(stream)
    assert events[-1].study_state.state == pb.STUDY_CANCELLED
    trial = stub.GetTrial(pb.GetTrialRequest(study_id=study.study_id, trial_id=1))
    assert trial.state == pb.TRIAL_CANCELLED and trial.epochs_completed >= 1 and trial.metrics
    with pytest.raises(grpc.RpcError) as again:
        stub.CancelStudy(pb.CancelStudyRequest(study_id=study.study_id))
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_best_trial_whose_test_evaluation_is_infeasible_fails_the_study(stub, tmp_path):
    """The model could be built for training but not for the test split: the study ends FAILED
    saying so (it once waited for an answer that never came)."""
    spec = faulty_spec(epochs=2, fault="infeasible_later", at_epoch=2, once_marker=str(tmp_path / "now-infeasible"))
    study, trials, events = run(stub, spec)
    assert [t.state for t in trials] == [pb.TRIAL_COMPLETED]
    assert study.state == pb.STUDY_FAILED
    assert "test evaluation of trial 1 failed: the model cannot be built any more" in study.error, study.error
    assert events[-1].study_state.state == pb.STUDY_FAILED


def test_server_survived_every_fault(stub, fault_server):
    assert fault_server.proc.poll() is None
    study, _, _ = run(stub, faulty_spec())
    assert study.state == pb.STUDY_COMPLETED
    log_dir = Path(fault_server.data_dir) / "logs"
    assert any(log_dir.glob("worker-*.log"))

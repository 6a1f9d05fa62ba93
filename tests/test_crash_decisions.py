"""Decisions survive a crash, a moved data directory and a full store (issue 13, items 2-4).

Real `tuneyard serve` processes on loopback (SIGKILLed at the moment that matters), real SQLite
files, and a store made full for real with SQLite's `max_page_count`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import REPO, cap_store_pages, tiny_spec, to_proto, watch_all

from tuneyard.v1 import service_pb2 as pb

FAULT_PLUGINS = {"PYTHONPATH": str(REPO / "tests" / "fault_plugins")}
EPOCHS = 4


def slow_spec(log_dir: Path, epoch_sleep: float, **overrides: Any) -> dict[str, Any]:
    """Two trials (model.width 1 and 2), one at a time, of four slow epochs each."""
    spec = tiny_spec(
        model={"name": "faulty", "options": {"epoch_sleep": epoch_sleep, "epoch_log": str(log_dir)}},
        training={"epochs": EPOCHS, "batch_size": 256, "optimizer": {"name": "adam"}, "seed": 0},
        search_space=[{"name": "model.width", "choice": {"values": [1, 2]}}],
        searcher={"name": "grid"},
        budget={"max_trials": 2, "max_concurrent_trials": 1},
    )
    spec.update(overrides)
    return spec


def wait_for(stub: Any, study_id: str, ready: Any, timeout: float = 120) -> list[pb.Trial]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        trials = list(stub.ListTrials(pb.ListTrialsRequest(study_id=study_id)).trials)
        if ready(trials):
            return trials
        time.sleep(0.02)
    pytest.fail("the study never reached the moment to interrupt it")


def epochs_started(log_dir: Path, width: int) -> list[int]:
    path = log_dir / f"width-{width}.log"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


@pytest.mark.parametrize("replayable", [True, False], ids=["stopper-replays-stop", "only-the-journal-knows"])
def test_a_trial_pruned_just_before_a_kill_ends_pruned_after_the_restart(server_process, tmp_path, replayable):
    """The stopper says STOP at epoch 1 of trial 1; the server is killed before the trial ends. After
    the restart the trial must end PRUNED with the epoch it was judged at, never train on and never
    become the best trial. With `once_marker` the stopper would say CONTINUE when the reports are
    replayed, so only the journaled verdict can tell."""
    data, log_dir = tmp_path / "store", tmp_path / "epochs"
    log_dir.mkdir()
    options = {
        "trial": 1,
        "step": 1,
        "once_marker": "" if replayable else str(tmp_path / "said-stop"),
        # The runner stalls 5 s between storing the verdict and ending the trial: the kill lands there.
        "stall_marker": str(tmp_path / "stalled"),
        "stall": 5.0,
    }
    spec = slow_spec(log_dir, 0.3, early_stopping={"name": "stop_at", "options": options})
    proc = server_process(data, env=FAULT_PLUGINS)
    stub = proc.stub()
    sid = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec))).study_id
    wait_for(stub, sid, lambda ts: (tmp_path / "stalled").exists())
    trials = list(stub.ListTrials(pb.ListTrialsRequest(study_id=sid)).trials)
    assert [(t.state, t.epochs_completed) for t in trials] == [(pb.TRIAL_RUNNING, 1)]
    proc.kill()
    assert replayable or (tmp_path / "said-stop").exists()
    before_restart = epochs_started(log_dir, 1)

    proc = server_process(data, env=FAULT_PLUGINS)
    stub = proc.stub()
    events = watch_all(stub, sid)
    study = stub.GetStudy(pb.GetStudyRequest(study_id=sid))
    assert study.state == pb.STUDY_COMPLETED, study.error
    first, second = stub.ListTrials(pb.ListTrialsRequest(study_id=sid)).trials
    assert first.state == pb.TRIAL_PRUNED, pb.TrialState.Name(first.state)
    assert first.epochs_completed == 1 and [m.epoch for m in first.metrics] == [1]
    assert epochs_started(log_dir, 1) == before_restart  # it never trained on
    assert second.state == pb.TRIAL_COMPLETED and study.best_trial.trial_id == 2
    finished = [e.trial_finished.trial for e in events if e.WhichOneof("event") == "trial_finished"]
    assert [(t.trial_id, t.state) for t in finished] == [(1, pb.TRIAL_PRUNED), (2, pb.TRIAL_COMPLETED)]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))


def test_a_moved_data_directory_keeps_its_checkpoints(server_process, tmp_path):
    """Killed mid-trial, the data directory copied elsewhere and the old one removed: the study
    resumes from the checkpoints at the new place and its test evaluation finds the best one."""
    old, new, log_dir = tmp_path / "old-store", tmp_path / "moved" / "store", tmp_path / "epochs"
    log_dir.mkdir()
    proc = server_process(old, env=FAULT_PLUGINS)
    stub = proc.stub()
    sid = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(slow_spec(log_dir, 0.4)))).study_id
    wait_for(stub, sid, lambda ts: len(ts) == 2 and ts[0].state == pb.TRIAL_COMPLETED and ts[1].epochs_completed >= 1)
    proc.kill()
    shutil.copytree(old, new)
    shutil.rmtree(old)

    proc = server_process(new, env=FAULT_PLUGINS)
    stub = proc.stub()
    watch_all(stub, sid)
    study = stub.GetStudy(pb.GetStudyRequest(study_id=sid))
    assert study.state == pb.STUDY_COMPLETED, study.error
    assert "test_accuracy" in study.test_metrics
    for trial in stub.ListTrials(pb.ListTrialsRequest(study_id=sid)).trials:
        assert trial.state == pb.TRIAL_COMPLETED and trial.epochs_completed == EPOCHS
        assert (
            trial.checkpoint == f"studies/{sid}/trial-{trial.trial_id}/checkpoint.pt"
            and (new / trial.checkpoint).exists()
        )
    started = epochs_started(log_dir, 2)
    assert started[0] == 1 and started.count(1) == 1  # the second trial resumed, it did not start over
    assert not old.exists()  # nothing was recreated at the old place


def test_absolute_checkpoint_paths_of_an_older_store_are_re_rooted(tmp_path):
    from tuneyard.server.storage.sqlite import Storage

    storage = Storage(tmp_path / "now")
    study, _ = storage.create_study({"name": "s"}, "")
    stored = f"/gone/elsewhere/studies/{study.study_id}/trial-1/checkpoint.pt"
    trial = storage.create_trial(study.study_id, 1, {}, "cpu:0", stored)
    assert trial.checkpoint == str(tmp_path / "now" / "studies" / study.study_id / "trial-1" / "checkpoint.pt")
    storage.close()


def _fill_store(storage: Any) -> int:
    """Makes the store full for real: no page may be added (SQLITE_FULL) and ballast takes the free
    room of existing pages. Returns the limit it had, to restore it."""
    with storage.atomic():
        storage._db.execute("CREATE TABLE IF NOT EXISTS ballast (junk BLOB)")
    before = cap_store_pages(storage)
    for size in (4096, 512, 64, 8):
        try:
            while True:
                with storage.atomic():
                    storage._db.execute("INSERT INTO ballast VALUES (zeroblob(?))", (size,))
        except Exception as exc:  # noqa: BLE001 - the store answers "full" in its own words
            assert "full" in str(exc), exc
    return before


def test_a_full_store_fails_the_study_once_writable_and_the_server_serves_on(tmp_path):
    """SQLITE_FULL mid-study: the study does not hang RUNNING with a dead runner; once space is
    freed it ends FAILED saying why, and the server runs new studies as before."""
    from tuneyard.server.app import start_server

    handle = start_server(data_dir=tmp_path / "data", devices="cpu", cpu_slots=1)
    try:
        with grpc.insecure_channel(handle.address) as channel:
            from tuneyard.v1 import service_pb2_grpc

            stub = service_pb2_grpc.TrainingServiceStub(channel)
            spec = tiny_spec(
                training={"epochs": 50, "batch_size": 256, "optimizer": {"name": "adam"}, "seed": 0},
                search_space=[],
                budget={"max_trials": 1},
            )
            sid = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec))).study_id
            wait_for(stub, sid, lambda ts: len(ts) == 1 and ts[0].epochs_completed >= 1)
            limit = _fill_store(handle.storage)
            runner = handle.studies._runners[sid]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and any(True for _ in runner._board.running()):
                time.sleep(0.1)
            time.sleep(1.5)  # the runner has met the full store and retries storing the failure
            assert stub.GetStudy(pb.GetStudyRequest(study_id=sid)).state == pb.STUDY_RUNNING
            assert runner.is_alive()
            # A spec larger than a page, so it cannot fit in the free room left in the studies table's
            # own pages (which the ballast does not reach): storing it needs a new page.
            widths = {"name": "model.num_filters", "choice": {"values": list(range(1, 1001))}}
            with pytest.raises(grpc.RpcError) as refused:
                stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(tiny_spec(search_space=[widths]))))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
            assert "full" in refused.value.details()

            cap_store_pages(handle.storage, limit)
            runner.join(60)
            assert not runner.is_alive()
            study = stub.GetStudy(pb.GetStudyRequest(study_id=sid))
            assert study.state == pb.STUDY_FAILED
            assert "full" in study.error, study.error
            assert watch_all(stub, sid)[-1].study_state.state == pb.STUDY_FAILED

            again = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(tiny_spec()))).study_id
            watch_all(stub, again)
            assert stub.GetStudy(pb.GetStudyRequest(study_id=again)).state == pb.STUDY_COMPLETED
    finally:
        handle.stop()

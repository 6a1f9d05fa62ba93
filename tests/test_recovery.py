"""Nothing lost: a server killed (SIGKILL) or stopped (SIGTERM) mid-study resumes it on restart.

Real `tuneyard serve` processes on loopback share one data directory. The trials use the
`faulty` test model (tests/fault_plugins) with no fault, only slow epochs, and log every epoch
they start to a file, so the tests can tell a trial that resumed from its checkpoint from one
that started over.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import REPO, ServerProcess, tiny_spec, to_proto, watch_all

from tuneyard.v1 import service_pb2 as pb

FAULT_PLUGINS = {"PYTHONPATH": str(REPO / "tests" / "fault_plugins")}
EPOCHS = 4
WIDTHS = [1, 2, 3, 4]


def slow_grid_spec(log_dir: Path, **overrides: Any) -> dict[str, Any]:
    """Four trials (a grid over `model.width`) of four slow epochs each, one at a time."""
    spec = tiny_spec(
        model={"name": "faulty", "options": {"epoch_sleep": 0.3, "epoch_log": str(log_dir)}},
        training={"epochs": EPOCHS, "batch_size": 256, "optimizer": {"name": "adam"}, "seed": 0},
        search_space=[{"name": "model.width", "choice": {"values": WIDTHS}}],
        searcher={"name": "grid"},
        budget={"max_trials": len(WIDTHS), "max_concurrent_trials": 1},
    )
    spec.update(overrides)
    return spec


def start(server_process: Any, data: Path) -> tuple[ServerProcess, Any]:
    proc = server_process(data, env=FAULT_PLUGINS)
    return proc, proc.stub()


def wait_until(stub: Any, study_id: str, ready: Any, timeout: float = 120) -> None:
    """Polls the study's trials until `ready(trials)` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        trials = list(stub.ListTrials(pb.ListTrialsRequest(study_id=study_id, page_size=100)).trials)
        if ready(trials):
            return
        time.sleep(0.05)
    pytest.fail(f"study {study_id} never reached the moment to interrupt it")


class Watcher(threading.Thread):
    """A WatchStudy stream read in the background until it ends or its server dies."""

    def __init__(self, stub: Any, study_id: str, after: int) -> None:
        super().__init__(daemon=True)
        self.events: list[pb.StudyEvent] = []
        self._stream = stub.WatchStudy(pb.WatchStudyRequest(study_id=study_id, after_sequence=after), timeout=300)
        self.start()

    def run(self) -> None:
        try:
            for event in self._stream:
                self.events.append(event)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc

    def join(self, timeout: float | None = 60) -> list[pb.StudyEvent]:  # type: ignore[override]
        super().join(timeout)
        assert not self.is_alive(), "the stream did not end when its server died"
        return self.events


def epochs_started(log_dir: Path, width: int) -> list[int]:
    path = log_dir / f"width-{width}.log"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def assert_event_log_is_whole(events: list[pb.StudyEvent], trials: list[pb.Trial]) -> None:
    """Sequences 1..N without gaps; each trial started and finished once; each epoch reported once."""
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    kinds = [e.WhichOneof("event") for e in events]

    def of(kind: str) -> list[pb.StudyEvent]:
        return [e for e in events if e.WhichOneof("event") == kind]

    started = Counter(e.trial_started.trial.trial_id for e in of("trial_started"))
    finished = Counter(e.trial_finished.trial.trial_id for e in of("trial_finished"))
    progress = Counter((e.trial_progress.trial_id, e.trial_progress.epoch) for e in of("trial_progress"))
    ids = {t.trial_id for t in trials}
    assert started == Counter(ids) and finished == Counter(ids)
    assert set(progress.values()) == {1}
    assert sorted(progress) == sorted((t.trial_id, m.epoch) for t in trials for m in t.metrics)
    assert kinds[-1] == "study_state" and events[-1].study_state.state == pb.STUDY_COMPLETED


def test_server_killed_three_times_resumes_the_study_and_loses_nothing(server_process, tmp_path):
    data, log_dir = tmp_path / "store", tmp_path / "epochs"
    log_dir.mkdir()
    proc, stub = start(server_process, data)
    study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(slow_grid_spec(log_dir))))
    sid = study.study_id
    moments = [
        # 1: the first trial started, before it finished its first epoch (no checkpoint yet)
        lambda ts: len(ts) == 1 and ts[0].epochs_completed == 0,
        # 2: in the middle of the second trial
        lambda ts: len(ts) == 2 and ts[1].epochs_completed >= 2,
        # 3: the third trial finished, the fourth started
        lambda ts: len(ts) == 4 and ts[2].state == pb.TRIAL_COMPLETED,
    ]
    seen: list[pb.StudyEvent] = []  # what one watcher saw live, reconnecting after each kill
    for ready in moments:
        watcher = Watcher(stub, sid, after=seen[-1].sequence if seen else 0)
        wait_until(stub, sid, ready)
        proc.kill()  # SIGKILL: no chance to clean up; its workers die with it
        seen += watcher.join()
        proc, stub = start(server_process, data)
        assert stub.GetStudy(pb.GetStudyRequest(study_id=sid)).state == pb.STUDY_RUNNING
    seen += watch_all(stub, sid, after=seen[-1].sequence if seen else 0)

    final = stub.GetStudy(pb.GetStudyRequest(study_id=sid))
    assert final.state == pb.STUDY_COMPLETED, final.error
    assert "test_accuracy" in final.test_metrics
    trials = list(stub.ListTrials(pb.ListTrialsRequest(study_id=sid)).trials)
    assert [t.trial_id for t in trials] == [1, 2, 3, 4]  # exactly max_trials
    assert sorted(t.config["model.width"] for t in trials) == WIDTHS  # no grid point repeated or skipped
    for trial in trials:
        assert trial.state == pb.TRIAL_COMPLETED
        assert trial.epochs_completed == EPOCHS
        assert [m.epoch for m in trial.metrics] == list(range(1, EPOCHS + 1))
        started = epochs_started(log_dir, int(trial.config["model.width"]))
        # Resumed, not started over: an epoch runs again only when a kill cut it short.
        assert sorted(set(started)) == list(range(1, EPOCHS + 1))
        assert len(started) <= EPOCHS + len(moments)
        assert started == sorted(started)
    events = watch_all(stub, sid)
    assert_event_log_is_whole(events, trials)
    assert seen == events


def test_sigterm_stops_cleanly_and_the_restart_resumes_from_checkpoints(server_process, tmp_path):
    data, log_dir = tmp_path / "store", tmp_path / "epochs"
    log_dir.mkdir()
    proc, stub = start(server_process, data)
    spec = slow_grid_spec(log_dir, budget={"max_trials": 2, "max_concurrent_trials": 1})
    sid = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec))).study_id
    wait_until(stub, sid, lambda ts: len(ts) == 1 and ts[0].epochs_completed >= 2)
    stream = stub.WatchStudy(pb.WatchStudyRequest(study_id=sid), timeout=120)
    first = next(stream)
    stopped_at = time.monotonic()
    assert proc.stop() == 0  # SIGTERM: exit code 0
    took = time.monotonic() - stopped_at
    with pytest.raises(grpc.RpcError) as ended:
        list(stream)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE  # a clear status: reconnect later
    assert "shutting down" in ended.value.details()

    proc, stub = start(server_process, data)
    events = [first, *watch_all(stub, sid, after=first.sequence)]
    final = stub.GetStudy(pb.GetStudyRequest(study_id=sid))
    assert final.state == pb.STUDY_COMPLETED, final.error
    trials = list(stub.ListTrials(pb.ListTrialsRequest(study_id=sid)).trials)
    assert all(t.epochs_completed == EPOCHS and t.state == pb.TRIAL_COMPLETED for t in trials)
    started = epochs_started(log_dir, int(trials[0].config["model.width"]))
    assert started[: started.index(max(started))] == sorted(started[: started.index(max(started))])
    assert len(started) <= EPOCHS + 1  # went on from the checkpoint; at most the cut epoch again
    assert_event_log_is_whole(events, trials)
    print(f"SIGTERM to exit: {took:.1f} s")


def test_searcher_and_early_stopper_state_survive_a_kill(server_process, tmp_path):
    """TPE with ASHA: after a kill the study still ends with exactly max_trials distinct trials
    (a searcher rebuilt from scratch would suggest the seeded first configurations again)."""
    data, log_dir = tmp_path / "store", tmp_path / "epochs"
    log_dir.mkdir()
    proc, stub = start(server_process, data)
    spec = slow_grid_spec(
        log_dir,
        search_space=[
            {"name": "model.width", "int_range": {"low": 1, "high": 1000}},
            {"name": "optimizer.lr", "float_range": {"low": 1e-4, "high": 1e-1, "log": True}},
        ],
        searcher={"name": "tpe"},
        early_stopping={"name": "asha", "options": {"grace_period": 1, "reduction_factor": 2}},
        budget={"max_trials": 5, "max_concurrent_trials": 1},
    )
    spec["model"]["options"]["epoch_sleep"] = 0.3
    sid = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec))).study_id
    wait_until(stub, sid, lambda ts: len(ts) == 3 and ts[2].epochs_completed >= 1)
    proc.kill()
    proc, stub = start(server_process, data)
    events = watch_all(stub, sid)
    final = stub.GetStudy(pb.GetStudyRequest(study_id=sid))
    assert final.state == pb.STUDY_COMPLETED, final.error
    trials = list(stub.ListTrials(pb.ListTrialsRequest(study_id=sid)).trials)
    assert [t.trial_id for t in trials] == [1, 2, 3, 4, 5]
    assert len({(t.config["model.width"], t.config["optimizer.lr"]) for t in trials}) == 5
    assert all(t.state in (pb.TRIAL_COMPLETED, pb.TRIAL_PRUNED) for t in trials)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))

"""WatchStudy under stress, and safe retries of CreateStudy, on the session's loopback server.

Where delivery must be live rather than a replay, the study waits at a gate: a blocker study
holds both CPU slots until every watcher has its first event, then is cancelled. No assertion
depends on timing; deadlines only turn a hang into a failure.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from support import tiny_spec, to_proto, watch_all

from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

Stub = service_pb2_grpc.TrainingServiceStub
WATCHERS = 100
CHANNELS = 4
DEADLINE_S = 300
# A watcher on a channel this tight stalls the server's sends after about a kilobyte.
TIGHT_WINDOW = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]

STALLED_CLIENT = """
import sys, grpc
from tuneyard.v1 import service_pb2 as pb, service_pb2_grpc
options = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
channel = grpc.insecure_channel(sys.argv[1], options=options)
stream = service_pb2_grpc.TrainingServiceStub(channel).WatchStudy(pb.WatchStudyRequest(study_id=sys.argv[2]))
print(next(stream).sequence, flush=True)
sys.stdin.read()  # hold the stream open, reading nothing more, until killed
"""


def create(stub: Stub, spec: dict[str, Any], request_id: str = "") -> pb.Study:
    return stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec), request_id=request_id), timeout=60)


def busy_spec(trials: int = 4, epochs: int = 5) -> dict[str, Any]:
    """A study of `trials` x `epochs` real epochs: about one event per epoch, plus a few per trial."""
    training = {"epochs": epochs, "batch_size": 128, "optimizer": {"name": "adam"}, "seed": 0}
    return tiny_spec(training=training, budget={"max_trials": trials, "max_concurrent_trials": 2})


def sequences(events: list[pb.StudyEvent]) -> list[int]:
    return [e.sequence for e in events]


def is_terminal(event: pb.StudyEvent) -> bool:
    ended = (pb.STUDY_COMPLETED, pb.STUDY_FAILED, pb.STUDY_CANCELLED)
    return event.WhichOneof("event") == "study_state" and event.study_state.state in ended


def assert_complete_log(events: list[pb.StudyEvent]) -> None:
    """Sequences 1..n with no gap or repeat, ending with the study's terminal COMPLETED state."""
    assert sequences(events) == list(range(1, len(events) + 1))
    assert events[-1].WhichOneof("event") == "study_state"
    assert events[-1].study_state.state == pb.STUDY_COMPLETED


def watch_stream(stub: Stub, study_id: str, after: int = 0) -> Any:
    return stub.WatchStudy(pb.WatchStudyRequest(study_id=study_id, after_sequence=after), timeout=DEADLINE_S)


@contextmanager
def slots_held(stub: Stub) -> Iterator[Callable[[], None]]:
    """Fills both CPU slots with an endless blocker study; yields `release`, which cancels it."""
    blocker = create(stub, busy_spec(trials=2, epochs=100_000))
    stream = watch_stream(stub, blocker.study_id)
    started = 0
    for event in stream:
        started += event.WhichOneof("event") == "trial_started"
        if started == 2:
            break
    stream.cancel()
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            stub.CancelStudy(pb.CancelStudyRequest(study_id=blocker.study_id), timeout=60)
            assert watch_all(stub, blocker.study_id)[-1].study_state.state == pb.STUDY_CANCELLED

    try:
        yield release
    finally:
        release()


@contextmanager
def open_channels(address: str, count: int, options: list[tuple[str, Any]]) -> Iterator[list[grpc.Channel]]:
    channels = [grpc.insecure_channel(address, options=options) for _ in range(count)]
    try:
        yield channels
    finally:
        for channel in channels:
            channel.close()


def watch_after_gate(stub: Stub, study_id: str, gate: threading.Barrier) -> list[pb.StudyEvent]:
    """Reads the first event, waits until every watcher has one, then reads to the end."""
    stream = watch_stream(stub, study_id)
    events = [next(stream)]
    gate.wait(timeout=DEADLINE_S)
    events.extend(stream)
    return events


def count_studies(stub: Stub) -> int:
    total, token = 0, ""
    while True:
        page = stub.ListStudies(pb.ListStudiesRequest(page_size=1000, page_token=token), timeout=60)
        total += len(page.studies)
        token = page.next_page_token
        if not token:
            return total


def test_hundred_concurrent_watchers_each_receive_every_event_live_and_in_order(server, stub):
    with open_channels(server.address, CHANNELS, OWN_CONNECTION) as channels, slots_held(stub) as release:
        stubs = [Stub(ch) for ch in channels]
        study = create(stub, busy_spec())
        gate = threading.Barrier(WATCHERS + 1)
        with ThreadPoolExecutor(WATCHERS, thread_name_prefix="watcher") as pool:
            futures = [
                pool.submit(watch_after_gate, stubs[i % CHANNELS], study.study_id, gate) for i in range(WATCHERS)
            ]
            gate.wait(timeout=DEADLINE_S)
            # Every watcher is attached while the study has not started a trial: what follows is live.
            waiting = stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id), timeout=60)
            assert waiting.state == pb.STUDY_RUNNING and waiting.trial_counts.running == 0
            assert stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=60).devices  # still answering
            release()
            received = [f.result(timeout=DEADLINE_S) for f in futures]

    replay = watch_all(stub, study.study_id)
    assert_complete_log(replay)
    assert sum(e.WhichOneof("event") == "trial_progress" for e in replay) == 4 * 5
    assert all(events == replay for events in received)


def test_watch_resumes_after_reconnect_without_loss_or_repeat(stub):
    study = create(stub, busy_spec(trials=4, epochs=8))
    pieces: list[pb.StudyEvent] = []
    reconnects = 0
    while not (pieces and is_terminal(pieces[-1])):
        stream = watch_stream(stub, study.study_id, after=pieces[-1].sequence if pieces else 0)
        pieces.extend(event for _, event in zip(range(reconnects % 4 + 1), stream, strict=False))
        stream.cancel()
        if not is_terminal(pieces[-1]):
            with pytest.raises(grpc.RpcError) as cancelled:
                next(stream)
            assert cancelled.value.code() == grpc.StatusCode.CANCELLED
        reconnects += 1

    assert reconnects >= 10
    assert pieces == watch_all(stub, study.study_id)
    assert_complete_log(pieces)


def test_reconnect_after_the_terminal_event_ends_at_once(stub):
    study = create(stub, busy_spec(trials=1, epochs=1))
    everything = watch_all(stub, study.study_id)
    stream = stub.WatchStudy(
        pb.WatchStudyRequest(study_id=study.study_id, after_sequence=everything[-1].sequence), timeout=5
    )
    assert list(stream) == []


def test_watch_after_the_last_event_is_refused(stub):
    study = create(stub, busy_spec(trials=1, epochs=1))
    last = watch_all(stub, study.study_id)[-1].sequence
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.WatchStudy(pb.WatchStudyRequest(study_id=study.study_id, after_sequence=last + 5), timeout=5))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "after_sequence" in refused.value.details()


def test_streams_beyond_the_cap_are_told_to_come_back(tmp_path, monkeypatch):
    """Each open stream holds a server thread; past the cap a watcher gets RESOURCE_EXHAUSTED
    and every other RPC still answers."""
    from tuneyard.server.api import servicer
    from tuneyard.server.app import start_server

    monkeypatch.setattr(servicer, "MAX_WATCHERS", 2)
    handle = start_server(data_dir=tmp_path, devices="cpu", cpu_slots=1)
    try:
        with grpc.insecure_channel(handle.address) as channel:
            stub = service_pb2_grpc.TrainingServiceStub(channel)
            study = create(stub, busy_spec(trials=1, epochs=50))
            open_streams = [watch_stream(stub, study.study_id) for _ in range(2)]
            for stream in open_streams:
                next(stream)
            with pytest.raises(grpc.RpcError) as refused:
                next(watch_stream(stub, study.study_id))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id)).study_id == study.study_id
            open_streams[0].cancel()
            stub.CancelStudy(pb.CancelStudyRequest(study_id=study.study_id))
            assert is_terminal(list(open_streams[1])[-1])  # its place is free once its stream has ended
            assert is_terminal(list(watch_stream(stub, study.study_id))[-1])
    finally:
        handle.stop()


def test_stalled_watcher_does_not_hold_up_the_study_and_later_reads_everything(server, stub):
    with open_channels(server.address, 1, TIGHT_WINDOW + OWN_CONNECTION) as (slow_channel,):
        study = create(stub, busy_spec(trials=4, epochs=20))
        stalled = watch_stream(Stub(slow_channel), study.study_id)
        first = next(stalled)

        everything = watch_all(stub, study.study_id)  # the study ends while the stalled watcher reads nothing
        assert stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id), timeout=60).state == pb.STUDY_COMPLETED
        assert sum(e.ByteSize() for e in everything) > 20 * 1024  # far more than the stalled window holds

        assert [first, *stalled] == everything
    assert_complete_log(everything)


def test_watchers_killed_mid_stream_do_not_hurt_the_server(server, stub):
    study = create(stub, busy_spec(trials=4, epochs=20))
    clients = [
        subprocess.Popen(
            [sys.executable, "-c", STALLED_CLIENT, server.address, study.study_id],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for client in clients:
            assert client.stdout is not None and client.stdout.readline().strip() == "1"
    finally:
        for client in clients:
            client.send_signal(signal.SIGKILL)
            client.wait(30)

    everything = watch_all(stub, study.study_id)
    assert_complete_log(everything)
    assert stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=60).devices
    again = create(stub, busy_spec(trials=1, epochs=1))
    assert_complete_log(watch_all(stub, again.study_id))


def test_create_study_retried_with_one_request_id_returns_the_first_study(stub):
    request_id = f"retry-{uuid.uuid4().hex}"
    before = count_studies(stub)
    first = create(stub, busy_spec(trials=1, epochs=1), request_id)
    again = create(stub, busy_spec(trials=1, epochs=1), request_id)

    assert again.study_id == first.study_id and again.request_id == request_id
    assert count_studies(stub) == before + 1
    watch_all(stub, first.study_id)


def test_concurrent_creates_with_one_request_id_make_one_study(stub):
    request_id = f"race-{uuid.uuid4().hex}"
    before = count_studies(stub)
    start = threading.Barrier(8)

    def create_at_once(_: int) -> str:
        start.wait(timeout=60)
        return create(stub, busy_spec(trials=1, epochs=1), request_id).study_id

    with ThreadPoolExecutor(8) as pool:
        study_ids = set(pool.map(create_at_once, range(8)))

    assert len(study_ids) == 1
    assert count_studies(stub) == before + 1
    assert_complete_log(watch_all(stub, study_ids.pop()))

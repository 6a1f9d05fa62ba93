"""Prometheus metrics: `/metrics` of a real server scraped over HTTP and parsed with prometheus_client's parser.

An external study (trials evaluated by this test through the raw gRPC API, so every RPC is one the
test made and can count) ends with trials COMPLETED, FAILED and INFEASIBLE; a real training study
shows its trial on the CPU slot while it runs, and a killed worker process as a restart.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from certs import make_certs
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import tiny_spec, to_proto

from tuneyard.server.api.metrics import MetricsServer, check_metrics_bind
from tuneyard.server.api.rpc_metrics import RpcMetrics
from tuneyard.server.api.security import Authenticator, AuthInterceptor, SecurityConfigError, TlsFiles, Token
from tuneyard.server.app import ServerHandle, start_server
from tuneyard.server.cli import serve_main
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

pytestmark = pytest.mark.timeout(120)
SERVICE = "tuneyard.v1.TrainingService"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, token: str = "") -> str:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        return reply.read().decode()


def samples(text: str) -> Samples:
    """(sample name, labels) -> value, for every sample of every family in the exposition `text`."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = start_server(data_dir=tmp_path_factory.mktemp("metrics"), devices="cpu", cpu_slots=1, metrics_port=0)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def stub(server: ServerHandle) -> Iterator[service_pb2_grpc.TrainingServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield service_pb2_grpc.TrainingServiceStub(channel)


def _external_spec(trials: int) -> dict[str, Any]:
    return {
        "name": "quadratic",
        "external": {},
        "search_space": [{"name": "x", "float_range": {"low": -2, "high": 2}}],
        "objective": {"metric": "value", "mode": "MINIMIZE"},
        "training": {"epochs": 2},
        "budget": {"max_trials": trials, "max_concurrent_trials": 1},
    }


def _evaluate(stub: service_pb2_grpc.TrainingServiceStub, study_id: str, ends: list[int]) -> int:
    """Asks for trials one by one and ends each as `ends` says (after two reported steps); returns the asks."""
    asks = 0
    for state in ends:
        reply = stub.SuggestTrials(pb.SuggestTrialsRequest(study_id=study_id, count=1, client_id="t"))
        asks += 1
        (trial,) = reply.trials
        x = trial.config["x"]
        for step in (1, 2):
            stub.ReportTrial(
                pb.ReportTrialRequest(
                    study_id=study_id, trial_id=trial.trial_id, step=step, metrics={"value": x * x + 1 / step}
                )
            )
        done = pb.CompleteTrialRequest(
            study_id=study_id, trial_id=trial.trial_id, state=state, error="" if state == pb.TRIAL_COMPLETED else "no"
        )
        stub.CompleteTrial(done)
    return asks


def test_trials_by_state_rpcs_and_events_after_an_external_study(server: ServerHandle, stub: Any) -> None:
    assert server.metrics is not None and server.metrics.address.startswith("http://127.0.0.1:")
    before = samples(scrape(server.metrics.address))
    study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(_external_spec(5))))
    ends = [pb.TRIAL_COMPLETED, pb.TRIAL_FAILED, pb.TRIAL_COMPLETED, pb.TRIAL_INFEASIBLE]
    asks = _evaluate(stub, study.study_id, ends)
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetStudy(pb.GetStudyRequest(study_id="st-missing"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    found = samples(scrape(server.metrics.address))
    stored = stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id)).trials
    by_state = {
        name: sum(pb.TrialState.Name(t.state) == f"TRIAL_{name}" for t in stored)
        for name in ("COMPLETED", "FAILED", "INFEASIBLE")
    }
    assert by_state == {"COMPLETED": 2, "FAILED": 1, "INFEASIBLE": 1}
    for name, count in by_state.items():
        grown = value(found, "tuneyard_trials", state=name) - value(before, "tuneyard_trials", state=name)
        assert grown == count, name
    assert value(found, "tuneyard_trials", state="RUNNING") == 0
    assert value(found, "tuneyard_studies", state="RUNNING") >= 1  # one trial of five still to ask for
    assert value(found, "tuneyard_trials_remaining") >= 1
    assert value(found, "tuneyard_store_readable") == 1

    rpc = {"grpc_type": "unary", "grpc_service": SERVICE}
    suggest = dict(rpc, grpc_method="SuggestTrials")
    handled = value(found, "grpc_server_handled_total", **suggest, grpc_code="OK")
    assert (
        handled - before.get(("grpc_server_handled_total", frozenset(dict(suggest, grpc_code="OK").items())), 0) == asks
    )
    assert value(found, "grpc_server_started_total", **suggest) == handled
    assert value(found, "grpc_server_handled_total", **rpc, grpc_method="ReportTrial", grpc_code="OK") >= 2 * asks
    assert value(found, "grpc_server_handled_total", **rpc, grpc_method="GetStudy", grpc_code="NOT_FOUND") == 1
    assert value(found, "grpc_server_handling_seconds_count", **suggest) == handled
    assert value(found, "grpc_server_handling_seconds_bucket", **suggest, le="+Inf") == handled
    assert value(found, "grpc_server_handling_seconds_sum", **suggest) > 0

    # events: the study's own (started, each trial's start, progress and end) are all in the store
    events = server.storage.last_sequence(study.study_id)[0]
    assert events >= 1 + len(ends) * 4
    assert value(found, "tuneyard_events_stored") - value(before, "tuneyard_events_stored") == events


def test_a_training_trial_holds_its_device_and_a_killed_worker_counts_as_a_restart(
    server: ServerHandle, stub: Any
) -> None:
    assert server.metrics is not None
    spec = tiny_spec(training={"epochs": 200, "batch_size": 128, "optimizer": {"name": "adam"}, "seed": 0})
    spec["search_space"] = [{"name": "optimizer.lr", "float_range": {"low": 0.001, "high": 0.01}}]
    spec["budget"] = {"max_trials": 1, "max_concurrent_trials": 1}
    study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))
    for event in stub.WatchStudy(pb.WatchStudyRequest(study_id=study.study_id), timeout=90):
        if event.HasField("trial_progress"):
            break  # trained one epoch of 200: the trial holds the CPU slot now
    running = samples(scrape(server.metrics.address))
    assert value(running, "tuneyard_device_running_trials", device="cpu:0") == 1
    assert value(running, "tuneyard_device_share_in_use", device="cpu:0") == 1
    assert value(running, "tuneyard_trials", state="RUNNING") == 1
    assert value(running, "tuneyard_device_workers", device="cpu:0") >= 1
    assert value(running, "tuneyard_node_memory_bytes", node=os.uname().nodename) > 0
    assert not any(name == "tuneyard_device_memory_bytes" for name, _ in running)  # CPU slots: no device memory
    restarts = value(running, "tuneyard_worker_restarts_total", device="cpu:0")

    (worker,) = [w for w in server.pool.workers if w.busy]
    os.kill(worker.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while value(samples(scrape(server.metrics.address)), "tuneyard_worker_restarts_total", device="cpu:0") == restarts:
        assert time.monotonic() < deadline, "the killed worker was not counted as a restart"
        time.sleep(0.05)
    while not pb.StudyState.Name(stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id)).state).endswith("FAILED"):
        assert time.monotonic() < deadline, "the study did not fail with its only trial"
        time.sleep(0.05)  # no retries in its budget: the crashed trial FAILED, and with it the study
    ended = samples(scrape(server.metrics.address))
    assert value(ended, "tuneyard_device_running_trials", device="cpu:0") == 0
    assert value(ended, "tuneyard_device_share_in_use", device="cpu:0") == 0
    assert value(ended, "tuneyard_trials", state="FAILED") == value(running, "tuneyard_trials", state="FAILED") + 1


def test_metrics_need_the_servers_token_when_it_has_tokens() -> None:
    registry = CollectorRegistry()
    Counter("demo_things", "Things.", registry=registry).inc(3)
    metrics = MetricsServer(registry, "127.0.0.1", 0, Authenticator([Token("prom", b"s" * 20)]))
    try:
        for token in ("", "wrong-token-wrong-token"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                scrape(metrics.address, token)
            assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"] == "Bearer"
        assert value(samples(scrape(metrics.address, "s" * 20)), "demo_things_total") == 3
        with pytest.raises(urllib.error.HTTPError) as elsewhere:
            scrape(metrics.address.removesuffix("metrics") + "other", "s" * 20)
        assert elsewhere.value.code == 404
    finally:
        metrics.stop()


def test_plain_http_metrics_stay_on_loopback_unless_insecure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check_metrics_bind("127.0.0.1", insecure=False)
    check_metrics_bind("::1", insecure=False)
    check_metrics_bind("0.0.0.0", insecure=True)
    with pytest.raises(SecurityConfigError, match="metrics"):
        check_metrics_bind("0.0.0.0", insecure=False)
    # TLS lets gRPC listen on the network; the metrics' plain HTTP still needs --insecure said out loud.
    certs = make_certs(tmp_path / "certs")
    tls = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    argv = ["--host", "0.0.0.0", *tls, "--metrics-port", "0", "--data-dir", str(tmp_path / "data")]
    assert serve_main(argv) == 2
    assert "refusing to serve metrics (plain HTTP) on 0.0.0.0" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # refused before anything was opened
    with pytest.raises(SecurityConfigError, match="metrics"):
        start_server(
            data_dir=tmp_path / "data",
            host="0.0.0.0",
            tls=TlsFiles(certs.server_cert, certs.server_key),
            metrics_port=0,
        )
    assert not (tmp_path / "data").exists()


def _echo_server(registry: CollectorRegistry, auth: Authenticator) -> tuple[grpc.Server, int]:
    """A real gRPC server with one unary and one streaming method of a test service, behind RpcMetrics and
    the server's own AuthInterceptor, as `app._grpc_server` orders them."""

    def say(request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"boom":
            raise RuntimeError("a handler bug")
        return request

    def count(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(int(request)):
            yield str(i).encode()
            time.sleep(0.01)

    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), interceptors=[RpcMetrics(registry), AuthInterceptor(auth)]
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_rpc_metrics_count_refused_failed_streamed_and_cancelled_calls() -> None:
    registry = CollectorRegistry()
    server, port = _echo_server(registry, Authenticator([Token("t", b"k" * 20)]))
    good = (("authorization", "Bearer " + "k" * 20),)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            say = channel.unary_unary("/test.Echo/Say")
            count = channel.unary_stream("/test.Echo/Count")
            assert say(b"hi", metadata=good, timeout=5) == b"hi"
            for metadata, code in (((), grpc.StatusCode.UNAUTHENTICATED), (good, grpc.StatusCode.UNKNOWN)):
                with pytest.raises(grpc.RpcError) as failed:
                    say(b"boom", metadata=metadata, timeout=5)
                assert failed.value.code() == code
            assert list(count(b"3", metadata=good, timeout=5)) == [b"0", b"1", b"2"]
            stream = count(b"500", metadata=good, timeout=5)
            next(stream)
            stream.cancel()
            deadline = time.monotonic() + 5
            while (
                registry.get_sample_value(
                    "grpc_server_handled_total",
                    {
                        "grpc_type": "server_stream",
                        "grpc_service": "test.Echo",
                        "grpc_method": "Count",
                        "grpc_code": "CANCELLED",
                    },
                )
                is None
            ):
                assert time.monotonic() < deadline, "the cancelled stream was not counted"
                time.sleep(0.02)
    finally:
        server.stop(0)
    found = samples(generate_latest(registry).decode())
    unary = {"grpc_type": "unary", "grpc_service": "test.Echo", "grpc_method": "Say"}
    streaming = {"grpc_type": "server_stream", "grpc_service": "test.Echo", "grpc_method": "Count"}
    for code in ("OK", "UNAUTHENTICATED", "UNKNOWN"):
        assert value(found, "grpc_server_handled_total", **unary, grpc_code=code) == 1, code
    assert value(found, "grpc_server_started_total", **unary) == 3
    assert value(found, "grpc_server_handled_total", **streaming, grpc_code="OK") == 1
    assert value(found, "grpc_server_handled_total", **streaming, grpc_code="CANCELLED") == 1
    assert value(found, "grpc_server_handling_seconds_count", **streaming) == 2
    # the finished stream took its three 10 ms steps: it falls in no bucket below 25 ms
    assert value(found, "grpc_server_handling_seconds_bucket", **streaming, le="0.025") <= 1
    assert value(found, "grpc_server_handling_seconds_sum", **streaming) >= 0.03

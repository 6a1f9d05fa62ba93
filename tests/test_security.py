"""Secure by default: where the server listens, TLS and mutual TLS, bearer tokens on every RPC
(the stream and reflection too, health left open), and secrets kept out of everything it says.

Real certificates are made per test module (tests/certs.py); servers listen on loopback only.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from certs import Certs, make_certs
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support import ServerProcess, grpcurl_binary, tiny_spec, to_proto

from tuneyard.server.api.security import SecurityConfigError, TlsFiles, Token, load_tokens
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

TOKEN = "tok-" + "7f3a9c1e5b2d8a4f6c0e9b1d"
OTHER_TOKEN = "tok-" + "0000111122223333444455"

# One request per RPC of the service: each must be refused without a valid token.
CALLS: list[tuple[str, Any]] = [
    ("CreateStudy", pb.CreateStudyRequest(spec=to_proto(tiny_spec(budget={"max_trials": 1})))),
    ("GetStudy", pb.GetStudyRequest(study_id="st-x")),
    ("ListStudies", pb.ListStudiesRequest()),
    ("CancelStudy", pb.CancelStudyRequest(study_id="st-x")),
    ("ListTrials", pb.ListTrialsRequest(study_id="st-x")),
    ("GetTrial", pb.GetTrialRequest(study_id="st-x", trial_id=1)),
    ("ListPlugins", pb.ListPluginsRequest()),
    ("GetServerInfo", pb.GetServerInfoRequest()),
    ("SuggestTrials", pb.SuggestTrialsRequest(study_id="st-x", count=1)),
    ("ReportTrial", pb.ReportTrialRequest(study_id="st-x", trial_id=1, step=1, metrics={"v": 1.0})),
    ("CompleteTrial", pb.CompleteTrialRequest(study_id="st-x", trial_id=1, state=pb.TRIAL_COMPLETED)),
    ("DeleteStudy", pb.DeleteStudyRequest(study_id="st-x")),
    ("ExtendStudy", pb.ExtendStudyRequest(study_id="st-x", add_trials=1)),
]
# Every unary RPC of the service is in CALLS (the streams, WatchStudy and DownloadCheckpoint, are tried on their own).
assert {name for name, _ in CALLS} | {"WatchStudy", "DownloadCheckpoint"} == set(
    pb.DESCRIPTOR.services_by_name["TrainingService"].methods_by_name
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def start(tmp_path: Path, **security: Any) -> Any:
    from tuneyard.server.app import start_server

    return start_server(data_dir=tmp_path, devices="cpu", cpu_slots=1, **security)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Any]:
    handle = start(
        tmp_path_factory.mktemp("tls-store"),
        tls=TlsFiles(certs.server_cert, certs.server_key),
        tokens=[Token("alice", TOKEN.encode())],
    )
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Any]:
    handle = start(tmp_path_factory.mktemp("mtls-store"), tls=TlsFiles(certs.server_cert, certs.server_key, certs.ca))
    yield handle
    handle.stop()


def tls_channel(address: str, certs: Certs, client: tuple[Path, Path] | None = None) -> grpc.Channel:
    key, chain = (client[1].read_bytes(), client[0].read_bytes()) if client else (None, None)
    creds = grpc.ssl_channel_credentials(certs.ca.read_bytes(), key, chain)
    return grpc.secure_channel(localhost(address), creds)


def localhost(address: str) -> str:
    """The certificate names localhost; the server reports 127.0.0.1."""
    return address.replace("127.0.0.1", "localhost")


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def code_of(call: Any) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


# ---- where the server may listen ----


def test_plaintext_off_loopback_is_refused_before_anything_starts(tmp_path):
    store = tmp_path / "store"
    with pytest.raises(SecurityConfigError, match="refusing to serve plaintext on 0.0.0.0"):
        start(store, host="0.0.0.0", port=0)
    assert not store.exists()  # nothing was created, so nothing was bound


def test_serve_cli_refuses_plaintext_off_loopback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuneyard.client.cli",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "store"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "refusing to serve plaintext on 0.0.0.0" in proc.stderr and "--insecure" in proc.stderr
    assert not (tmp_path / "store").exists()


def test_insecure_flag_is_accepted_with_a_loud_warning(monkeypatch, capsys, tmp_path):
    """Checked without binding: the server is replaced by a stand-in that records its arguments."""
    from tuneyard.server import app, cli

    seen: dict[str, Any] = {}

    def stand_in(**kwargs: Any) -> Any:
        seen.update(kwargs)
        raise OSError("stand-in: not binding in tests")

    monkeypatch.setattr(app, "start_server", stand_in)
    assert cli.serve_main(["--host", "0.0.0.0", "--insecure", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "WARNING: --insecure: serving PLAINTEXT on 0.0.0.0" in err
    assert seen["insecure"] is True and seen["tls"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert"),
        (["--tls-cert", "missing.pem", "--tls-key", "missing-key.pem"], "cannot read a TLS file"),
        (["--token-file", "missing-tokens"], "cannot read the token file"),
    ],
)
def test_unusable_security_settings_stop_the_server_with_a_reason(tmp_path, capsys, args, message):
    from tuneyard.server import cli

    assert cli.serve_main(["--data-dir", str(tmp_path / "store"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_token_file_format(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"# team tokens\n\nalice {TOKEN}\n{OTHER_TOKEN}\n")
    assert load_tokens(path) == [Token("alice", TOKEN.encode()), Token("token-4", OTHER_TOKEN.encode())]
    for bad, why in [
        ("short-token\n", "shorter than 16"),
        ("", "no tokens"),
        (f"a {TOKEN}\na {OTHER_TOKEN}\n", "appears twice"),
        (f"a b {TOKEN}\n", "expected 'TOKEN' or 'NAME TOKEN'"),
    ]:
        path.write_text(bad)
        with pytest.raises(SecurityConfigError, match=why) as refused:
            load_tokens(path)
        assert TOKEN not in str(refused.value) and OTHER_TOKEN not in str(refused.value)


# ---- TLS and tokens ----


def test_plaintext_client_cannot_talk_to_a_tls_server(tls_server):
    with grpc.insecure_channel(tls_server.address) as channel:
        stub = service_pb2_grpc.TrainingServiceStub(channel)
        assert code_of(lambda: stub.ListStudies(pb.ListStudiesRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("token", [None, OTHER_TOKEN, "", TOKEN.upper()])
def test_every_rpc_and_the_stream_refuse_a_missing_or_wrong_token(tls_server, certs, token):
    metadata = bearer(token) if token is not None else None
    with tls_channel(tls_server.address, certs) as channel:
        stub = service_pb2_grpc.TrainingServiceStub(channel)
        for name, request in CALLS:
            try:
                getattr(stub, name)(request, metadata=metadata, timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, name
                assert "bearer token" in exc.details() and TOKEN not in exc.details()
            else:
                pytest.fail(f"{name} answered without a valid token")
        stream = stub.WatchStudy(pb.WatchStudyRequest(study_id="st-x"), metadata=metadata, timeout=10)
        assert code_of(lambda: list(stream)) == grpc.StatusCode.UNAUTHENTICATED
        download = stub.DownloadCheckpoint(pb.DownloadCheckpointRequest(study_id="st-x"), metadata=metadata, timeout=10)
        assert code_of(lambda: list(download)) == grpc.StatusCode.UNAUTHENTICATED
        assert stub.ListStudies(pb.ListStudiesRequest(), metadata=bearer(TOKEN)).studies == []  # nothing created


def test_an_external_study_is_evaluated_over_tls_with_a_token(tls_server, certs):
    spec = {
        "external": {},
        "search_space": [{"name": "x", "float_range": {"low": 0, "high": 1}}],
        "objective": {"metric": "v", "mode": "MINIMIZE"},
        "budget": {"max_trials": 1},
    }
    with tls_channel(tls_server.address, certs) as channel:
        stub = service_pb2_grpc.TrainingServiceStub(channel)
        study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)), metadata=bearer(TOKEN))
        (trial,) = stub.SuggestTrials(
            pb.SuggestTrialsRequest(study_id=study.study_id, count=1), metadata=bearer(TOKEN)
        ).trials
        assert trial.device == "client:token alice"  # no client_id: the token's name, never the token
        done = pb.CompleteTrialRequest(
            study_id=study.study_id, trial_id=trial.trial_id, state=pb.TRIAL_COMPLETED, metrics={"v": 0.5}
        )
        assert stub.CompleteTrial(done, metadata=bearer(TOKEN)).state == pb.TRIAL_COMPLETED


def test_the_right_token_runs_a_study_over_tls_and_health_stays_open(tls_server, certs):
    with tls_channel(tls_server.address, certs) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        stub = service_pb2_grpc.TrainingServiceStub(channel)
        spec = tiny_spec(training={"epochs": 1, "optimizer": {"name": "adam"}}, budget={"max_trials": 1})
        study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)), metadata=bearer(TOKEN))
        watch = pb.WatchStudyRequest(study_id=study.study_id)
        events = list(stub.WatchStudy(watch, metadata=bearer(TOKEN), timeout=120))
        assert events[-1].study_state.state == pb.STUDY_COMPLETED
        info = stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=bearer(TOKEN))
        assert TOKEN not in str(info) and "alice" not in str(info)


def test_reflection_needs_the_token_too(tls_server, certs):
    with tls_channel(tls_server.address, certs) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        def list_services(metadata: Any) -> list[str]:
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            (reply,) = list(stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=10))
            return [s.name for s in reply.list_services_response.service]

        assert code_of(lambda: list_services(None)) == grpc.StatusCode.UNAUTHENTICATED
        assert "tuneyard.v1.TrainingService" in list_services(bearer(TOKEN))


# ---- mutual TLS ----


def test_mutual_tls_needs_a_client_certificate_from_the_trusted_ca(mtls_server, certs):
    def list_studies(client: tuple[Path, Path] | None) -> Any:
        with tls_channel(mtls_server.address, certs, client) as channel:
            return service_pb2_grpc.TrainingServiceStub(channel).ListStudies(pb.ListStudiesRequest(), timeout=10)

    assert code_of(lambda: list_studies(None)) == grpc.StatusCode.UNAVAILABLE
    rogue = (certs.rogue_client_cert, certs.rogue_client_key)
    assert code_of(lambda: list_studies(rogue)) == grpc.StatusCode.UNAVAILABLE
    assert list_studies((certs.client_cert, certs.client_key)).studies == []


# ---- grpcurl ----


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([grpcurl_binary(), *args], capture_output=True, text=True, timeout=60)


def test_grpcurl_with_cacert_and_bearer_header(tls_server, certs):
    address = localhost(tls_server.address)
    listed = grpcurl("-cacert", str(certs.ca), "-H", f"authorization: Bearer {TOKEN}", address, "list")
    assert listed.returncode == 0, listed.stderr
    assert "tuneyard.v1.TrainingService" in listed.stdout.split()
    info = grpcurl(
        "-cacert",
        str(certs.ca),
        "-H",
        f"authorization: Bearer {TOKEN}",
        address,
        "tuneyard.v1.TrainingService/GetServerInfo",
    )
    assert info.returncode == 0 and '"executor": "local"' in info.stdout
    refused = grpcurl("-cacert", str(certs.ca), address, "tuneyard.v1.TrainingService/GetServerInfo")
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
    plaintext = grpcurl("-plaintext", "-H", f"authorization: Bearer {TOKEN}", address, "list")
    assert plaintext.returncode != 0
    # Reflection (how grpcurl learns the messages) needs the token; the health call itself does not.
    health = grpcurl(
        "-cacert",
        str(certs.ca),
        "-reflect-header",
        f"authorization: Bearer {TOKEN}",
        address,
        "grpc.health.v1.Health/Check",
    )
    assert health.returncode == 0 and "SERVING" in health.stdout, health.stderr


def test_grpcurl_mutual_tls(mtls_server, certs):
    address = localhost(mtls_server.address)
    with_cert = grpcurl(
        "-cacert",
        str(certs.ca),
        "-cert",
        str(certs.client_cert),
        "-key",
        str(certs.client_key),
        address,
        "tuneyard.v1.TrainingService/ListStudies",
    )
    assert with_cert.returncode == 0, with_cert.stderr
    without = grpcurl("-cacert", str(certs.ca), address, "tuneyard.v1.TrainingService/ListStudies")
    assert without.returncode != 0


# ---- secrets stay secret ----


def test_tokens_never_appear_in_logs_events_errors_or_server_info(tmp_path, certs):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {TOKEN}\n")
    proc = ServerProcess(
        tmp_path / "store",
        "--tls-cert",
        str(certs.server_cert),
        "--tls-key",
        str(certs.server_key),
        "--token-file",
        str(tokens),
        "--log-level",
        "DEBUG",
    )
    try:
        assert "TLS, 1 tokens" in "".join(proc.output)
        with tls_channel(proc.address, certs) as channel:
            stub = service_pb2_grpc.TrainingServiceStub(channel)
            for token in (OTHER_TOKEN, TOKEN.upper()):
                code_of(lambda token=token: stub.ListStudies(pb.ListStudiesRequest(), metadata=bearer(token)))
            spec = tiny_spec(training={"epochs": 1, "optimizer": {"name": "adam"}}, budget={"max_trials": 1})
            spec["name"] = "secrets-check"
            study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)), metadata=bearer(TOKEN))
            events = list(stub.WatchStudy(pb.WatchStudyRequest(study_id=study.study_id), metadata=bearer(TOKEN)))
            bad = pb.GetStudyRequest(study_id=TOKEN)  # a secret pasted into the wrong field comes back as input only
            code_of(lambda: stub.GetStudy(bad, metadata=bearer(TOKEN)))
            info = stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=bearer(TOKEN))
    finally:
        assert proc.stop() == 0
    said = "".join(proc.output) + "".join(str(e) for e in events) + str(info)
    said += "".join(p.read_text(errors="replace") for p in (tmp_path / "store" / "logs").glob("*.log"))
    for secret in (TOKEN, OTHER_TOKEN, TOKEN.upper()):
        assert secret not in said


@pytest.mark.parametrize("name", ["antigravity", "os:system", "tuneyard.server.app:start_server", "../../etc/passwd"])
def test_a_client_cannot_make_the_server_import_anything(tls_server, certs, name):
    """Plugins come only from installed distributions' entry points; a spec names a registered plugin."""
    spec = tiny_spec(model={"name": name})
    with tls_channel(tls_server.address, certs) as channel:
        stub = service_pb2_grpc.TrainingServiceStub(channel)
        request = pb.CreateStudyRequest(spec=to_proto(spec))
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateStudy(request, metadata=bearer(TOKEN))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("spec.model.name")
    assert "antigravity" not in sys.modules


class FakeContext:
    def __init__(self, metadata: list[tuple[str, str]], peer: str = "ipv4:10.1.2.3:5555") -> None:
        self._metadata, self._peer = metadata, peer

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self._metadata

    def peer(self) -> str:
        return self._peer


def test_per_client_limits_count_by_token_name_when_tokens_are_on():
    from tuneyard.server.api.security import Authenticator
    from tuneyard.server.api.servicer import client_identity

    auth = Authenticator([Token("alice", TOKEN.encode())])
    assert client_identity(FakeContext(bearer(TOKEN)), auth) == "token alice"
    assert client_identity(FakeContext(bearer(OTHER_TOKEN)), auth) == "10.1.2.3"
    assert client_identity(FakeContext([]), None) == "10.1.2.3"

"""The client side of security: the SDK and the CLI over TLS and mutual TLS, with bearer tokens.

Real certificates (tests/certs.py) and real servers on loopback ports the OS picks: one TLS server
that wants a token and one mutual-TLS server, shared by the module. A scripted plaintext server
behind the real auth interceptor shows that the token rides on every watch reconnect.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from certs import Certs, make_certs
from support import TINY_SPEC, tiny_spec

from tuneyard.client import Client, TuneyardError
from tuneyard.client.cli import _serve_args, build_parser, main
from tuneyard.client.connection import InsecureTokenWarning
from tuneyard.common.addresses import is_loopback
from tuneyard.server.api.security import Authenticator, AuthInterceptor, TlsFiles, Token
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

TOKEN = "tok-" + "5e1f0a9b7c3d2e8f4a6b"
WRONG_TOKEN = "tok-" + "0123456789abcdef0123"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TUNEYARD_TOKEN", "TUNEYARD_SERVER", "TUNEYARD_TLS_CA", "TUNEYARD_TLS_CERT", "TUNEYARD_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _start(data_dir: Path, **security: Any) -> Any:
    from tuneyard.server.app import start_server

    return start_server(data_dir=data_dir, devices="cpu", cpu_slots=1, **security)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Any]:
    """TLS, and every RPC but health needs TOKEN."""
    handle = _start(
        tmp_path_factory.mktemp("tls-data"),
        tls=TlsFiles(certs.server_cert, certs.server_key),
        tokens=[Token("alice", TOKEN.encode())],
    )
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Any]:
    """Mutual TLS: clients need a certificate signed by the test CA; no token."""
    handle = _start(tmp_path_factory.mktemp("mtls-data"), tls=TlsFiles(certs.server_cert, certs.server_key, certs.ca))
    yield handle
    handle.stop()


def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(TuneyardError) as info:
        call()
    return info.value.code, info.value.details


# ---- SDK over TLS with a token ----------------------------------------------------------------


def test_sdk_over_tls_with_a_token_runs_a_study_and_watches_it_to_the_end(tls_server: Any, certs: Certs) -> None:
    spec = tiny_spec(budget={"max_trials": 1}, training={**TINY_SPEC["training"], "epochs": 1})
    with Client(tls_server.address, tls_ca=certs.ca, token=TOKEN) as client:
        study = client.create_study(spec)
        events = list(client.watch(study.study_id))
        result = client.wait(study.study_id, after_sequence=events[-1].sequence)
    kinds = [event.WhichOneof("event") for event in events]
    assert "trial_started" in kinds and "trial_finished" in kinds
    assert events[-1].study_state.state == pb.STUDY_COMPLETED
    assert result.succeeded and result.best_config, result.study.error


def test_tls_material_may_be_given_as_pem_bytes(tls_server: Any, certs: Certs) -> None:
    with Client(tls_server.address, tls_ca=certs.ca.read_bytes(), token=TOKEN) as client:
        assert client.info().version


def test_the_token_defaults_to_the_environment_variable(
    tls_server: Any, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEYARD_TOKEN", TOKEN)
    with Client(tls_server.address, tls_ca=str(certs.ca)) as client:
        assert client.has_token
        assert list(client.list_studies()) is not None
    with Client(tls_server.address, tls_ca=certs.ca, token="") as client:  # "" turns the variable off
        assert _code(client.info)[0] == UNAUTHENTICATED


def test_a_missing_token_is_refused_on_unary_calls_and_on_the_stream(tls_server: Any, certs: Certs) -> None:
    with Client(tls_server.address, tls_ca=certs.ca) as client:
        assert not client.has_token
        for call in (client.info, lambda: list(client.list_studies()), lambda: client.get_study("st-x")):
            code, details = _code(call)
            assert code == UNAUTHENTICATED and "missing bearer token" in details
        code, details = _code(lambda: list(client.watch("st-x")))  # not retried: refused at once
        assert code == UNAUTHENTICATED and "missing bearer token" in details


def test_a_wrong_token_is_refused_and_never_echoed(tls_server: Any, certs: Certs) -> None:
    with Client(tls_server.address, tls_ca=certs.ca, token=WRONG_TOKEN) as client:
        for call in (client.info, lambda: list(client.watch("st-x"))):
            with pytest.raises(TuneyardError) as info:
                call()
            assert info.value.code == UNAUTHENTICATED and "invalid bearer token" in info.value.details
            assert WRONG_TOKEN not in str(info.value) and WRONG_TOKEN not in repr(info.value)
        assert WRONG_TOKEN not in repr(client) and WRONG_TOKEN not in repr(vars(client))


def test_plaintext_against_the_tls_server_fails_cleanly(tls_server: Any) -> None:
    with Client(tls_server.address, token=TOKEN, timeout=10) as client:
        assert _code(client.info)[0] == UNAVAILABLE


def test_an_untrusted_server_certificate_fails_the_handshake_without_retries(tls_server: Any, certs: Certs) -> None:
    with Client(tls_server.address, tls_ca=certs.other_ca, token=TOKEN, timeout=10) as client:
        code, details = _code(client.info)
        assert code == UNAVAILABLE and "handshake failed" in details.lower()
        client.watch_backoff = 30.0  # a retry would make this test time out
        code, _ = _code(lambda: list(client.watch("st-x")))
        assert code == UNAVAILABLE


# ---- mutual TLS --------------------------------------------------------------------------------


def test_mtls_with_the_client_certificate_works(mtls_server: Any, certs: Certs) -> None:
    with Client(mtls_server.address, tls_ca=certs.ca, tls_cert=certs.client_cert, tls_key=certs.client_key) as client:
        assert "mutual TLS" in repr(client)
        assert client.info().version


@pytest.mark.parametrize("client_cert", ["none", "rogue"])
def test_mtls_without_a_trusted_client_certificate_fails(mtls_server: Any, certs: Certs, client_cert: str) -> None:
    pair = {"none": {}, "rogue": {"tls_cert": certs.rogue_client_cert, "tls_key": certs.rogue_client_key}}
    with Client(mtls_server.address, tls_ca=certs.ca, timeout=10, **pair[client_cert]) as client:
        assert _code(client.info)[0] == UNAVAILABLE


# ---- the token on every call, over plaintext loopback too ----------------------------------------


class _FlakyWatch(service_pb2_grpc.TrainingServiceServicer):
    """Breaks the first WatchStudy stream after one event; records each call's authorization."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def _record(self, name: str, context: grpc.ServicerContext) -> None:
        self.seen.append((name, dict(context.invocation_metadata()).get("authorization", "")))

    def GetStudy(self, request: Any, context: grpc.ServicerContext) -> pb.Study:
        self._record("GetStudy", context)
        return pb.Study(study_id=request.study_id, state=pb.STUDY_RUNNING)

    def WatchStudy(self, request: Any, context: grpc.ServicerContext) -> Iterator[pb.StudyEvent]:
        self._record("WatchStudy", context)
        if request.after_sequence == 0:
            yield pb.StudyEvent(sequence=1, study_state=pb.StudyStateChanged(state=pb.STUDY_RUNNING))
            context.abort(grpc.StatusCode.UNAVAILABLE, "server going away")
        yield pb.StudyEvent(sequence=2, study_state=pb.StudyStateChanged(state=pb.STUDY_COMPLETED))


def test_the_token_rides_on_every_call_and_every_watch_reconnect() -> None:
    service = _FlakyWatch()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[AuthInterceptor(Authenticator([Token("ci", TOKEN.encode())]))],
    )
    service_pb2_grpc.add_TrainingServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}", token=TOKEN) as client, warnings.catch_warnings():
            warnings.simplefilter("error", InsecureTokenWarning)  # loopback: no warning
            client.watch_backoff = 0.01
            assert [event.sequence for event in client.watch("st-1")] == [1, 2]
            assert client.get_study("st-1").study_id == "st-1"
    finally:
        server.stop(None)
    assert [name for name, _ in service.seen] == ["WatchStudy", "WatchStudy", "GetStudy"]
    assert {auth for _, auth in service.seen} == {f"Bearer {TOKEN}"}


# ---- settings checked before anything is sent ------------------------------------------------------


def test_bad_tls_settings_are_refused_with_the_reason(tmp_path: Path, certs: Certs) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    cases = [
        ({"tls_cert": certs.client_cert}, "tls_cert and tls_key go together"),
        ({"tls_ca": tmp_path / "missing.pem"}, "cannot read tls_ca file"),
        ({"tls_ca": not_pem}, "is not PEM"),
        ({"tls_ca": b"junk"}, "is not PEM"),
    ]
    for settings, message in cases:
        with pytest.raises(TuneyardError, match=message) as info:
            Client("127.0.0.1:1", **settings)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_token_with_spaces_is_refused_without_quoting_it() -> None:
    with pytest.raises(TuneyardError) as info:
        Client("127.0.0.1:1", token="two words-secret")
    assert "words-secret" not in str(info.value)


def test_a_token_sent_in_plaintext_off_this_machine_is_warned_about() -> None:
    with pytest.warns(InsecureTokenWarning, match="UNENCRYPTED to 10.11.12.13:50051"):
        Client("10.11.12.13:50051", token=TOKEN).close()  # the channel connects lazily: nothing is sent
    with warnings.catch_warnings():
        warnings.simplefilter("error", InsecureTokenWarning)
        Client("localhost:50051", token=TOKEN).close()
        Client("10.11.12.13:50051", tls=True, token=TOKEN).close()


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("127.0.0.1:1", True),
        ("localhost:1", True),
        ("[::1]:1", True),
        ("dns:///localhost:1", True),
        ("unix:/tmp/s", True),
        ("gpu-box:50051", False),
        ("10.0.0.1:1", False),
        ("[2001:db8::1]:1", False),
    ],
)
def test_loopback_addresses_are_recognised(address: str, local: bool) -> None:
    assert is_loopback(address) is local


# ---- the CLI --------------------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    assert TOKEN not in out + err and WRONG_TOKEN not in out + err
    return code, out, err


def test_cli_studies_and_info_over_tls_with_a_token(
    tls_server: Any, certs: Certs, capsys: pytest.CaptureFixture[str]
) -> None:
    address = tls_server.address
    code, out, _ = _cli(capsys, "--server", address, "--tls-ca", certs.ca, "--token", TOKEN, "info")
    assert code == 0 and f"server:   {address}" in out
    code, out, _ = _cli(capsys, "studies", "--server", address, "--tls-ca", certs.ca, "--token", TOKEN)
    assert code == 0, out


def test_cli_without_a_token_says_how_to_give_one(
    tls_server: Any, certs: Certs, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _cli(capsys, "--server", tls_server.address, "--tls-ca", certs.ca, "studies")
    assert code == 2
    assert "error: UNAUTHENTICATED: missing bearer token" in err and "pass --token or set TUNEYARD_TOKEN" in err
    code, _, err = _cli(capsys, "--server", tls_server.address, "--tls-ca", certs.ca, "--token", WRONG_TOKEN, "info")
    assert code == 2 and "UNAUTHENTICATED: invalid bearer token" in err and "refused the token" in err


def test_cli_reads_the_token_and_tls_settings_from_the_environment(
    tls_server: Any, certs: Certs, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEYARD_SERVER", tls_server.address)
    monkeypatch.setenv("TUNEYARD_TLS_CA", str(certs.ca))
    monkeypatch.setenv("TUNEYARD_TOKEN", TOKEN)
    assert _cli(capsys, "info")[0] == 0
    assert _cli(capsys, "studies")[0] == 0


def test_cli_tls_failures_get_a_clear_message(
    tls_server: Any, mtls_server: Any, certs: Certs, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _cli(capsys, "--server", tls_server.address, "--tls-ca", certs.other_ca, "--token", TOKEN, "info")
    assert code == 2 and f"error: TLS handshake with {tls_server.address} failed" in err and "--tls-ca" in err
    code, _, err = _cli(capsys, "--server", mtls_server.address, "--tls-ca", certs.ca, "info")
    assert code == 2 and "TLS handshake" in err and "client certificate" in err
    code, _, err = _cli(capsys, "--server", tls_server.address, "--token", TOKEN, "info")
    assert code == 2 and "if it serves TLS, pass --tls-ca" in err
    code, _, err = _cli(capsys, "--server", tls_server.address, "--tls-ca", certs.ca / "nope", "info")
    assert code == 2 and "cannot read tls_ca file" in err


def test_cli_mtls_with_a_client_certificate(mtls_server: Any, certs: Certs, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--tls-ca", certs.ca, "--tls-cert", certs.client_cert, "--tls-key", certs.client_key]
    assert _cli(capsys, "--server", mtls_server.address, *argv, "info")[0] == 0


def test_the_console_script_keeps_the_token_out_of_its_output(tls_server: Any, certs: Certs) -> None:
    script = Path(sys.executable).parent / "tuneyard"
    env = {**os.environ, "TUNEYARD_TOKEN": TOKEN, "TUNEYARD_TLS_CA": str(certs.ca)}
    for argv in (["--help"], ["info", "--help"], ["--server", tls_server.address, "info"]):
        done = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        assert TOKEN not in done.stdout + done.stderr
        if "--help" in argv:
            assert "$TUNEYARD_TOKEN" in done.stdout  # the help names the variable, not its value


def test_connection_options_parse_before_or_after_the_command() -> None:
    args = build_parser().parse_args(["--tls-ca", "a.pem", "info", "--token", "t", "--tls-cert", "c", "--tls-key", "k"])
    assert (args.tls_ca, args.token, args.tls_cert, args.tls_key, args.tls) == ("a.pem", "t", "c", "k", False)
    assert build_parser().parse_args(["studies", "--tls"]).tls is True
    assert build_parser().parse_args(["info"]).token is None


def test_serve_args_skip_the_client_connection_options() -> None:
    assert _serve_args(["--tls-ca", "a.pem", "--token", "t", "--tls", "serve", "--port", "0"]) == ["--port", "0"]
    assert _serve_args(["--token=t", "serve"]) == []
    assert _serve_args(["--tls-ca", "serve"]) is None  # "serve" is the CA's file name here

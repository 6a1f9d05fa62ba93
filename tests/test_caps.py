"""Every cap of `tuneyard.server.limits`, enforced over real gRPC on loopback: exceeding one gives
RESOURCE_EXHAUSTED or INVALID_ARGUMENT with a clear message, stores nothing, and the server goes on
serving. Caps whose real size would make a heavy test are lowered on this module's own server."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from support import TINY_SPEC, to_proto

from tuneyard.server import limits
from tuneyard.server.api.servicer import client_identity
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

Stub = service_pb2_grpc.TrainingServiceStub
WATCHERS_PER_CLIENT = 2


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tuneyard.server.api import servicer
    from tuneyard.server.app import start_server

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(servicer, "MAX_WATCHERS_PER_CLIENT", WATCHERS_PER_CLIENT)
        handle = start_server(data_dir=tmp_path_factory.mktemp("caps"), devices="cpu", cpu_slots=1)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def rpc(served: Any) -> Iterator[Stub]:
    with grpc.insecure_channel(served.address) as channel:
        yield Stub(channel)


def spec_with(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(changes)
    return spec


def long_running() -> dict[str, Any]:
    """One trial of many epochs: the study stays unfinished until cancelled."""
    return spec_with(training={**TINY_SPEC["training"], "epochs": 500}, budget={"max_trials": 1})


def study_ids(rpc: Stub) -> list[str]:
    return [s.study_id for s in rpc.ListStudies(pb.ListStudiesRequest(page_size=1000), timeout=30).studies]


def cancel(rpc: Stub, study_id: str) -> None:
    """Cancels a study and waits until it has ended (an ended study is left as it is)."""
    ended = (pb.STUDY_COMPLETED, pb.STUDY_FAILED, pb.STUDY_CANCELLED)
    deadline = time.monotonic() + 60
    while rpc.GetStudy(pb.GetStudyRequest(study_id=study_id), timeout=30).state not in ended:
        assert time.monotonic() < deadline, f"study {study_id} did not end"
        try:
            rpc.CancelStudy(pb.CancelStudyRequest(study_id=study_id), timeout=60)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()  # it ended meanwhile
        time.sleep(0.1)


def refused(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def assert_create_refused(
    rpc: Stub, request: pb.CreateStudyRequest, code: grpc.StatusCode, field: str, reason: str
) -> None:
    before = study_ids(rpc)
    error = refused(lambda: rpc.CreateStudy(request, timeout=60))
    assert error.code() == code, error.details()
    assert error.details().startswith(field), error.details()[:300]
    assert reason in error.details(), error.details()[:300]
    assert study_ids(rpc) == before  # nothing stored
    assert rpc.GetServerInfo(pb.GetServerInfoRequest(), timeout=30).version  # still serving


def create(spec: dict[str, Any], request_id: str = "") -> pb.CreateStudyRequest:
    return pb.CreateStudyRequest(spec=to_proto(spec), request_id=request_id)


def choice(values: list[Any]) -> dict[str, Any]:
    return {"name": "model.num_conv_layers", "choice": {"values": values}}


INVALID = grpc.StatusCode.INVALID_ARGUMENT
N_PARAMS = limits.MAX_PARAMETERS + 1
N_VALUES = limits.MAX_CHOICE_VALUES + 1
LONG_NAME = "n" * (limits.MAX_NAME_CHARS + 1)
LONG_TEXT = "t" * (limits.MAX_STRING_CHARS + 1)

SPEC_CAPS = [
    (
        "search-space parameters",
        spec_with(search_space=[{"name": f"model.p{i}", "int_range": {"low": 1, "high": 2}} for i in range(N_PARAMS)]),
        "spec.search_space",
        f"more than {limits.MAX_PARAMETERS} parameters",
    ),
    (
        "choice values",
        spec_with(search_space=[choice(list(range(1, N_VALUES + 1)))]),
        "spec.search_space[0].choice.values",
        f"more than {limits.MAX_CHOICE_VALUES} values",
    ),
    (
        "condition values",
        spec_with(
            search_space=[
                {"name": "optimizer.name", "choice": {"values": ["sgd", "adam"]}},
                {
                    "name": "optimizer.momentum",
                    "float_range": {"low": 0.1, "high": 0.9},
                    "condition": {"parent": "optimizer.name", "values": [f"v{i}" for i in range(N_VALUES)]},
                },
            ]
        ),
        "spec.search_space[1].condition.values",
        f"more than {limits.MAX_CHOICE_VALUES} values",
    ),
    ("study name", spec_with(name=LONG_NAME), "spec.name", f"longer than {limits.MAX_NAME_CHARS} characters"),
    (
        "parameter name",
        spec_with(search_space=[{"name": LONG_NAME, "int_range": {"low": 1, "high": 2}}]),
        "spec.search_space[0].name",
        f"longer than {limits.MAX_NAME_CHARS} characters",
    ),
    (
        "option key",
        spec_with(model={"name": "simple_cnn", "options": {LONG_NAME: 1}}),
        "spec.model.options",
        f"has a key longer than {limits.MAX_NAME_CHARS} characters",
    ),
    (
        "option string",
        spec_with(
            training={
                **TINY_SPEC["training"],
                "augmentations": [{"name": "autoaugment", "options": {"policy": LONG_TEXT}}],
            }
        ),
        "spec.training.augmentations[0].options.policy",
        f"longer than {limits.MAX_STRING_CHARS} characters",
    ),
    (
        "string inside a list option",
        spec_with(
            training={
                **TINY_SPEC["training"],
                "lr_scheduler": {"name": "multistep", "options": {"milestones": [1, LONG_TEXT]}},
            }
        ),
        "spec.training.lr_scheduler.options.milestones[1]",
        f"longer than {limits.MAX_STRING_CHARS} characters",
    ),
    (
        "choice value string",
        spec_with(search_space=[{"name": "training.precision", "choice": {"values": ["fp32", LONG_TEXT]}}]),
        "spec.search_space[0].choice.values[1]",
        f"longer than {limits.MAX_STRING_CHARS} characters",
    ),
    (
        "plugin name",
        spec_with(model={"name": LONG_TEXT}),
        "spec.model.name",
        f"longer than {limits.MAX_STRING_CHARS} characters",
    ),
    (
        "trials per study",
        spec_with(budget={"max_trials": limits.MAX_TRIALS + 1}),
        "spec.budget.max_trials",
        f"between 1 and {limits.MAX_TRIALS}",
    ),
]


@pytest.mark.parametrize(("label", "spec", "field", "reason"), SPEC_CAPS, ids=[c[0] for c in SPEC_CAPS])
def test_a_spec_past_a_cap_is_invalid_and_stores_nothing(rpc, label, spec, field, reason):
    assert_create_refused(rpc, create(spec), INVALID, field, reason)


def test_a_spec_at_the_caps_is_accepted(rpc):
    spec = spec_with(
        name="n" * limits.MAX_NAME_CHARS,
        search_space=[choice(list(range(1, limits.MAX_CHOICE_VALUES + 1)))],
        budget={"max_trials": limits.MAX_TRIALS},
    )
    study = rpc.CreateStudy(create(spec, "r" * limits.MAX_ID_CHARS), timeout=60)
    cancel(rpc, study.study_id)


def test_a_request_past_the_message_size_is_resource_exhausted(rpc):
    request = create(spec_with(name="x" * (limits.MAX_MESSAGE_BYTES + 1024)))
    assert_create_refused(rpc, request, grpc.StatusCode.RESOURCE_EXHAUSTED, "", "")


def test_long_ids_are_invalid(rpc):
    long_id = "i" * (limits.MAX_ID_CHARS + 1)
    assert_create_refused(rpc, create(TINY_SPEC, long_id), INVALID, "request_id", f"longer than {limits.MAX_ID_CHARS}")
    for call in (
        lambda: rpc.GetStudy(pb.GetStudyRequest(study_id=long_id), timeout=30),
        lambda: next(rpc.WatchStudy(pb.WatchStudyRequest(study_id=long_id), timeout=30)),
    ):
        error = refused(call)
        assert error.code() == INVALID and error.details().startswith("study_id: longer than"), error.details()


@pytest.fixture
def active_cap(served: Any) -> Iterator[int]:
    """Lowers the server's cap on unfinished studies to two more than are unfinished now."""
    unfinished = len(served.storage.unfinished_studies())
    served.studies.max_active_studies = unfinished + 2
    yield unfinished + 2
    served.studies.max_active_studies = limits.DEFAULT_MAX_ACTIVE_STUDIES


def test_studies_past_the_active_cap_are_resource_exhausted_until_one_ends(rpc, active_cap):
    first = rpc.CreateStudy(create(long_running(), "active-1"), timeout=60)
    second = rpc.CreateStudy(create(long_running(), "active-2"), timeout=60)
    try:
        assert_create_refused(
            rpc,
            create(long_running(), "active-3"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "",
            f"studies are unfinished on this server (at most {active_cap})",
        )
        # A retry of a study that exists is no new study: it is answered as always.
        assert rpc.CreateStudy(create(long_running(), "active-1"), timeout=60).study_id == first.study_id
        # A bad spec is still told what is wrong with it.
        assert_create_refused(rpc, create(spec_with(name=LONG_NAME)), INVALID, "spec.name", "longer than")
        cancel(rpc, first.study_id)
        third = rpc.CreateStudy(create(long_running(), "active-3"), timeout=60)
        cancel(rpc, third.study_id)
    finally:
        for study in (first, second):
            cancel(rpc, study.study_id)


def watch(rpc: Stub, study_id: str) -> Any:
    return rpc.WatchStudy(pb.WatchStudyRequest(study_id=study_id), timeout=120)


def test_streams_past_the_per_client_cap_are_resource_exhausted(rpc):
    study = rpc.CreateStudy(create(long_running()), timeout=60)
    try:
        streams = [watch(rpc, study.study_id) for _ in range(WATCHERS_PER_CLIENT)]
        for stream in streams:
            next(stream)
        error = refused(lambda: next(watch(rpc, study.study_id)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        assert f"at most {WATCHERS_PER_CLIENT} per client" in error.details(), error.details()
        assert rpc.GetStudy(pb.GetStudyRequest(study_id=study.study_id), timeout=30).study_id  # still serving
        streams[0].cancel()
        replacement = watch(rpc, study.study_id)  # its place is free once its stream has ended
        for _ in range(100):
            try:
                next(replacement)
                break
            except grpc.RpcError as again:  # the server may not have seen the cancel yet
                assert again.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                time.sleep(0.1)
                replacement = watch(rpc, study.study_id)
        else:
            pytest.fail("a cancelled stream's place never came free")
        replacement.cancel()
        streams[1].cancel()
    finally:
        cancel(rpc, study.study_id)


class Peer:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


@pytest.mark.parametrize(
    ("peer", "client"),
    [
        ("ipv4:127.0.0.1:54321", "127.0.0.1"),
        ("ipv6:[::1]:54321", "::1"),
        ("ipv6:%5B::1%5D:54321", "::1"),
        ("unix:/run/tuneyard.sock", "unix:/run/tuneyard.sock"),
    ],
)
def test_a_client_is_its_peer_host_without_the_port(peer, client):
    assert client_identity(Peer(peer)) == client

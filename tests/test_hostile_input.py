"""Hostile input: generated specs and corrupt protobuf bytes get a proper status, never UNKNOWN/INTERNAL.

DESIGN.md: bad input never yields UNKNOWN or INTERNAL, never kills the server, never corrupts a
stored study. Hypothesis builds the specs (near-valid ones, by mutating a tiny valid spec, and
wild ones) and the bytes; every answer is checked, then the server's health and a study stored
before the run.
"""

from __future__ import annotations

import base64
import copy
import functools
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, message, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import watch_all

from tuneyard.server.api.errors import MAX_DETAILS_CHARS, MalformedRequest
from tuneyard.server.api.wire import SERVICE, tolerant_parser
from tuneyard.server.limits import MAX_GPU_MEMORY_GB, MAX_GPUS_PER_TRIAL, MAX_PRIORITY, MAX_TRIALS, MIN_GPU_SHARE
from tuneyard.server.study import spec as server_spec
from tuneyard.server.study.settings import TRAINING_FIELDS as TRAINING_FIELDS_CHECKED
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc, spec_pb2

FORBIDDEN = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
CALL_TIMEOUT_S = 30
SETTLE_TIMEOUT_S = 120  # a cancelled study ends within seconds; this only bounds the wait
QUICK = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---------------------------------------------------------------- fixtures and checks


@pytest.fixture(scope="module")
def hostile_channel(server: Any) -> Iterator[grpc.Channel]:
    """Module-scoped, so hypothesis may reuse it across examples."""
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        yield ch


@pytest.fixture(scope="module")
def rpc(hostile_channel: grpc.Channel) -> service_pb2_grpc.TrainingServiceStub:
    return service_pb2_grpc.TrainingServiceStub(hostile_channel)


STORED_SPEC: dict[str, Any] = {
    "name": "stored-before-the-storm",
    "dataset": {"name": "digits"},
    "model": {"name": "simple_cnn", "options": {"num_filters": 4}},
    "training": {"epochs": 1, "batch_size": 256, "seed": 7},
    "search_space": [{"name": "optimizer.lr", "float_range": {"low": 0.001, "high": 0.01, "log": True}}],
    "objective": {"metric": "val_accuracy", "mode": "MAXIMIZE"},
    "budget": {"max_trials": 1},
}


@pytest.fixture(scope="module")
def stored_study(rpc: service_pb2_grpc.TrainingServiceStub) -> str:
    """A finished study with a trial: hostile requests must leave every byte of it alone."""
    spec = json_format.ParseDict(STORED_SPEC, spec_pb2.StudySpec())
    study = rpc.CreateStudy(pb.CreateStudyRequest(spec=spec, request_id="hostile-stored"), timeout=CALL_TIMEOUT_S)
    watch_all(rpc, study.study_id)
    return study.study_id


def snapshot(stub: service_pb2_grpc.TrainingServiceStub, study_id: str) -> tuple[pb.Study, pb.ListTrialsResponse]:
    study = stub.GetStudy(pb.GetStudyRequest(study_id=study_id), timeout=CALL_TIMEOUT_S)
    trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study_id, page_size=1000), timeout=CALL_TIMEOUT_S)
    return study, trials


def assert_serving(channel: grpc.Channel, stub: service_pb2_grpc.TrainingServiceStub) -> None:
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=SERVICE.full_name), timeout=CALL_TIMEOUT_S
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=CALL_TIMEOUT_S).version
    list_every_study(stub)  # raises if any stored spec cannot be read back


def list_every_study(stub: service_pb2_grpc.TrainingServiceStub, page_size: int = 100) -> list[pb.Study]:
    """Pages through ListStudies: one stored spec a client cannot parse would break it for everyone."""
    studies, token = [], ""
    while True:
        page = stub.ListStudies(pb.ListStudiesRequest(page_size=page_size, page_token=token), timeout=CALL_TIMEOUT_S)
        studies += page.studies
        token = page.next_page_token
        if not token:
            return studies


def outcome(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str, Any]:
    """(status, details, response) of one RPC; the response is None unless it succeeded."""
    try:
        return grpc.StatusCode.OK, "", call()
    except grpc.RpcError as err:
        return err.code(), err.details() or "", None


# ---------------------------------------------------------------- spec strategies

INT32 = st.one_of(
    st.integers(-3, 5), st.sampled_from([-(2**31), 2**31 - 1, 100_000, 100_001]), st.integers(-(2**31), 2**31 - 1)
)
INT64 = st.one_of(
    INT32, st.sampled_from([-(2**63), 2**63 - 1, 2**32 - 1, 2**32, 2**53, 2**53 + 1]), st.integers(-(2**63), 2**63 - 1)
)
ODD_FLOATS = [0.0, -0.0, 0.25, 0.3, 0.5, 1.0, 2.0, 3.0, -1.0, 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf]


def _json_double(x: float) -> float | str:
    """proto3 JSON spells non-finite doubles as strings."""
    if math.isnan(x):
        return "NaN"
    return ("Infinity" if x > 0 else "-Infinity") if math.isinf(x) else x


DOUBLE = st.one_of(st.sampled_from(ODD_FLOATS), st.floats()).map(_json_double)
TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "\x00", "é", "名前", "🙂" * 3, "a.b", "../../etc/passwd", "DROP TABLE studies;"]),
    st.sampled_from(["x" * 201, "ü" * 5000, "y" * 100_000]),
)
# Struct values: every JSON kind, numbers as the doubles a Struct holds (NaN and infinities included).
STRUCT_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(), st.sampled_from(ODD_FLOATS), TEXT
)
STRUCT_VALUE = st.recursive(
    STRUCT_LEAF,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=8,
)
SMALL_VALUE = st.one_of(
    st.integers(-2, 6),
    st.floats(-1, 1),
    st.booleans(),
    st.none(),
    st.sampled_from(ODD_FLOATS),
    st.text(max_size=4),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2),
)

PLUGINS = {
    "dataset": ["digits", "synthetic", "iris", "diabetes"],
    "model": ["simple_cnn", "convnet"],
    "optimizer": ["sgd", "adam"],
    "lr_scheduler": ["cosine", "step"],
    "augmentation": ["random_crop", "horizontal_flip", "mixup"],
    "searcher": ["random", "grid"],
    "early_stopper": ["median", "asha"],
    "task": ["classification", "regression", "multilabel"],
    "trainable": ["bowl", "sign_descent"],  # none is installed on this server: refused, never run
}
# Real option names get only small values: a valid spec with a huge `num_filters` would really train.
KNOWN_OPTIONS = (
    "lr momentum num_filters num_conv_layers dropout batch_norm padding p alpha grace_period num_points val_fraction "
    "num_samples min_lr step_size loss huber_delta threshold width depth"
).split()
KNOWN_PATHS = [
    "optimizer.lr",
    "optimizer.name",
    "optimizer.momentum",
    "model.num_filters",
    "model.num_conv_layers",
    "model.name",
    "model.dropout",
    "training.batch_size",
    "training.label_smoothing",
    "training.precision",
    "training.deterministic",
    "augmentations.random_crop.padding",
    "dataset.name",
    "lr_scheduler.name",
    "searcher.name",
    "training.nope",
    "model.",
    ".",
    "a.b.c.d",
    "augmentations.random_crop",
    "task.loss",
    "task.name",
    "trainable.x",
]
METRICS = ["val_accuracy", "val_loss", "params", "vibes", "", "val_mse", "val_r2", "train_seconds"]


def options() -> st.SearchStrategy[dict[str, Any]]:
    known = st.dictionaries(st.sampled_from(KNOWN_OPTIONS), SMALL_VALUE, max_size=3)
    wild = st.dictionaries(TEXT, STRUCT_VALUE, max_size=3)
    return st.one_of(known, wild)


def component(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    name = st.one_of(st.sampled_from(PLUGINS[kind]), TEXT, st.sampled_from(PLUGINS["model"] + PLUGINS["searcher"]))
    return st.fixed_dictionaries({"name": name}, optional={"options": options()})


def _range(number: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={"low": number, "high": number, "log": st.booleans()})


def domain(small: bool) -> st.SearchStrategy[dict[str, Any]]:
    """One of the three domains, or none; `small` keeps a valid one cheap to train."""
    ints = st.integers(-2, 6) if small else INT64
    floats = st.one_of(st.floats(-1, 1), st.sampled_from(ODD_FLOATS)).map(_json_double) if small else DOUBLE
    values = st.one_of(SMALL_VALUE, st.sampled_from(PLUGINS["optimizer"] + ["fp16", "auto"])) if small else STRUCT_VALUE
    int_range = st.fixed_dictionaries({}, optional={"low": ints, "high": ints, "log": st.booleans(), "step": ints})
    return st.one_of(
        st.builds(lambda r: {"int_range": r}, int_range),
        st.builds(lambda r: {"float_range": r}, _range(floats)),
        st.builds(lambda v: {"choice": {"values": v}}, st.lists(values, max_size=4)),
        st.just({}),
    )


def condition() -> st.SearchStrategy[dict[str, Any]]:
    parent = st.one_of(st.sampled_from(KNOWN_PATHS), TEXT)
    return st.fixed_dictionaries({}, optional={"parent": parent, "values": st.lists(STRUCT_VALUE, max_size=3)})


def parameter() -> st.SearchStrategy[dict[str, Any]]:
    known = st.tuples(st.sampled_from(KNOWN_PATHS), domain(small=True))
    wild = st.tuples(TEXT, domain(small=False))
    return st.builds(
        lambda name_domain, cond: {"name": name_domain[0], **name_domain[1], **cond},
        st.one_of(known, wild),
        st.one_of(st.just({}), condition().map(lambda c: {"condition": c})),
    )


def long_space(n: int) -> list[dict[str, Any]]:
    """n alternatives of one name under disjoint conditions: valid, and quadratic to check."""
    head = {"name": "model.num_conv_layers", "choice": {"values": list(range(1, n + 1))}}
    alternatives = [
        {
            "name": "optimizer.lr",
            "float_range": {"low": 0.001, "high": 0.01},
            "condition": {"parent": "model.num_conv_layers", "values": [i]},
        }
        for i in range(1, n + 1)
    ]
    return [head, *alternatives]


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def alternatives(values: list[list[Any]]) -> list[dict[str, Any]]:
    """One name under several conditions on one parent, with whatever values were drawn."""
    chooser = {"name": "optimizer.name", "choice": {"values": ["sgd", "adam"]}}
    lr = {"name": "optimizer.lr", "float_range": {"low": 0.001, "high": 0.01}}
    return [chooser, *({**lr, "condition": {"parent": "optimizer.name", "values": v}} for v in values)]


SEARCH_SPACE = st.one_of(
    st.lists(parameter(), max_size=5),
    st.integers(50, 300).map(long_space),
    st.integers(20, 70).map(lambda depth: [{"name": "model.name", "choice": {"values": [nested(depth)]}}]),
    st.lists(
        st.lists(st.one_of(st.sampled_from(["sgd", "adam"]), STRUCT_VALUE), max_size=3), min_size=2, max_size=3
    ).map(alternatives),
)
OBJECTIVE = st.fixed_dictionaries(
    {},
    optional={
        "metric": st.one_of(st.sampled_from(METRICS), TEXT),
        "mode": st.sampled_from(["MAXIMIZE", "MINIMIZE", 0, 3, -1, 2**31 - 1]),
    },
)
SMALL_COUNTS = st.sampled_from([-(2**31), -1, 0, 1, 2, 100_001, 2**31 - 1])
TRAINING_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "epochs": SMALL_COUNTS,
    "batch_size": INT32,
    "label_smoothing": DOUBLE,
    "precision": TEXT,
    "seed": INT64,
    "grad_clip_norm": DOUBLE,
    "grad_accumulation_steps": INT32,
    "ema_decay": DOUBLE,
    "early_stop_patience": INT32,
    "deterministic": st.booleans(),
    "data_pipeline": st.one_of(st.sampled_from(["auto", "device", "loader"]), TEXT),
}
BUDGET_FIELDS = {
    "max_trials": SMALL_COUNTS,
    "max_concurrent_trials": INT32,
    "max_failures": INT32,
    "trial_retries": INT32,
}
RESOURCE_FIELDS = {"gpus_per_trial": DOUBLE, "priority": DOUBLE, "gpu_memory_gb": DOUBLE}


def _field_mutations(section: tuple[str, ...], fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy:
    return st.one_of(*[st.tuples(st.just((*section, name)), value) for name, value in fields.items()])


MUTATION = st.one_of(
    st.tuples(st.just(("name",)), TEXT),
    st.tuples(st.just(("dataset",)), component("dataset")),
    st.tuples(st.just(("model",)), component("model")),
    st.tuples(st.just(("training", "optimizer")), component("optimizer")),
    st.tuples(st.just(("training", "lr_scheduler")), component("lr_scheduler")),
    st.tuples(st.just(("training", "augmentations")), st.lists(component("augmentation"), max_size=3)),
    st.tuples(st.just(("searcher",)), component("searcher")),
    st.tuples(st.just(("task",)), component("task")),
    st.tuples(st.just(("trainable",)), component("trainable")),
    st.tuples(st.just(("early_stopping",)), component("early_stopper")),
    st.tuples(st.just(("search_space",)), SEARCH_SPACE),
    st.tuples(st.just(("search_space",)), SEARCH_SPACE),  # twice: most of the validator is here
    # A list option takes any nesting: past every depth limit, the server's and the protobuf readers'.
    st.tuples(
        st.just(("training", "lr_scheduler")),
        st.integers(1, 60).map(lambda depth: {"name": "multistep", "options": {"milestones": nested(depth)}}),
    ),
    st.tuples(st.just(("objective",)), OBJECTIVE),
    st.tuples(st.just(("objectives",)), st.lists(OBJECTIVE, max_size=3)),
    _field_mutations(("training",), TRAINING_FIELDS),
    _field_mutations(("budget",), BUDGET_FIELDS),
    _field_mutations(("resources",), RESOURCE_FIELDS),
)


def _set(spec: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = spec
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict[str, Any]:
    """The stored study's spec with a few sections replaced: most checks are reached this way."""
    spec = copy.deepcopy(STORED_SPEC)
    for path, value in draw(st.lists(MUTATION, max_size=3)):
        _set(spec, path, value)
    return spec


WILD_SPEC = st.fixed_dictionaries(
    {},
    optional={
        "name": TEXT,
        "dataset": component("dataset"),
        "model": component("model"),
        "training": st.fixed_dictionaries({}, optional=TRAINING_FIELDS),
        "search_space": SEARCH_SPACE,
        "searcher": component("searcher"),
        "objective": OBJECTIVE,
        "budget": st.fixed_dictionaries({}, optional=BUDGET_FIELDS),
        "resources": st.fixed_dictionaries({}, optional=RESOURCE_FIELDS),
    },
)
# Durations the JSON form cannot even express: out of range, or seconds and nanos of opposite signs.
DURATION = st.one_of(
    st.none(),
    st.tuples(st.integers(0, 5), st.just(0)),
    st.tuples(INT64, st.integers(-(2**31), 2**31 - 1)),
    st.sampled_from([(315_576_000_001, 0), (5, -1), (-5, 1), (0, 1_000_000_000), (-1, 0)]),
)
REQUEST_ID = st.one_of(st.just(""), st.text(max_size=8), st.sampled_from(["r" * 64, "r" * 65, "名" * 40]))


@st.composite
def create_requests(draw: st.DrawFn) -> pb.CreateStudyRequest:
    request = pb.CreateStudyRequest(request_id=draw(REQUEST_ID))
    # Parsed in place (copying a message re-parses it): deep choices pass json_format's and upb's
    # depth limits here, so that the server's own limits are what they meet.
    json_format.ParseDict(draw(st.one_of(mutated_specs(), WILD_SPEC)), request.spec, max_recursion_depth=500)
    duration = draw(DURATION)
    if duration is not None:
        request.spec.budget.max_duration.seconds, request.spec.budget.max_duration.nanos = duration
    return request


# ---------------------------------------------------------------- generated specs


def settle(stub: service_pb2_grpc.TrainingServiceStub, study_id: str) -> pb.Study:
    """The study once it has ended: its event stream closes at the terminal event (bounded by the deadline)."""
    list(stub.WatchStudy(pb.WatchStudyRequest(study_id=study_id), timeout=SETTLE_TIMEOUT_S))
    return stub.GetStudy(pb.GetStudyRequest(study_id=study_id), timeout=CALL_TIMEOUT_S)


def _create_then_cancel(
    stub: service_pb2_grpc.TrainingServiceStub, request: pb.CreateStudyRequest
) -> tuple[grpc.StatusCode, str, pb.Study | None]:
    """Sends one spec; a study it happens to create is cancelled at once, so nothing heavy runs, and
    followed to its end: a spec that validation let through must not fail later as an internal error
    (a searcher or stopper whose constructor raises). Returns (status, details, created study)."""
    code, details, study = outcome(lambda: stub.CreateStudy(request, timeout=CALL_TIMEOUT_S))
    # A spec is valid or bad input; anything else (RESOURCE_EXHAUSTED for too long a reply included) is a bug.
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), f"{code.name}: {details[:2000]}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert details.startswith(("spec", "request")), details  # names the field path
    if study is not None:
        cancel, why, _ = outcome(lambda: stub.CancelStudy(pb.CancelStudyRequest(study_id=study.study_id)))
        assert cancel in (grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION), f"{cancel.name}: {why}"
        ended = settle(stub, study.study_id)
        failed_internally = ended.error.startswith("internal error")
        assert not failed_internally, f"accepted, then {pb.StudyState.Name(ended.state)}: {ended.error}"
    return code, details, study


def test_the_mutation_base_is_a_valid_spec(rpc: service_pb2_grpc.TrainingServiceStub) -> None:
    """Unmutated, the strategy's base spec creates a study: mutations start from valid ground."""
    request = pb.CreateStudyRequest(spec=json_format.ParseDict(STORED_SPEC, spec_pb2.StudySpec()))
    assert _create_then_cancel(rpc, request)[0] == grpc.StatusCode.OK


def test_generated_specs_get_a_proper_status_and_change_nothing(
    rpc: service_pb2_grpc.TrainingServiceStub, hostile_channel: grpc.Channel, stored_study: str
) -> None:
    before = snapshot(rpc, stored_study)
    seen: Counter[str] = Counter()

    @settings(QUICK, max_examples=150)
    @given(request=create_requests())
    def check(request: pb.CreateStudyRequest) -> None:
        seen[_create_then_cancel(rpc, request)[0].name] += 1

    check()
    assert seen["INVALID_ARGUMENT"] > 0, seen
    assert snapshot(rpc, stored_study) == before
    assert_serving(hostile_channel, rpc)


# ---------------------------------------------------------------- raw bytes

VARINT, I64, LEN, SGROUP, EGROUP, I32 = range(6)
METHODS: list[MethodDescriptor] = list(SERVICE.methods)
EXTERNAL_METHODS = ("SuggestTrials", "ReportTrial", "CompleteTrial")  # FAILED_PRECONDITION on the stored study


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def delimited(number: int, payload: bytes) -> bytes:
    return key(number, LEN) + varint(len(payload)) + payload


PAYLOAD_OF = {VARINT: b"\x01", I64: bytes(8), LEN: b"\x01x", SGROUP: b"", EGROUP: b"", I32: bytes(4)}
WIRE_TYPE_OF = {
    FieldDescriptor.TYPE_DOUBLE: I64,
    FieldDescriptor.TYPE_FIXED64: I64,
    FieldDescriptor.TYPE_SFIXED64: I64,
    FieldDescriptor.TYPE_FLOAT: I32,
    FieldDescriptor.TYPE_FIXED32: I32,
    FieldDescriptor.TYPE_SFIXED32: I32,
    FieldDescriptor.TYPE_STRING: LEN,
    FieldDescriptor.TYPE_BYTES: LEN,
    FieldDescriptor.TYPE_MESSAGE: LEN,
}


def request_class(method: MethodDescriptor) -> type[message.Message]:
    return message_factory.GetMessageClass(method.input_type)


def sample_request(method: MethodDescriptor, study_id: str) -> bytes:
    """A well-formed request of `method` with every field set (CreateStudy's spec is refused, harmlessly)."""
    cls = request_class(method)
    if method.name == "CreateStudy":
        spec = copy.deepcopy(STORED_SPEC)
        spec["dataset"] = {"name": "no-such-dataset"}  # two faults: one edited byte cannot make it run
        spec["resources"] = {"gpus_per_trial": 3}  # last field of the spec; the server has 2 devices
        request = pb.CreateStudyRequest(spec=json_format.ParseDict(spec, spec_pb2.StudySpec()), request_id="rq")
        return request.SerializeToString()
    if method.name in ("DeleteStudy", "ExtendStudy"):  # a valid one would delete or extend the stored study
        study_id = "st-000000000000"
    fields: dict[str, Any] = {
        "study_id": study_id,
        "trial_id": 1,
        "page_size": 3,
        "page_token": "t",
        "kind": "model",
        "state": 2,
        "after_sequence": 1,
        "count": 2,
        "client_id": "c",
        "step": 1,
        "metrics": {"value": 1.5},
        "error": "e",
        "completions": [],  # (SuggestTrials: already missing on HEAD)
        "add_trials": 1,
        "add_duration": {"seconds": 1},
    }
    return cls(**{f.name: fields[f.name] for f in cls.DESCRIPTOR.fields}).SerializeToString()


def _field_attacks(descriptor: Descriptor) -> Iterator[tuple[str, bytes]]:
    """Per field: every wrong wire type, and bad UTF-8 in strings."""
    for field in descriptor.fields:
        right = WIRE_TYPE_OF.get(field.type, VARINT)
        for wire_type in (VARINT, I64, LEN, SGROUP, EGROUP, I32):
            if wire_type != right:
                yield f"{field.name} as wire type {wire_type}", key(field.number, wire_type) + PAYLOAD_OF[wire_type]
        if field.type == FieldDescriptor.TYPE_STRING:
            yield f"{field.name} with bad UTF-8", delimited(field.number, b"ok\xc3\x28\xff")


def _deep_struct(depth: int) -> bytes:
    """CreateStudyRequest{spec{model{options}}} with `depth` nested list values: past any recursion limit."""
    value = b""
    for _ in range(depth):
        value = delimited(6, delimited(1, value))  # Value.list_value -> ListValue.values
    options = delimited(1, delimited(1, b"k") + delimited(2, value))  # Struct.fields map entry
    return delimited(1, delimited(3, delimited(2, options)))


def corrupt_requests(method: MethodDescriptor, study_id: str) -> list[tuple[str, bytes]]:
    """Hand-made attacks on one RPC's request: framing, wire types, UTF-8, truncation, nesting."""
    valid = sample_request(method, study_id)
    cases = [
        ("empty", b""),
        ("bytes of 0xff", b"\xff" * 7),
        ("field number 0", key(0, VARINT) + b"\x01"),
        ("huge length prefix", key(1, LEN) + varint(2**31) + b"abc"),
        ("largest length prefix", key(1, LEN) + varint(2**64 - 1)),
        ("overlong varint", key(1, VARINT) + b"\xff" * 11 + b"\x01"),
        ("unterminated varint", key(2, VARINT) + b"\x80\x80"),
        ("wire type 6", bytes([1 << 3 | 6]) + b"\x00"),
        ("wire type 7", bytes([1 << 3 | 7]) + b"\x00"),
        ("group never closed", key(9, SGROUP) + key(1, VARINT) + b"\x01"),
        ("unknown fields only", key(999, VARINT) + b"\x05" + delimited(1000, b"junk")),
        *_field_attacks(method.input_type),
        *((f"truncated at {n} of {len(valid)}", valid[:n]) for n in range(1, len(valid))),
        ("valid then garbage", valid + b"\xff\xff"),
    ]
    if method.name == "CreateStudy":
        cases += [
            ("options nested 300 deep", _deep_struct(300)),
            ("options nested 40 deep", _deep_struct(40)),
            ("spec name with bad UTF-8", delimited(1, delimited(1, b"\xed\xa0\x80"))),
        ]
    return cases


def send_raw(channel: grpc.Channel, method: MethodDescriptor, data: bytes) -> tuple[grpc.StatusCode, str]:
    """Sends bytes as they are: no serializer in between."""
    path = f"/{SERVICE.full_name}/{method.name}"
    if method.server_streaming:
        stream = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
        code, details, _ = outcome(lambda: list(stream(data, timeout=CALL_TIMEOUT_S)))
    else:
        call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        code, details, _ = outcome(lambda: call(data, timeout=CALL_TIMEOUT_S))
    return code, details


def check_raw(channel: grpc.Channel, method: MethodDescriptor, data: bytes) -> str | None:
    """None when the answer is right: INVALID_ARGUMENT for bytes that do not parse, never UNKNOWN/INTERNAL."""
    code, details = send_raw(channel, method, data)
    if code in FORBIDDEN:
        return f"{code.name}: {details}"
    try:
        request_class(method).FromString(data)
    except message.DecodeError:
        prefix = f"request: not a valid {method.input_type.full_name}: "
        if code != grpc.StatusCode.INVALID_ARGUMENT or not details.startswith(prefix):
            return f"unparsable bytes answered {code.name}: {details}"
    return None


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_hand_made_corrupt_bytes_get_a_proper_status(
    method: MethodDescriptor,
    hostile_channel: grpc.Channel,
    rpc: service_pb2_grpc.TrainingServiceStub,
    stored_study: str,
) -> None:
    before = snapshot(rpc, stored_study)
    cases = corrupt_requests(method, stored_study)
    failures = [f"{label}: {why}" for label, data in cases if (why := check_raw(hostile_channel, method, data))]
    assert not failures, "\n".join(failures)
    assert snapshot(rpc, stored_study) == before
    assert_serving(hostile_channel, rpc)


@st.composite
def edited_bytes(draw: st.DrawFn, valid: bytes) -> bytes:
    """A well-formed request with a few bytes overwritten, inserted or cut: near misses of the parser."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["set", "insert", "cut"]))
        if edit == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


def test_random_bytes_never_get_unknown_or_internal(
    hostile_channel: grpc.Channel, rpc: service_pb2_grpc.TrainingServiceStub, stored_study: str
) -> None:
    before = snapshot(rpc, stored_study)

    @settings(QUICK, max_examples=300)
    @given(method=st.sampled_from(METHODS), data=st.data())
    def check(method: MethodDescriptor, data: st.DataObject) -> None:
        payload = data.draw(st.one_of(st.binary(max_size=300), edited_bytes(sample_request(method, stored_study))))
        assert check_raw(hostile_channel, method, payload) is None

    check()
    assert snapshot(rpc, stored_study) == before
    assert_serving(hostile_channel, rpc)


def test_oversized_request_is_refused_without_internal(hostile_channel: grpc.Channel) -> None:
    code, details = send_raw(hostile_channel, METHODS[0], delimited(1, delimited(1, b"n" * (5 << 20))))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{code.name}: {details}"


def test_tolerant_parser_returns_a_marker_instead_of_raising() -> None:
    parse = tolerant_parser(pb.GetStudyRequest)
    assert parse(pb.GetStudyRequest(study_id="st-1").SerializeToString()) == pb.GetStudyRequest(study_id="st-1")
    bad = parse(delimited(1, b"\xff"))
    assert isinstance(bad, MalformedRequest)
    assert bad.message == "tuneyard.v1.GetStudyRequest"
    assert "UTF-8" in bad.why


# ---------------------------------------------------------------- regressions the suite found


def _request(
    spec: dict[str, Any], edit: Callable[[spec_pb2.StudySpec], None] = lambda spec: None
) -> pb.CreateStudyRequest:
    request = pb.CreateStudyRequest()
    json_format.ParseDict(spec, request.spec, max_recursion_depth=500)
    edit(request.spec)
    return request


def _with(**sections: Any) -> dict[str, Any]:
    return {**copy.deepcopy(STORED_SPEC), **sections}


def _duration(seconds: int, nanos: int) -> Callable[[spec_pb2.StudySpec], None]:
    def edit(spec: spec_pb2.StudySpec) -> None:
        spec.budget.max_duration.seconds, spec.budget.max_duration.nanos = seconds, nanos

    return edit


def _nan_option(spec: spec_pb2.StudySpec) -> None:
    spec.model.options.fields["num_filters"].number_value = math.nan


def _infinite_choice(spec: spec_pb2.StudySpec) -> None:
    spec.search_space[0].choice.values[0].list_value.values[1].number_value = -math.inf


def _milestones(depth: int) -> dict[str, Any]:
    return {"epochs": 1, "lr_scheduler": {"name": "multistep", "options": {"milestones": nested(depth)}}}


REGRESSIONS = [
    ("NaN in a Struct option", _request(STORED_SPEC, _nan_option), "spec.model.options.num_filters", "NaN"),
    (
        "infinity deep in a choice value",
        _request(_with(search_space=[{"name": "model.filter_size", "choice": {"values": [[1, 2]]}}]), _infinite_choice),
        "spec.search_space[0].choice.values[0][1]",
        "Infinity",
    ),
    (
        "duration out of range",
        _request(STORED_SPEC, _duration(315_576_000_001, 0)),
        "spec.budget.max_duration",
        "Duration is not valid",
    ),
    (
        "duration with seconds and nanos of opposite signs",
        _request(STORED_SPEC, _duration(5, -1)),
        "spec.budget.max_duration",
        "Sign mismatch",
    ),
    (
        "a list among a repeated name's condition values",
        _request(_with(search_space=alternatives([["sgd"], [["adam"]]]))),
        "spec.search_space[2].condition.values[0]",
        "got a list",
    ),
    (
        "an object as a condition value",
        _request(_with(search_space=alternatives([[{"a": 1}], ["adam"]]))),
        "spec.search_space[1].condition.values[0]",
        "got a dict",
    ),
    (
        "a 100 kB plugin name (its echo outgrew the client's trailer limit: RESOURCE_EXHAUSTED)",
        _request(_with(dataset={"name": "y" * 100_000})),
        "spec.dataset.name",
        "longer than 4096 characters",
    ),
    (
        "5000 two-byte characters in a plugin name",
        _request(_with(model={"name": "ü" * 5000})),
        "spec.model.name",
        "longer than 4096 characters",
    ),
    (
        "an option nested deeper than clients can read back",
        _request(_with(training=_milestones(40))),
        "spec.training.lr_scheduler.options.milestones[0]",
        "nested deeper than 32 levels",
    ),
]


@pytest.mark.parametrize(("label", "request_", "field", "reason"), REGRESSIONS, ids=[r[0] for r in REGRESSIONS])
def test_found_spec_is_invalid_argument_naming_the_field(
    label: str,
    request_: pb.CreateStudyRequest,
    field: str,
    reason: str,
    rpc: service_pb2_grpc.TrainingServiceStub,
    hostile_channel: grpc.Channel,
) -> None:
    code, details, _ = outcome(lambda: rpc.CreateStudy(request_, timeout=CALL_TIMEOUT_S))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{code.name}: {details}"
    assert details.startswith(f"{field}: ") or details.startswith(f"{field}["), details
    assert reason in details, details
    assert len(details) <= MAX_DETAILS_CHARS
    assert_serving(hostile_channel, rpc)


def test_a_huge_search_space_is_refused_before_it_ties_up_the_server(
    rpc: service_pb2_grpc.TrainingServiceStub, hostile_channel: grpc.Channel
) -> None:
    """6,000 alternatives fit in one message; checking them pairwise took minutes of one RPC."""
    request = _request(_with(search_space=long_space(6000)))
    started = time.monotonic()
    code, details, _ = outcome(lambda: rpc.CreateStudy(request, timeout=CALL_TIMEOUT_S))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{code.name}: {details}"
    assert details.startswith("spec.search_space: more than"), details
    assert time.monotonic() - started < 10
    assert_serving(hostile_channel, rpc)


def test_nesting_within_the_limit_is_stored_and_lists_back(
    rpc: service_pb2_grpc.TrainingServiceStub, hostile_channel: grpc.Channel
) -> None:
    code, details, study = _create_then_cancel(rpc, _request(_with(training=_milestones(20))))
    assert study is not None, f"{code.name}: {details}"
    assert study.study_id in {s.study_id for s in list_every_study(rpc)}


# ---------------------------------------------------------------- boundary integers in every integer field

BOUNDARY_INTS = (-(2**63), -(2**63) + 1, -(2**31), -1, 0, 1, 2**31 - 1, 2**32 - 1, 2**32, 2**53, 2**53 + 1, 2**63 - 1)
_INT32, _INT64 = (-(2**31), 2**31 - 1), (-(2**63), 2**63 - 1)
WIRE_RANGE = {
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_ENUM: _INT32,  # proto3 enums are open: any int32 travels
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
# Their numbers are doubles (NullValue aside): the plugin-option cases below cover them.
_JSON_TYPES = ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue")
FieldPath = tuple[str | int, ...]

# Every integer field of a spec set: a step scheduler whose `step_size` is searched over the widest
# exact range (up to 2**53), so int_range ends near the limits are valid, and a duration to edit.
BOUNDARY_SPEC: dict[str, Any] = {
    **copy.deepcopy(STORED_SPEC),
    "training": {**STORED_SPEC["training"], "lr_scheduler": {"name": "step"}},
    "search_space": [{"name": "lr_scheduler.step_size", "int_range": {"low": 1, "high": 2**53}}],
    "budget": {"max_trials": 1, "max_duration": "600s"},
}
# Values of a plain request's fields: valid against the stored study, so that the one edited field decides.
PLAIN_FIELDS: dict[str, Any] = {
    "trial_id": 1,
    "page_size": 1,
    "page_token": "",
    "kind": "model",
    "state": 0,
    "after_sequence": 0,
}


def boundary_values(field: FieldDescriptor) -> list[int]:
    """The boundary integers the field's wire type can carry (an int32 field cannot carry 2**40)."""
    low, high = WIRE_RANGE[field.type]
    return [v for v in BOUNDARY_INTS if low <= v <= high]


def integer_fields(msg: message.Message, path: FieldPath = ()) -> Iterator[tuple[FieldPath, FieldDescriptor]]:
    """Every singular integer field below `msg`, found by descriptor: in unset submessages too, and in
    each item of a repeated one."""
    for field in msg.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.full_name in _JSON_TYPES or field.message_type.GetOptions().map_entry:
                continue
            if field.is_repeated:
                for i, item in enumerate(getattr(msg, field.name)):
                    yield from integer_fields(item, (*path, field.name, i))
            else:
                yield from integer_fields(getattr(msg, field.name), (*path, field.name))
        elif field.type in WIRE_RANGE and not field.is_repeated:
            yield (*path, field.name), field


def _holder(msg: message.Message, path: FieldPath) -> message.Message:
    for part in path[:-1]:
        msg = msg[part] if isinstance(part, int) else getattr(msg, part)  # type: ignore[index]
    return msg


def with_integer(msg: message.Message, path: FieldPath, value: int) -> message.Message:
    edited = type(msg)()
    edited.CopyFrom(msg)
    setattr(_holder(edited, path), str(path[-1]), value)
    return edited


def read_integer(msg: message.Message, path: FieldPath) -> int:
    return int(getattr(_holder(msg, path), str(path[-1])))


def dotted(path: FieldPath) -> str:
    """The path as the server's messages spell it: `spec.search_space[0].int_range.low`."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).removeprefix(".")


def names_field(details: str, path: FieldPath) -> bool:
    """An INVALID_ARGUMENT names the field, or the message holding it (`int_range: low (5) > high (1)`)."""
    return details.startswith(f"{dotted(path)}: ") or (len(path) > 1 and details.startswith(f"{dotted(path[:-1])}: "))


def declared_verdict(path: FieldPath, value: int) -> bool | None:
    """Whether the server's own table of training fields admits the value; None where it has no say
    (other fields, and 0, which proto3 cannot tell from "not set")."""
    if path[:2] != ("spec", "training") or value == 0:
        return None
    bounds = TRAINING_FIELDS_CHECKED[str(path[2])].bounds
    return abs(value) <= 2**53 and (bounds is None or bounds.problem(value) is None)


def _boundary_spec_failure(stub: service_pb2_grpc.TrainingServiceStub, path: FieldPath, value: int) -> str | None:
    """None when the answer is right: the stored spec holds exactly the value sent, or INVALID_ARGUMENT names
    the field; value 1 is valid everywhere, and training fields follow the server's declared bounds."""
    template = pb.CreateStudyRequest(spec=json_format.ParseDict(BOUNDARY_SPEC, spec_pb2.StudySpec()))
    try:
        code, details, study = _create_then_cancel(stub, with_integer(template, path, value))
    except AssertionError as exc:
        return str(exc).splitlines()[0]  # the message, without pytest's introspection
    expected = True if value == 1 else declared_verdict(path, value)
    if expected is not None and expected != (code == grpc.StatusCode.OK):
        return f"{code.name} ({details}), but the declared bounds {'admit' if expected else 'refuse'} it"
    if code == grpc.StatusCode.INVALID_ARGUMENT and not names_field(details, path):
        return f"refused without naming the field: {details}"
    if study is not None and value != 0 and read_integer(study, path) != value:  # 0: proto3's "not set"
        return f"stored as {read_integer(study, path)}"
    return None


def test_boundary_integers_in_every_spec_field_are_stored_exactly_or_refused_by_name(
    rpc: service_pb2_grpc.TrainingServiceStub, hostile_channel: grpc.Channel, server: Any
) -> None:
    """A seed of 2**63 - 1 once answered INTERNAL, was stored anyway and broke ListStudies for everyone;
    integers above 2**53 were stored rounded."""
    template = pb.CreateStudyRequest(spec=json_format.ParseDict(BOUNDARY_SPEC, spec_pb2.StudySpec()))
    # Setting a field of `external` makes the spec another kind of study (tests/test_external.py's).
    fields = [(path, field) for path, field in integer_fields(template) if path[:2] != ("spec", "external")]
    assert {"spec.training.seed", "spec.search_space[0].int_range.step", "spec.budget.max_trials"} <= {
        dotted(path) for path, _ in fields
    }
    failures = [
        f"{dotted(path)} = {value}: {why}"
        for path, field in fields
        for value in boundary_values(field)
        if (why := _boundary_spec_failure(rpc, path, value))
    ]
    assert not failures, "\n".join(failures)
    assert_serving(hostile_channel, rpc)
    with grpc.insecure_channel(server.address) as other:  # another client pages through every study too
        list_every_study(service_pb2_grpc.TrainingServiceStub(other), page_size=7)


def plain_request(method: MethodDescriptor, study_id: str) -> message.Message:
    """A valid request of `method` that reads the stored study."""
    cls = request_class(method)
    values = {**PLAIN_FIELDS, "study_id": study_id}
    return cls(**{f.name: values[f.name] for f in cls.DESCRIPTOR.fields})


def call(stub: service_pb2_grpc.TrainingServiceStub, method: MethodDescriptor, request: message.Message) -> Any:
    rpc_method = getattr(stub, method.name)
    if method.server_streaming:
        return list(rpc_method(request, timeout=CALL_TIMEOUT_S))
    return rpc_method(request, timeout=CALL_TIMEOUT_S)


def _boundary_request_failure(
    stub: service_pb2_grpc.TrainingServiceStub,
    method: MethodDescriptor,
    template: message.Message,
    path: FieldPath,
    value: int,
) -> str | None:
    code, details, _ = outcome(lambda: call(stub, method, with_integer(template, path, value)))
    if code in FORBIDDEN:
        return f"{code.name}: {details}"
    if value == 1 and code != grpc.StatusCode.OK:
        return f"the plain request answered {code.name}: {details}"
    if code == grpc.StatusCode.INVALID_ARGUMENT and not names_field(details, path):
        return f"refused without naming the field: {details}"
    return None


def test_boundary_integers_in_every_request_field_get_a_proper_status(
    rpc: service_pb2_grpc.TrainingServiceStub, hostile_channel: grpc.Channel, stored_study: str
) -> None:
    """page_size, state, after_sequence, trial_id...: every integer field of every request but CreateStudy's."""
    before = snapshot(rpc, stored_study)
    failures, tried = [], Counter[str]()
    for method in METHODS:
        if method.name in ("CreateStudy", *EXTERNAL_METHODS, "DeleteStudy", "ExtendStudy"):
            continue  # the spec's fields: the test above; an external study's: tests/test_external.py; a valid
            # ExtendStudy would change the stored study (its fields: tests/test_extend_study.py)
        template = plain_request(method, stored_study)
        for path, field in integer_fields(template):
            tried[method.name] += 1
            failures += [
                f"{method.name}.{dotted(path)} = {value}: {why}"
                for value in boundary_values(field)
                if (why := _boundary_request_failure(rpc, method, template, path, value))
            ]
    assert not failures, "\n".join(failures)
    assert set(tried) == {"ListStudies", "WatchStudy", "ListTrials", "GetTrial", "DownloadCheckpoint"}, tried
    assert snapshot(rpc, stored_study) == before
    assert_serving(hostile_channel, rpc)


def test_one_past_the_last_event_or_trial_is_refused_or_not_found(
    rpc: service_pb2_grpc.TrainingServiceStub, stored_study: str
) -> None:
    """The edges of the counts a client names: the last event sequence is a valid place to resume, one past it not."""
    last = watch_all(rpc, stored_study)[-1].sequence
    watch = pb.WatchStudyRequest(study_id=stored_study, after_sequence=last)
    assert list(rpc.WatchStudy(watch, timeout=CALL_TIMEOUT_S)) == []  # at the end: nothing more, at once
    watch.after_sequence = last + 1
    code, details, _ = outcome(lambda: list(rpc.WatchStudy(watch, timeout=CALL_TIMEOUT_S)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("after_sequence: "), (
        f"{code.name}: {details}"
    )
    trials = rpc.ListTrials(pb.ListTrialsRequest(study_id=stored_study), timeout=CALL_TIMEOUT_S).trials
    past = pb.GetTrialRequest(study_id=stored_study, trial_id=max(t.trial_id for t in trials) + 1)
    code, details, _ = outcome(lambda: rpc.GetTrial(past, timeout=CALL_TIMEOUT_S))
    assert code == grpc.StatusCode.NOT_FOUND, f"{code.name}: {details}"


# ---------------------------------------------------------------- forged page tokens


def _b64(text: str | bytes) -> str:
    return base64.urlsafe_b64encode(text.encode() if isinstance(text, str) else text).decode()


FORGED_NUMBERS = [
    str(2**63),
    str(2**64),
    str(10**19),
    "9" * 40,
    "-1",
    str(-(2**63)),
    "-0",
    "+1",
    "01",
    " 1",
    "1 ",
    "1e3",
    "0x10",
    "1.0",
    "1_000",
    "abc",
    "",
    "\u0661",
    "1\x00",
]
FORGED_TOKENS = [
    *((f"r{n!r}", _b64(f"r{n}")) for n in FORGED_NUMBERS),
    ("a number without the r", _b64("5")),
    ("R5", _b64("R5")),
    ("r5 not encoded", "r5"),
    ("a valid token with junk between its characters", "c!jU="),
    ("without padding", _b64("r1").rstrip("=")),
    ("padding only", "===="),
    ("punctuation", "!!!!"),
    ("NUL", "\x00"),
    ("non-ASCII", "名前"),
    ("raw bytes encoded", _b64(b"\xff\xfe\x00r1")),
    ("100,000 characters", "A" * 100_000),
    ("r and 10,000 digits", _b64("r" + "1" * 10_000)),
]


def test_forged_page_tokens_are_invalid_argument_naming_the_token(
    rpc: service_pb2_grpc.TrainingServiceStub, hostile_channel: grpc.Channel, stored_study: str
) -> None:
    """A token for a row above int64 answered INTERNAL (OverflowError) on ListStudies and ListTrials."""
    calls = {
        "ListStudies": lambda token: rpc.ListStudies(pb.ListStudiesRequest(page_token=token), timeout=CALL_TIMEOUT_S),
        "ListTrials": lambda token: rpc.ListTrials(
            pb.ListTrialsRequest(study_id=stored_study, page_token=token), timeout=CALL_TIMEOUT_S
        ),
    }
    failures = []
    for name, list_page in calls.items():
        for label, token in FORGED_TOKENS:
            code, details, _ = outcome(lambda: list_page(token))  # noqa: B023 - called at once
            if code != grpc.StatusCode.INVALID_ARGUMENT or not details.startswith("page_token: "):
                failures.append(f"{name} with {label}: {code.name}: {details[:300]}")
        for row in (0, 1, 2**63 - 1):  # tokens of any row SQLite can hold are well formed: an ordinary page
            code, details, _ = outcome(lambda: list_page(_b64(f"r{row}")))  # noqa: B023 - called at once
            if code != grpc.StatusCode.OK:
                failures.append(f"{name} with the token of row {row}: {code.name}: {details[:300]}")
    assert not failures, "\n".join(failures)
    assert_serving(hostile_channel, rpc)


# ---------------------------------------------------------------- plugin options at and past their bounds

# The plugins whose bounded options are tried (None: every plugin of the kind). Searchers and stoppers are
# cheap to build, and are what validation once let through to fail at construction; the models other
# than the base spec's would make even a cancelled trial heavy.
BOUND_SAMPLE: dict[str, tuple[str, ...] | None] = {
    "searcher": None,
    "early_stopper": None,
    "optimizer": ("adam", "sgd"),
    "lr_scheduler": ("step", "onecycle"),
    "model": ("simple_cnn",),
}
# Where each kind sits in a spec; "training" stands for the plain training fields, which the server's own
# table bounds and which (unlike searcher and stopper options) can be searched as well as fixed.
COMPONENT_AT = {
    "searcher": ("searcher",),
    "early_stopper": ("early_stopping",),
    "optimizer": ("training", "optimizer"),
    "lr_scheduler": ("training", "lr_scheduler"),
    "model": ("model",),
    "training": ("training",),
}
SEARCHABLE = ("optimizer", "lr_scheduler", "model", "training")
BOUND_NAMES, _LOWER, _INCLUSIVE = ("ge", "gt", "le", "lt"), ("ge", "gt"), ("ge", "le")
# Struct numbers are doubles: integers past 2**53 lose digits, so an int option refuses them whatever it declares.
HUGE = (2.0**53 + 2, 2.0**64)


@dataclass(frozen=True)
class Edge:
    """One bound of one option: the closest value it admits (None: none worth a study) and values it refuses."""

    kind: str
    plugin: str  # "" for a training field
    option: str
    type: str
    bound: str  # e.g. "gt 0", for messages
    lower: bool
    inside: float | None
    outside: tuple[float, ...]
    far: float  # an admitted value on the option's other side: the other end of a searched range

    @property
    def label(self) -> str:
        return f"{self.kind} {self.plugin + ' ' if self.plugin else ''}{self.option} ({self.bound})"


def closest(type_: str, name: str, bound: float) -> tuple[float, float]:
    """(closest admitted, closest refused) value at the bound `name` (ge, gt, le, lt) for an option of `type_`."""
    lower, inclusive = name in _LOWER, name in _INCLUSIVE
    out = -1 if lower else 1  # the direction out of the admitted interval
    if type_ == "int":
        if lower:
            inside = math.ceil(bound) if inclusive else math.floor(bound) + 1
        else:
            inside = math.floor(bound) if inclusive else math.ceil(bound) - 1
        return inside, inside + out
    if inclusive:
        return bound, math.nextafter(bound, out * math.inf)
    return math.nextafter(bound, -out * math.inf), bound


def edges_of(kind: str, plugin: str, option: str, type_: str, declared: list[tuple[str, float]]) -> Iterator[Edge]:
    """The edges of one numeric option's declared bounds; an int option without an upper bound also gets one
    at the largest exact integer, where only values past it are sent (an admitted huge model would train)."""
    if type_ not in ("int", "float") or not declared:
        return
    insides = {name in _LOWER: closest(type_, name, bound)[0] for name, bound in declared}
    for name, bound in declared:
        lower = name in _LOWER
        inside, outside = closest(type_, name, bound)
        huge = tuple(-h if lower else h for h in HUGE) if type_ == "int" else ()
        far = insides.get(not lower, inside + (1 if lower else -1))
        yield Edge(kind, plugin, option, type_, f"{name} {_plain(bound)}", lower, inside, (outside, *huge), far)
    if type_ == "int" and False not in insides:
        yield Edge(kind, plugin, option, type_, "exact, <= 2**53", False, None, HUGE, insides[True])


def plugin_edges(kind: str, plugin: pb.Plugin) -> Iterator[Edge]:
    for param in plugin.parameters:
        declared = [(name, getattr(param, name)) for name in BOUND_NAMES if param.HasField(name)]
        yield from edges_of(kind, plugin.name, param.name, param.type, declared)


def training_edges() -> Iterator[Edge]:
    """The training fields' bounds, from the server's one table of them (ListPlugins does not show those)."""
    for field in TRAINING_FIELDS_CHECKED.values():
        if field.bounds is not None:
            limits = [(name, getattr(field.bounds, name)) for name in BOUND_NAMES]
            yield from edges_of("training", "", field.name, field.type, [(n, b) for n, b in limits if b is not None])


def sampled_edges(stub: service_pb2_grpc.TrainingServiceStub) -> list[Edge]:
    """The declared bounds of the sample's options, as a real ListPlugins shows them, and the training fields'."""
    found = list(training_edges())
    for kind, names in BOUND_SAMPLE.items():
        plugins = stub.ListPlugins(pb.ListPluginsRequest(kind=kind), timeout=CALL_TIMEOUT_S).plugins
        chosen = [p for p in plugins if names is None or p.name in names]
        assert names is None or {p.name for p in chosen} == set(names), f"{kind}: {[p.name for p in plugins]}"
        for plugin in chosen:
            required = [p.name for p in plugin.parameters if p.required]
            assert not required, f"{kind} {plugin.name} needs {required}: give the base spec a value"
            found += plugin_edges(kind, plugin)
    assert {e.kind for e in found} == set(COMPONENT_AT), found
    return found


def _plain(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _number(value: float, type_: str) -> int | float:
    return int(value) if type_ == "int" else value


def bound_spec(edge: Edge, fixed: dict[str, Any], space: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The stored study's spec with the edge's plugin in place, `fixed` among its options (or training
    fields), and a search space if given."""
    spec = copy.deepcopy(STORED_SPEC)
    if edge.kind == "training":
        spec["training"].update(fixed)
    else:
        base = STORED_SPEC["model"]["options"] if edge.kind == "model" else {}  # a small model keeps trials cheap
        options = {**{k: v for k, v in base.items() if k != edge.option}, **fixed}
        _set(spec, COMPONENT_AT[edge.kind], {"name": edge.plugin, "options": options})
    if space is not None:
        spec["search_space"] = space
    return spec


def searched(edge: Edge, domain: str, value: float) -> dict[str, Any]:
    """A parameter over `edge`'s option: a one-value choice, or a range from `value` to the edge's far side."""
    name = f"{edge.kind}.{edge.option}"
    if domain == "choice":
        return {"name": name, "choice": {"values": [_number(value, edge.type)]}}
    low, high = (value, edge.far) if edge.lower else (edge.far, value)
    return {"name": name, domain: {"low": _number(low, edge.type), "high": _number(high, edge.type)}}


@dataclass(frozen=True)
class BoundCase:
    """One spec that sets an option at an edge: it must be created (and store the value) or be refused by name."""

    label: str
    spec: dict[str, Any]
    admitted: bool
    field: str  # the path a refusal must name
    stored: Callable[[pb.Study], Any]  # the value as the created study stores it
    sent: Any


def bound_cases(edge: Edge) -> Iterator[BoundCase]:
    """The edge's values inside and outside, fixed and, where the option can be searched, as a choice value
    and as the near end of a range."""
    at = COMPONENT_AT[edge.kind] if edge.kind == "training" else (*COMPONENT_AT[edge.kind], "options")
    ranged = "int_range" if edge.type == "int" else "float_range"
    near = f"{ranged}.{'low' if edge.lower else 'high'}"
    values = [(True, edge.inside)] if edge.inside is not None else []
    for admitted, value in values + [(False, v) for v in edge.outside]:
        number = _number(value, edge.type)
        label = f"{edge.label} = {number!r}"
        if _carried("training" if edge.kind == "training" else "options", number, edge.option):
            fixed_at = dotted(("spec", *at, edge.option))
            yield BoundCase(
                f"{label}, fixed",
                bound_spec(edge, {edge.option: number}),
                admitted,
                fixed_at,
                functools.partial(_stored_fixed, edge),
                number,
            )
        if edge.kind not in SEARCHABLE:
            continue
        for domain, field in (("choice", "choice.values[0]"), (ranged, near)):
            if not _carried(domain, number):
                continue
            param = searched(edge, domain, value)
            yield BoundCase(
                f"{label}, searched as {domain}",
                bound_spec(edge, {}, [param]),
                admitted,
                f"spec.search_space[0].{field}",
                _stored_parameter,
                json_format.ParseDict(param, spec_pb2.Parameter()),
            )


def _carried(where: str, number: float, field: str = "") -> bool:
    """Whether the wire carries `number` exactly to the server: options and choice values are Struct doubles
    (2**53 + 1 arrives as 2**53), int_range ends int64s, a training field has its own type (an int32 cannot carry
    2**53); 0 in a training field is proto3's "not set", which takes the default."""
    if where == "int_range":
        return _INT64[0] <= number <= _INT64[1]
    if where == "training":
        descriptor = spec_pb2.TrainingConfig.DESCRIPTOR.fields_by_name[field]
        low, high = WIRE_RANGE.get(descriptor.type, (-math.inf, math.inf))
        return number != 0 and low <= number <= high
    return float(number) == number


def _stored_fixed(edge: Edge, study: pb.Study) -> float:
    if edge.kind == "training":
        return getattr(study.spec.training, edge.option)
    return _holder(study.spec, (*COMPONENT_AT[edge.kind], "options")).options.fields[edge.option].number_value


def _stored_parameter(study: pb.Study) -> spec_pb2.Parameter:
    return study.spec.search_space[0]


def _bound_case_failure(stub: service_pb2_grpc.TrainingServiceStub, case: BoundCase) -> str | None:
    try:
        code, details, study = _create_then_cancel(stub, _request(case.spec))
    except AssertionError as exc:
        return str(exc).splitlines()[0]  # the message, without pytest's introspection
    if case.admitted and study is None:
        return f"refused at the bound: {code.name}: {details}"
    if not case.admitted and (code != grpc.StatusCode.INVALID_ARGUMENT or not details.startswith(f"{case.field}: ")):
        return f"past the bound, answered {code.name}: {details} (should name {case.field})"
    if study is not None and case.stored(study) != case.sent:
        return f"stored as {case.stored(study)}"
    return None


def test_plugin_options_at_their_declared_bounds_are_accepted_and_past_them_refused_by_name(
    rpc: service_pb2_grpc.TrainingServiceStub, hostile_channel: grpc.Channel
) -> None:
    """The bounds are read from ListPlugins, so the test follows the declarations; a created study must not
    fail later as an internal error (ASHA's reduction_factor 1 and grid's num_points 0 once did)."""
    cases = [case for edge in sampled_edges(rpc) for case in bound_cases(edge)]
    failures = [f"{case.label}: {why}" for case in cases if (why := _bound_case_failure(rpc, case))]
    assert not failures, "\n".join(failures)
    assert_serving(hostile_channel, rpc)


# ---------------------------------------------------------------- server caps

# (section, field, the cap itself or None where this 2-device CPU server cannot meet it, values past it)
CAPS = [
    ("resources", "gpus_per_trial", MIN_GPU_SHARE, (math.nextafter(MIN_GPU_SHARE, 0), MIN_GPU_SHARE / 2, 5e-324)),
    ("resources", "gpus_per_trial", None, (MAX_GPUS_PER_TRIAL + 1, 2.0**53, 1e308)),
    ("resources", "gpu_memory_gb", MAX_GPU_MEMORY_GB, (math.nextafter(MAX_GPU_MEMORY_GB, math.inf), 1e308)),
    ("resources", "priority", MAX_PRIORITY, (math.nextafter(MAX_PRIORITY, math.inf), 1e308)),
    ("budget", "max_trials", MAX_TRIALS, (MAX_TRIALS + 1, 2**31 - 1)),
    ("budget", "trial_retries", server_spec.MAX_TRIAL_RETRIES, (server_spec.MAX_TRIAL_RETRIES + 1, 2**31 - 1)),
]
PAST_CAPS = [(section, field, value) for section, field, _, past in CAPS for value in past]
AT_CAPS = [(section, field, cap) for section, field, cap, _ in CAPS if cap is not None]


def _capped(section: str, field: str, value: float) -> pb.CreateStudyRequest:
    spec = _with(budget={**STORED_SPEC["budget"], "max_concurrent_trials": 1})  # not MAX_TRIALS at once
    spec.setdefault(section, {})[field] = value
    return _request(spec)


@pytest.mark.parametrize(("section", "field", "value"), PAST_CAPS, ids=[f"{f}={v!r}" for _, f, v in PAST_CAPS])
def test_values_past_a_cap_are_refused_by_name(
    section: str, field: str, value: float, rpc: service_pb2_grpc.TrainingServiceStub
) -> None:
    code, details, _ = _create_then_cancel(rpc, _capped(section, field, value))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{code.name}: {details}"
    assert details.startswith(f"spec.{section}.{field}: "), details


@pytest.mark.parametrize(("section", "field", "value"), AT_CAPS, ids=[f"{f}={v!r}" for _, f, v in AT_CAPS])
def test_values_at_a_cap_are_accepted_exactly(
    section: str, field: str, value: float, rpc: service_pb2_grpc.TrainingServiceStub
) -> None:
    code, details, study = _create_then_cancel(rpc, _capped(section, field, value))
    assert study is not None, f"{code.name}: {details}"
    assert getattr(getattr(study.spec, section), field) == value


# ---------------------------------------------------------------- accepted edges run to the end

# The widest integer ranges a spec may search: up to 2**53 on a step grid, and every seed on a log scale.
WIDE_SPACE = [
    {"name": "lr_scheduler.step_size", "int_range": {"low": 1, "high": 2**53, "step": 3}},
    {"name": "training.seed", "int_range": {"low": 1, "high": 2**32 - 1, "log": True}},
]


def lowest_options(kind: str, plugin: pb.Plugin) -> dict[str, Any]:
    """Every bounded option of the plugin at the lowest value it declares admissible."""
    edges = plugin_edges(kind, plugin)
    return {e.option: _number(e.inside, e.type) for e in edges if e.lower and e.inside is not None}


def edge_run_spec(kind: str, plugin: pb.Plugin) -> dict[str, Any]:
    spec = _with(search_space=WIDE_SPACE, budget={"max_trials": 3})
    spec["training"] = {**spec["training"], "epochs": 3, "lr_scheduler": {"name": "step"}}
    _set(spec, COMPONENT_AT[kind], {"name": plugin.name, "options": lowest_options(kind, plugin)})
    return spec


def off_the_space(config: dict[str, Any]) -> list[str]:
    """The suggested values that are not integers of WIDE_SPACE's ranges (on its step grid)."""
    wrong = []
    for param in WIDE_SPACE:
        value, bounds = config.get(param["name"]), param["int_range"]
        step = bounds.get("step", 1)
        on_grid = isinstance(value, float) and value.is_integer() and (int(value) - bounds["low"]) % step == 0
        if not (on_grid and bounds["low"] <= value <= bounds["high"]):
            wrong.append(f"{param['name']} = {value!r}")
    return wrong


def _edge_run_failure(stub: service_pb2_grpc.TrainingServiceStub, spec: dict[str, Any]) -> str | None:
    code, details, study = outcome(lambda: stub.CreateStudy(_request(spec), timeout=CALL_TIMEOUT_S))
    if study is None:
        return f"refused: {code.name}: {details}"
    ended = settle(stub, study.study_id)
    trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id), timeout=CALL_TIMEOUT_S).trials
    bad = [
        f"trial {t.trial_id} {pb.TrialState.Name(t.state)}: {t.error}"
        for t in trials
        if t.state not in (pb.TRIAL_COMPLETED, pb.TRIAL_PRUNED)
    ]
    bad += [f"trial {t.trial_id}: {wrong}" for t in trials if (wrong := off_the_space(dict(t.config)))]
    if ended.state != pb.STUDY_COMPLETED or bad or not trials:
        return f"{pb.StudyState.Name(ended.state)} {ended.error!r}, {len(trials)} trials: {bad}"
    return None


def test_searchers_and_stoppers_at_their_lowest_bounds_run_the_widest_ranges_to_the_end(
    rpc: service_pb2_grpc.TrainingServiceStub, hostile_channel: grpc.Channel
) -> None:
    """Not cancelled this time: suggest, report and observe meet what validation admitted, and every value
    suggested is an exact integer of its range."""
    failures = []
    for kind in ("searcher", "early_stopper"):
        for plugin in rpc.ListPlugins(pb.ListPluginsRequest(kind=kind), timeout=CALL_TIMEOUT_S).plugins:
            spec = edge_run_spec(kind, plugin)
            if why := _edge_run_failure(rpc, spec):
                failures.append(f"{kind} {plugin.name} {spec[COMPONENT_AT[kind][0]]['options']}: {why}")
    assert not failures, "\n".join(failures)
    assert_serving(hostile_channel, rpc)

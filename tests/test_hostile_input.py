"""Hostile input: generated specs and corrupt protobuf bytes get a proper status, never UNKNOWN/INTERNAL.

DESIGN.md: bad input never yields UNKNOWN or INTERNAL, never kills the server, never corrupts a
stored study. Hypothesis builds the specs (near-valid ones, by mutating a tiny valid spec, and
wild ones) and the bytes; every answer is checked, then the server's health and a study stored
before the run.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, message, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import watch_all

from tuneyard.server.errors import MAX_DETAILS_CHARS, MalformedRequest
from tuneyard.server.wire import SERVICE, tolerant_parser
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc, spec_pb2

FORBIDDEN = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
CALL_TIMEOUT_S = 30
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


def list_every_study(stub: service_pb2_grpc.TrainingServiceStub) -> list[pb.Study]:
    """Pages through ListStudies: one stored spec a client cannot parse would break it for everyone."""
    studies, token = [], ""
    while True:
        page = stub.ListStudies(pb.ListStudiesRequest(page_size=100, page_token=token), timeout=CALL_TIMEOUT_S)
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
INT64 = st.one_of(INT32, st.sampled_from([-(2**63), 2**63 - 1, 2**53 + 1]), st.integers(-(2**63), 2**63 - 1))
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
    STRUCT_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=8,
)  # fmt: skip
SMALL_VALUE = st.one_of(
    st.integers(-2, 6), st.floats(-1, 1), st.booleans(), st.none(), st.sampled_from(ODD_FLOATS), st.text(max_size=4),
    st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2),
)  # fmt: skip

PLUGINS = {
    "dataset": ["digits", "synthetic"],
    "model": ["simple_cnn", "convnet"],
    "optimizer": ["sgd", "adam"],
    "lr_scheduler": ["cosine", "step"],
    "augmentation": ["random_crop", "horizontal_flip", "mixup"],
    "searcher": ["random", "grid"],
    "early_stopper": ["median", "asha"],
}
# Real option names get only small values: a valid spec with a huge `num_filters` would really train.
KNOWN_OPTIONS = (
    "lr momentum num_filters num_conv_layers dropout batch_norm padding p alpha grace_period num_points val_fraction "
    "num_samples min_lr step_size"
).split()
KNOWN_PATHS = ["optimizer.lr", "optimizer.name", "optimizer.momentum", "model.num_filters", "model.num_conv_layers",
               "model.name", "model.dropout", "training.batch_size", "training.label_smoothing", "training.precision",
               "training.deterministic", "augmentations.random_crop.padding", "dataset.name", "lr_scheduler.name",
               "searcher.name", "training.nope", "model.", ".", "a.b.c.d", "augmentations.random_crop"]  # fmt: skip
METRICS = ["val_accuracy", "val_loss", "params", "vibes", ""]


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
        {"name": "optimizer.lr", "float_range": {"low": 0.001, "high": 0.01},
         "condition": {"parent": "model.num_conv_layers", "values": [i]}}
        for i in range(1, n + 1)
    ]  # fmt: skip
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
    {}, optional={"metric": st.one_of(st.sampled_from(METRICS), TEXT), "mode": st.sampled_from(
        ["MAXIMIZE", "MINIMIZE", 0, 3, -1, 2**31 - 1])}
)  # fmt: skip
SMALL_COUNTS = st.sampled_from([-(2**31), -1, 0, 1, 2, 100_001, 2**31 - 1])
TRAINING_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "epochs": SMALL_COUNTS, "batch_size": INT32, "label_smoothing": DOUBLE, "precision": TEXT, "seed": INT64,
    "grad_clip_norm": DOUBLE, "grad_accumulation_steps": INT32, "ema_decay": DOUBLE, "early_stop_patience": INT32,
    "deterministic": st.booleans(), "data_pipeline": st.one_of(st.sampled_from(["auto", "device", "loader"]), TEXT),
}  # fmt: skip
BUDGET_FIELDS = {"max_trials": SMALL_COUNTS, "max_concurrent_trials": INT32, "max_failures": INT32,
                 "trial_retries": INT32}  # fmt: skip
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
        "name": TEXT, "dataset": component("dataset"), "model": component("model"),
        "training": st.fixed_dictionaries({}, optional=TRAINING_FIELDS), "search_space": SEARCH_SPACE,
        "searcher": component("searcher"), "objective": OBJECTIVE,
        "budget": st.fixed_dictionaries({}, optional=BUDGET_FIELDS),
        "resources": st.fixed_dictionaries({}, optional=RESOURCE_FIELDS),
    },
)  # fmt: skip
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


def _create_then_cancel(stub: service_pb2_grpc.TrainingServiceStub, request: pb.CreateStudyRequest) -> str:
    """Sends one spec; a study it happens to create is cancelled at once, so nothing heavy runs."""
    code, details, study = outcome(lambda: stub.CreateStudy(request, timeout=CALL_TIMEOUT_S))
    # A spec is valid or bad input; anything else (RESOURCE_EXHAUSTED for too long a reply included) is a bug.
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), f"{code.name}: {details[:2000]}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert details.startswith(("spec", "request")), details  # names the field path
    if study is not None:
        cancel, why, _ = outcome(lambda: stub.CancelStudy(pb.CancelStudyRequest(study_id=study.study_id)))
        assert cancel in (grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION), f"{cancel.name}: {why}"
    return code.name


def test_the_mutation_base_is_a_valid_spec(rpc: service_pb2_grpc.TrainingServiceStub) -> None:
    """Unmutated, the strategy's base spec creates a study: mutations start from valid ground."""
    request = pb.CreateStudyRequest(spec=json_format.ParseDict(STORED_SPEC, spec_pb2.StudySpec()))
    assert _create_then_cancel(rpc, request) == "OK"


def test_generated_specs_get_a_proper_status_and_change_nothing(
    rpc: service_pb2_grpc.TrainingServiceStub, hostile_channel: grpc.Channel, stored_study: str
) -> None:
    before = snapshot(rpc, stored_study)
    seen: Counter[str] = Counter()

    @settings(QUICK, max_examples=150)
    @given(request=create_requests())
    def check(request: pb.CreateStudyRequest) -> None:
        seen[_create_then_cancel(rpc, request)] += 1

    check()
    assert seen["INVALID_ARGUMENT"] > 0, seen
    assert snapshot(rpc, stored_study) == before
    assert_serving(hostile_channel, rpc)


# ---------------------------------------------------------------- raw bytes

VARINT, I64, LEN, SGROUP, EGROUP, I32 = range(6)
METHODS: list[MethodDescriptor] = list(SERVICE.methods)


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
    FieldDescriptor.TYPE_DOUBLE: I64, FieldDescriptor.TYPE_FIXED64: I64, FieldDescriptor.TYPE_SFIXED64: I64,
    FieldDescriptor.TYPE_FLOAT: I32, FieldDescriptor.TYPE_FIXED32: I32, FieldDescriptor.TYPE_SFIXED32: I32,
    FieldDescriptor.TYPE_STRING: LEN, FieldDescriptor.TYPE_BYTES: LEN, FieldDescriptor.TYPE_MESSAGE: LEN,
}  # fmt: skip


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
    fields: dict[str, Any] = {"study_id": study_id, "trial_id": 1, "page_size": 3, "page_token": "t", "kind": "model",
                              "state": 2, "after_sequence": 1}  # fmt: skip
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
        cases += [("options nested 300 deep", _deep_struct(300)), ("options nested 40 deep", _deep_struct(40)),
                  ("spec name with bad UTF-8", delimited(1, delimited(1, b"\xed\xa0\x80")))]  # fmt: skip
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
    method: MethodDescriptor, hostile_channel: grpc.Channel, rpc: service_pb2_grpc.TrainingServiceStub,
    stored_study: str,
) -> None:  # fmt: skip
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
    ("infinity deep in a choice value",
     _request(_with(search_space=[{"name": "model.filter_size", "choice": {"values": [[1, 2]]}}]), _infinite_choice),
     "spec.search_space[0].choice.values[0][1]", "Infinity"),
    ("duration out of range", _request(STORED_SPEC, _duration(315_576_000_001, 0)), "spec.budget.max_duration",
     "Duration is not valid"),
    ("duration with seconds and nanos of opposite signs", _request(STORED_SPEC, _duration(5, -1)),
     "spec.budget.max_duration", "Sign mismatch"),
    ("a list among a repeated name's condition values",
     _request(_with(search_space=alternatives([["sgd"], [["adam"]]]))), "spec.search_space[2].condition.values[0]",
     "got a list"),
    ("an object as a condition value", _request(_with(search_space=alternatives([[{"a": 1}], ["adam"]]))),
     "spec.search_space[1].condition.values[0]", "got a dict"),
    ("a 100 kB plugin name (its echo outgrew the client's trailer limit: RESOURCE_EXHAUSTED)",
     _request(_with(dataset={"name": "y" * 100_000})), "spec.dataset.name", "longer than 4096 characters"),
    ("5000 two-byte characters in a plugin name", _request(_with(model={"name": "ü" * 5000})), "spec.model.name",
     "longer than 4096 characters"),
    ("an option nested deeper than clients can read back", _request(_with(training=_milestones(40))),
     "spec.training.lr_scheduler.options.milestones[0]", "nested deeper than 32 levels"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "request_", "field", "reason"), REGRESSIONS, ids=[r[0] for r in REGRESSIONS])
def test_found_spec_is_invalid_argument_naming_the_field(
    label: str, request_: pb.CreateStudyRequest, field: str, reason: str, rpc: service_pb2_grpc.TrainingServiceStub,
    hostile_channel: grpc.Channel,
) -> None:  # fmt: skip
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
    study = rpc.CreateStudy(_request(_with(training=_milestones(20))), timeout=CALL_TIMEOUT_S)
    rpc.CancelStudy(pb.CancelStudyRequest(study_id=study.study_id), timeout=CALL_TIMEOUT_S)
    assert study.study_id in {s.study_id for s in list_every_study(rpc)}

"""Bad requests get INVALID_ARGUMENT naming the field; the server keeps serving and stores nothing."""

from __future__ import annotations

import copy

import grpc
import pytest
from google.protobuf import json_format
from support import TINY_SPEC, to_proto

from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import spec_pb2


def with_change(path: str, value):
    """TINY_SPEC with one field replaced; `path` is dotted, list indices as numbers."""
    spec = copy.deepcopy(TINY_SPEC)
    *parents, last = path.split(".")
    node = spec
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return spec


BAD_SPECS = [
    ("unknown dataset", with_change("dataset.name", "imagenet-on-a-floppy"), "spec.dataset.name", "unknown dataset"),
    ("unknown model", with_change("model.name", "gpt-17"), "spec.model.name", "unknown model"),
    ("unknown optimizer", with_change("training.optimizer.name", "sgdd"), "spec.training.optimizer.name", "sgd"),
    (
        "unknown option",
        with_change("model.options", {"num_filterz": 3}),
        "spec.model.options.num_filterz",
        "unknown option",
    ),
    (
        "wrong option type",
        with_change("training.optimizer.options", {"lr": "fast"}),
        "spec.training.optimizer.options.lr",
        "float",
    ),
    (
        "int option given a fraction",
        with_change("model.options", {"num_filters": 2.5}),
        "spec.model.options.num_filters",
        "int",
    ),
    ("zero epochs", with_change("training.epochs", 0), "spec.training.epochs", "between 1"),
    ("negative batch size", with_change("training.batch_size", -4), "spec.training.batch_size", "must be >= 1"),
    (
        "label smoothing of one",
        with_change("training.label_smoothing", 1.0),
        "spec.training.label_smoothing",
        "must be < 1",
    ),
    ("unknown precision", with_change("training.precision", "fp8"), "spec.training.precision", "fp8"),
    (
        "unknown augmentation",
        with_change("training.augmentations", [{"name": "warp_drive"}]),
        "spec.training.augmentations[0].name",
        "unknown augmentation",
    ),
    (
        "low above high",
        with_change("search_space.0", {"name": "model.num_conv_layers", "int_range": {"low": 5, "high": 1}}),
        "spec.search_space[0].int_range",
        "low (5) > high (1)",
    ),
    (
        "log range from zero",
        with_change("search_space.0", {"name": "optimizer.lr", "float_range": {"low": 0, "high": 1, "log": True}}),
        "spec.search_space[0].float_range.low",
        "low > 0",
    ),
    (
        "empty choice",
        with_change("search_space.1", {"name": "optimizer.name", "choice": {"values": []}}),
        "spec.search_space[1].choice.values",
        "empty",
    ),
    (
        "unknown parameter path",
        with_change("search_space.0", {"name": "moddel.width", "int_range": {"low": 1, "high": 2}}),
        "spec.search_space[0].name",
        "unknown parameter path",
    ),
    (
        "unknown option in search space",
        with_change("search_space.0", {"name": "model.width", "int_range": {"low": 1, "high": 2}}),
        "spec.search_space[0].name",
        "has no option 'width'",
    ),
    (
        "unknown plugin among choices",
        with_change("search_space.1", {"name": "optimizer.name", "choice": {"values": ["adam", "lion9000"]}}),
        "spec.search_space[1].choice.values[1]",
        "unknown optimizer",
    ),
    (
        "option of only some choices",
        with_change("search_space.0", {"name": "optimizer.momentum", "float_range": {"low": 0.1, "high": 0.9}}),
        "spec.search_space[0].name",
        "has no option 'momentum'",
    ),
    (
        "domain missing",
        with_change("search_space.0", {"name": "model.num_filters"}),
        "spec.search_space[0]",
        "exactly one of",
    ),
    (
        "parameter listed twice",
        with_change("search_space.1", {"name": "model.num_conv_layers", "int_range": {"low": 1, "high": 2}}),
        "spec.search_space[1].name",
        "twice",
    ),
    (
        "condition on an unknown parent",
        with_change(
            "search_space.0",
            {
                "name": "model.num_filters",
                "int_range": {"low": 4, "high": 8},
                "condition": {"parent": "model.depth", "values": [1]},
            },
        ),
        "spec.search_space[0].condition.parent",
        "model.depth",
    ),
    (
        "float range for an int option",
        with_change("search_space.0", {"name": "model.num_filters", "float_range": {"low": 4, "high": 8}}),
        "spec.search_space[0]",
        "takes int",
    ),
    (
        "choice value of the wrong type",
        with_change("search_space.0", {"name": "model.filter_size", "choice": {"values": [3, "five"]}}),
        "spec.search_space[0].choice.values[1]",
        "int",
    ),
    ("zero max trials", with_change("budget.max_trials", 0), "spec.budget.max_trials", "between 1"),
    (
        "negative concurrency",
        with_change("budget.max_concurrent_trials", -1),
        "spec.budget.max_concurrent_trials",
        "negative",
    ),
    ("negative failures", with_change("budget.max_failures", -2), "spec.budget.max_failures", "negative"),
    ("unknown searcher", with_change("searcher.name", "oracle"), "spec.searcher.name", "unknown searcher"),
    (
        "unknown searcher option",
        with_change("searcher.options", {"temperature": 3}),
        "spec.searcher.options.temperature",
        "unknown option",
    ),
    (
        "unknown early stopper",
        with_change("early_stopping", {"name": "crystal_ball"}),
        "spec.early_stopping.name",
        "unknown early_stopper",
    ),
    ("unknown objective metric", with_change("objective.metric", "vibes"), "spec.objective.metric", "unknown metric"),
    (
        "more devices than the server has",
        with_change("resources", {"gpus_per_trial": 3}),
        "spec.resources.gpus_per_trial",
        "needs 3 devices; this server has 2",
    ),
    ("negative priority", with_change("resources", {"priority": -1}), "spec.resources.priority", "positive"),
    (
        "negative GPU memory",
        with_change("resources", {"gpu_memory_gb": -2}),
        "spec.resources.gpu_memory_gb",
        "negative",
    ),
    (
        "uneven GPU fraction",
        with_change("resources", {"gpus_per_trial": 0.3}),
        "spec.resources.gpus_per_trial",
        "divide",
    ),
    (
        "augmentation option of an unlisted augmentation",
        with_change(
            "search_space.0", {"name": "augmentations.random_crop.padding", "int_range": {"low": 0, "high": 2}}
        ),
        "spec.search_space[0].name",
        "not in spec.training.augmentations",
    ),
]


def assert_invalid(call, field: str, reason: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    details = err.value.details()
    assert details.startswith(field + ":") or f"{field}." in details.split(":")[0], details
    assert reason in details, details


def study_count(stub) -> int:
    return len(stub.ListStudies(pb.ListStudiesRequest(page_size=1000)).studies)


@pytest.mark.parametrize(("label", "spec", "field", "reason"), BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_is_invalid_argument_naming_the_field(stub, label, spec, field, reason):
    before = study_count(stub)
    assert_invalid(lambda: stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec))), field, reason)
    assert study_count(stub) == before
    assert stub.GetServerInfo(pb.GetServerInfoRequest()).version  # still serving


def test_missing_spec_is_invalid(stub):
    assert_invalid(lambda: stub.CreateStudy(pb.CreateStudyRequest()), "spec", "required")


def test_unknown_study_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.GetStudy(pb.GetStudyRequest(study_id="st-doesnotexist"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


BAD_REQUESTS = [
    ("GetStudy without id", lambda s: s.GetStudy(pb.GetStudyRequest()), "study_id", "required"),
    ("GetStudy with a huge id", lambda s: s.GetStudy(pb.GetStudyRequest(study_id="x" * 5000)), "study_id", "longer"),
    ("negative page size", lambda s: s.ListStudies(pb.ListStudiesRequest(page_size=-1)), "page_size", "negative"),
    (
        "forged page token",
        lambda s: s.ListStudies(pb.ListStudiesRequest(page_token="not-a-token")),
        "page_token",
        "not a token",
    ),
    ("unknown state filter", lambda s: s.ListStudies(pb.ListStudiesRequest(state=42)), "state", "unknown"),
    ("trials without study id", lambda s: s.ListTrials(pb.ListTrialsRequest()), "study_id", "required"),
    (
        "non-positive trial id",
        lambda s: s.GetTrial(pb.GetTrialRequest(study_id="st-x", trial_id=0)),
        "trial_id",
        "positive",
    ),
    ("unknown plugin kind", lambda s: s.ListPlugins(pb.ListPluginsRequest(kind="toaster")), "kind", "unknown plugin"),
    ("cancel without id", lambda s: s.CancelStudy(pb.CancelStudyRequest()), "study_id", "required"),
    (
        "watch from a negative sequence",
        lambda s: list(s.WatchStudy(pb.WatchStudyRequest(study_id="st-x", after_sequence=-5))),
        "after_sequence",
        "negative",
    ),
    ("watch without id", lambda s: list(s.WatchStudy(pb.WatchStudyRequest())), "study_id", "required"),
]


@pytest.mark.parametrize(("label", "call", "field", "reason"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_is_invalid_argument(stub, label, call, field, reason):
    assert_invalid(lambda: call(stub), field, reason)
    assert stub.GetServerInfo(pb.GetServerInfoRequest()).version


def test_garbage_bytes_do_not_hurt_the_server(channel, stub):
    raw = channel.unary_unary("/tuneyard.v1.TrainingService/CreateStudy")
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\xff\xff\xff\x0f garbage", timeout=10)
    assert err.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    assert stub.GetServerInfo(pb.GetServerInfoRequest()).version


def test_valid_spec_round_trips_with_defaults_filled(stub):
    spec = copy.deepcopy(TINY_SPEC)
    del spec["searcher"]
    spec["resources"] = {"priority": 2, "gpu_memory_gb": 1.5}
    study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))
    stored = json_format.MessageToDict(study.spec, preserving_proto_field_name=True)
    assert stored["searcher"]["name"] == "random"
    assert stored["resources"] == {"priority": 2.0, "gpu_memory_gb": 1.5}  # regression: these were dropped
    assert stored["training"]["precision"] == "auto"
    stub.CancelStudy(pb.CancelStudyRequest(study_id=study.study_id))
    assert isinstance(study.spec, spec_pb2.StudySpec)


def test_a_name_may_repeat_as_alternatives_under_disjoint_conditions(stub):
    spec = copy.deepcopy(TINY_SPEC)
    spec["search_space"] = [
        {"name": "optimizer.name", "choice": {"values": ["sgd", "adam"]}},
        {
            "name": "optimizer.lr",
            "float_range": {"low": 0.01, "high": 0.5, "log": True},
            "condition": {"parent": "optimizer.name", "values": ["sgd"]},
        },
        {
            "name": "optimizer.lr",
            "float_range": {"low": 0.0001, "high": 0.01, "log": True},
            "condition": {"parent": "optimizer.name", "values": ["adam"]},
        },
    ]
    study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))
    stub.CancelStudy(pb.CancelStudyRequest(study_id=study.study_id))

    spec["search_space"][2]["condition"]["values"] = ["adam", "sgd"]
    assert_invalid(
        lambda: stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec))), "spec.search_space[2].name", "disjoint"
    )


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("grad_clip_norm", -1.0, "must be >= 0"),
        ("grad_accumulation_steps", 5000, "must be <= 1024"),
        ("ema_decay", 1.0, "must be < 1"),
        ("early_stop_patience", -3, "must be >= 0"),
    ],
)
def test_bad_training_technique_settings_are_invalid(stub, field, value, reason):
    spec = with_change(f"training.{field}", value)
    create = lambda: stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))  # noqa: E731
    assert_invalid(create, f"spec.training.{field}", reason)

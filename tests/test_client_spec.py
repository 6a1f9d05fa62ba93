"""Spec loading (YAML / JSON / dict) and the int-restoring config helper of the thin client."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from tuneyard.client import TuneyardError, config_to_dict, load_spec
from tuneyard.client.specfile import integer_parameters, parse_spec_text
from tuneyard.v1 import spec_pb2

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_example_yaml_and_json_twin_are_the_same_spec() -> None:
    from_yaml = load_spec(EXAMPLES / "digits.yaml")
    from_json = load_spec(str(EXAMPLES / "digits.json"))
    from_dict = load_spec(json.loads((EXAMPLES / "digits.json").read_text()))
    assert from_yaml == from_json == from_dict
    assert from_yaml.name == "digits-cnn-search"
    assert from_yaml.objective.mode == spec_pb2.Objective.MAXIMIZE
    assert from_yaml.budget.max_trials == 8 and from_yaml.budget.max_concurrent_trials == 2
    names = [p.name for p in from_yaml.search_space]
    assert names[:5] == [
        "model.num_conv_layers",
        "model.num_filters",
        "model.filter_size",
        "optimizer.name",
        "optimizer.lr",
    ]
    filters = from_yaml.search_space[1]
    assert filters.WhichOneof("domain") == "int_range"
    assert (filters.int_range.low, filters.int_range.high, filters.int_range.log) == (16, 128, True)


def test_the_packaged_example_is_readable_through_importlib_resources() -> None:
    from importlib.resources import files

    text = (files("tuneyard.examples") / "digits.yaml").read_text()
    assert parse_spec_text(text) == load_spec(EXAMPLES / "digits.yaml")


def test_dict_with_duration_enum_and_struct_options() -> None:
    spec = load_spec(
        {
            "name": "s",
            "training": {"optimizer": {"name": "sgd", "options": {"lr": 0.1, "nesterov": True}}},
            "budget": {"max_trials": 3, "max_duration": "7200s"},
            "objective": {"metric": "val_loss", "mode": "MINIMIZE"},
        }
    )
    assert spec.budget.max_duration.seconds == 7200
    assert spec.objective.mode == spec_pb2.Objective.MINIMIZE
    assert spec.training.optimizer.options["nesterov"] is True


def test_a_studyspec_is_copied_not_shared() -> None:
    original = spec_pb2.StudySpec(name="a")
    copy = load_spec(original)
    copy.name = "b"
    assert original.name == "a"


def test_yaml_exponent_without_dot_is_a_float(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("training:\n  optimizer: {name: adam, options: {lr: 1e-3}}\n")
    assert load_spec(path).training.optimizer.options["lr"] == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"search_space": [{"name": "x", "int_rang": {"low": 1}}]}, "spec.search_space[0].int_rang"),
        ({"budget": {"max_tirals": 3}}, "did you mean max_trials"),
        ({"budget": {"max_trials": "many"}}, "spec.budget.max_trials"),
        ({"objective": {"mode": "BIGGER"}}, "spec.objective.mode"),
        ({"budget": {"max_duration": 7200}}, "spec.budget.max_duration"),
        ({"colour": "red"}, "spec.colour: unknown field"),
    ],
)
def test_bad_fields_raise_invalid_argument_naming_the_field(data: dict, fragment: str) -> None:
    with pytest.raises(TuneyardError) as info:
        load_spec(data)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in str(info.value)
    assert str(info.value).startswith("INVALID_ARGUMENT: ")


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(TuneyardError) as info:
        load_spec(tmp_path / "missing.yaml")
    assert info.value.code == grpc.StatusCode.NOT_FOUND and "missing.yaml" in str(info.value)

    bad = tmp_path / "bad.yaml"
    bad.write_text("objective:\n  mode: SIDEWAYS\n")
    with pytest.raises(TuneyardError, match=r"bad\.yaml: spec\.objective\.mode"):
        load_spec(bad)

    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    with pytest.raises(TuneyardError, match="not valid JSON"):
        load_spec(broken)

    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(TuneyardError, match="must be a mapping"):
        load_spec(listing)


def test_config_to_dict_restores_integer_parameters() -> None:
    spec = load_spec(EXAMPLES / "digits.yaml")
    assert integer_parameters(spec) == {"model.num_conv_layers", "model.num_filters", "model.filter_size"}
    config = struct_pb2.Struct()
    config.update(
        {
            "model.num_conv_layers": 2,
            "model.num_filters": 64,
            "model.filter_size": 5,
            "optimizer.name": "sgd",
            "optimizer.lr": 0.01,
            "optimizer.momentum": 0.9,
        }
    )
    plain = config_to_dict(config, spec)
    assert plain == {
        "model.num_conv_layers": 2,
        "model.num_filters": 64,
        "model.filter_size": 5,
        "optimizer.name": "sgd",
        "optimizer.lr": 0.01,
        "optimizer.momentum": 0.9,
    }
    assert all(type(plain[k]) is int for k in integer_parameters(spec))
    assert type(plain["optimizer.lr"]) is float
    # a mapping works too, and a float that is not whole is left alone
    assert config_to_dict({"model.num_filters": 64.5, "other": 1.0}, spec) == {
        "model.num_filters": 64.5,
        "other": 1.0,
    }


def test_tuneyard_error_reads_like_a_status() -> None:
    err = TuneyardError(grpc.StatusCode.INVALID_ARGUMENT, "spec.budget.max_trials: must be > 0")
    assert str(err) == "INVALID_ARGUMENT: spec.budget.max_trials: must be > 0"
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT and err.details.endswith("> 0")
    assert isinstance(err, Exception)

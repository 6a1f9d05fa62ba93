"""`initial_configs` (issue 18): configs a spec lists are evaluated first, in order, the parameters they
leave out chosen by the searcher (Optuna's enqueue_trial for tpe; drawn by random; set over a plain
suggestion for a searcher without `suggest_initial`, as grid). Each is checked against the space like a
fixed value; the searcher is told their results; after a kill -9 the ones already started are not run
again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_external import complete, config, create, external_spec, suggest

from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.study.domain import InvalidArgument
from tuneyard.server.study.spec import SpecValidator
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

SPACE = [
    {"name": "x", "float_range": {"low": -5.0, "high": 10.0}},
    {"name": "n", "int_range": {"low": 1, "high": 9, "step": 2}},
    {"name": "kind", "choice": {"values": ["a", "b"]}},
    {"name": "z", "float_range": {"low": 0.0, "high": 1.0}, "condition": {"parent": "kind", "values": ["b"]}},
]


def spec_with(initial: list[dict[str, Any]], searcher: str = "tpe", **overrides: Any) -> dict[str, Any]:
    return external_spec(search_space=SPACE, searcher={"name": searcher}, initial_configs=initial, **overrides)


@pytest.fixture(scope="module")
def ext(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    from tuneyard.server.app import start_server

    handle = start_server(data_dir=tmp_path_factory.mktemp("initial"), devices="cpu", cpu_slots=1)
    with grpc.insecure_channel(handle.address) as channel:
        yield handle, service_pb2_grpc.TrainingServiceStub(channel)
    handle.stop()


@pytest.mark.parametrize(
    ("initial", "path", "why"),
    [
        ([{"x": 1.0}, {"w": 1.0}], "spec.initial_configs[1].w", "not a parameter"),
        ([{"x": 11.0}], "spec.initial_configs[0].x", "outside [-5.0, 10.0]"),
        ([{"x": "far"}], "spec.initial_configs[0].x", "expected a number"),
        ([{"x": True}], "spec.initial_configs[0].x", "expected a number"),
        ([{"n": 4}], "spec.initial_configs[0].n", "off the range's grid"),
        ([{"n": 2.5}], "spec.initial_configs[0].n", "expected an integer"),
        ([{"n": 11}], "spec.initial_configs[0].n", "outside [1, 9]"),
        ([{"kind": "c"}], "spec.initial_configs[0].kind", "not one of the choice's values"),
        ([{"kind": 1}], "spec.initial_configs[0].kind", "not one of the choice's values"),
        ([{"z": 0.5}], "spec.initial_configs[0].z", "conditional on 'kind': set it too"),
        ([{"kind": "a", "z": 0.5}], "spec.initial_configs[0].z", "inactive while kind is 'a'"),
        ([{"x": 1.0}, {"x": 1}], "spec.initial_configs[1]", "repeats spec.initial_configs[0]"),
        ([{"x": float(i)} for i in range(7)], "spec.initial_configs", "more than budget.max_trials (6)"),
    ],
)
def test_hostile_initial_configs_are_refused_with_their_path(
    ext: tuple[Any, Any], initial: list[Any], path: str, why: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        create(ext[1], spec_with(initial))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(err.value.details()).startswith(f"{path}: ") and why in str(err.value.details()), err.value.details()


def test_shapes_that_proto_cannot_carry_are_refused_too() -> None:
    validator = SpecValidator(PluginRegistry.load(entry_points=False))
    for initial, path in (({"x": 1.0}, "spec.initial_configs"), ([[1.0]], "spec.initial_configs[0]")):
        with pytest.raises(InvalidArgument) as err:
            validator.validate(spec_with(initial))
        assert err.value.field == path


@pytest.mark.parametrize("searcher", ["tpe", "random", "grid"])
def test_initial_configs_run_first_in_order_and_the_searcher_fills_the_rest(
    ext: tuple[Any, Any], searcher: str
) -> None:
    handle, stub = ext
    initial = [{"x": 1.5, "n": 3, "kind": "a"}, {"kind": "b", "z": 0.25}, {"n": 9.0}]
    study_id = create(stub, spec_with(initial, searcher, budget={"max_trials": 5, "max_concurrent_trials": 1}))
    configs = []
    for _ in range(5):
        trial = suggest(stub, study_id).trials[0]
        configs.append(config(trial))
        complete(stub, study_id, trial.trial_id, value=float(trial.trial_id))
    assert configs[0] == {"x": 1.5, "n": 3, "kind": "a"}
    assert (configs[1]["kind"], configs[1]["z"]) == ("b", 0.25) and -5 <= configs[1]["x"] <= 10
    assert configs[2]["n"] == 9 and set(configs[2]) >= {"x", "kind"}
    assert all(c["n"] in (1, 3, 5, 7, 9) and ("z" in c) == (c["kind"] == "b") for c in configs)
    if searcher == "tpe":  # told like any trial: the journaled state holds each one's result
        state, _ = handle.storage.search_state(study_id)
        assert state is not None and state["guided"] == {"handed": 3, "primed": True}
        events = state["searcher"]["events"]
        assert [e[0] for e in events[:2]] == ["initial", "observe"] and events[1][1:] == [1, "COMPLETED", 1.0]


def test_started_initial_configs_are_not_run_again_after_a_kill(server_process: Any, tmp_path: Path) -> None:
    initial = [{"x": 1.0}, {"x": 2.0}, {"x": 3.0}]
    first = server_process(tmp_path / "data")
    stub = first.stub()
    study_id = create(stub, spec_with(initial, budget={"max_trials": 5, "max_concurrent_trials": 5}))
    one, two = suggest(stub, study_id, count=2).trials
    complete(stub, study_id, one.trial_id, value=1.0)
    first.kill()
    first.proc.wait(30)
    stub = server_process(tmp_path / "data").stub()
    three = suggest(stub, study_id).trials[0]
    assert (three.trial_id, config(three)["x"]) == (3, 3.0)
    rest = suggest(stub, study_id, count=2).trials
    assert [t.trial_id for t in rest] == [4, 5] and all(config(t)["x"] not in (1.0, 2.0, 3.0) for t in rest)
    assert complete(stub, study_id, two.trial_id, value=2.0).state == pb.TRIAL_COMPLETED
    trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study_id)).trials
    assert [config(t)["x"] for t in trials[:3]] == [1.0, 2.0, 3.0] and len(trials) == 5

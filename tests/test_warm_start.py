"""`warm_start: {study_ids}` (issue 18): the finished trials of earlier studies searching the same space
are told to the searcher before its first suggestion (tpe: added to Optuna's study as finished trials;
random: their configs are not suggested again). An unknown study or another space is refused with the
path of the id, naming the study and the parameter."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from test_external import complete, config, create, external_spec, suggest

from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.study.domain import InvalidArgument
from tuneyard.server.study.spec import SpecValidator

SPACE = [
    {"name": "x", "float_range": {"low": 0.0, "high": 1.0}},
    {"name": "y", "float_range": {"low": 0.0, "high": 1.0}},
]
OPTIMUM = (0.8, 0.2)


def distance(c: dict[str, Any]) -> float:
    return math.hypot(c["x"] - OPTIMUM[0], c["y"] - OPTIMUM[1])


def spec_of(searcher: dict[str, Any], trials: int, space: list[Any] = SPACE, **overrides: Any) -> dict[str, Any]:
    budget = {"max_trials": trials, "max_concurrent_trials": 1}
    return external_spec(search_space=space, searcher=searcher, budget=budget, **overrides)


def run(
    stub: Any, spec: dict[str, Any], trials: int, value: Callable[[dict[str, Any]], float] = distance
) -> tuple[str, list[dict[str, Any]]]:
    """Creates the study and evaluates `trials` of it one by one (by default the distance to OPTIMUM)."""
    study_id = create(stub, spec)
    configs = []
    for _ in range(trials):
        trial = suggest(stub, study_id).trials[0]
        configs.append(config(trial))
        complete(stub, study_id, trial.trial_id, value=value(configs[-1]))
    return study_id, configs


@pytest.fixture(scope="module")
def ext(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    from tuneyard.server.app import start_server
    from tuneyard.v1 import service_pb2_grpc

    handle = start_server(data_dir=tmp_path_factory.mktemp("warm"), devices="cpu", cpu_slots=1)
    with grpc.insecure_channel(handle.address) as channel:
        yield handle, service_pb2_grpc.TrainingServiceStub(channel)
    handle.stop()


@pytest.fixture(scope="module")
def earlier(ext: tuple[Any, Any]) -> str:
    """A finished random study of 20 trials over SPACE."""
    study_id, _ = run(ext[1], spec_of({"name": "random"}, 20), 20)
    return study_id


def test_a_warm_start_changes_tpes_first_suggestions_toward_the_earlier_best(
    ext: tuple[Any, Any], earlier: str
) -> None:
    stub = ext[1]
    tpe = {"name": "tpe", "options": {"n_startup_trials": 10}}
    _, cold = run(stub, spec_of(tpe, 3), 3)
    _, warm = run(stub, spec_of(tpe, 3, warm_start={"study_ids": [earlier]}), 3)
    assert warm != cold
    cold_distance = sum(map(distance, cold)) / 3
    warm_distance = sum(map(distance, warm)) / 3
    assert warm_distance < 0.2 < cold_distance, (warm, cold)


def test_random_search_does_not_repeat_an_earlier_studys_configs(ext: tuple[Any, Any]) -> None:
    stub = ext[1]
    space = [{"name": "k", "choice": {"values": ["a", "b", "c", "d"]}}]
    spec = external_spec(search_space=space, searcher={"name": "random"}, budget={"max_trials": 2})
    first, firsts = run(stub, spec, 2, lambda c: 1.0)
    _, seconds = run(stub, dict(spec, warm_start={"study_ids": [first]}), 2, lambda c: 1.0)
    assert sorted(c["k"] for c in firsts + seconds) == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("warm_start", "path", "why"),
    [
        ({}, "spec.warm_start.study_ids", "name at least one earlier study"),
        ({"study_ids": [""]}, "spec.warm_start.study_ids[0]", "must be a study id"),
        ({"study_ids": ["s" * 201]}, "spec.warm_start.study_ids[0]", "must be a study id"),
        ({"study_ids": ["a", "b", "a"]}, "spec.warm_start.study_ids[2]", "repeats study 'a'"),
        ({"study_ids": [f"s{i}" for i in range(17)]}, "spec.warm_start.study_ids", "more than 16"),
    ],
)
def test_hostile_warm_starts_are_refused_with_their_path(
    ext: tuple[Any, Any], warm_start: dict[str, Any], path: str, why: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        create(ext[1], spec_of({"name": "tpe"}, 3, warm_start=warm_start))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(err.value.details()).startswith(f"{path}: ") and why in str(err.value.details()), err.value.details()


def test_an_unknown_study_or_another_space_is_refused_naming_the_study_and_parameter(
    ext: tuple[Any, Any], earlier: str
) -> None:
    validator = SpecValidator(PluginRegistry.load(entry_points=False))
    wider = [SPACE[0], {"name": "y", "float_range": {"low": 0.0, "high": 2.0}}]
    more = [*SPACE, {"name": "w", "choice": {"values": [1, 2]}}]
    for space, ids, path, why in (
        (SPACE, [earlier, "nope"], "spec.warm_start.study_ids[1]", "no study 'nope'"),
        (wider, [earlier], "spec.warm_start.study_ids[0]", f"study {earlier!r} searches 'y' over FloatRange"),
        (more, [earlier], "spec.warm_start.study_ids[0]", f"study {earlier!r} does not search 'w'"),
        (SPACE[:1], [earlier], "spec.warm_start.study_ids[0]", "also searches 'y', which this study does not"),
    ):
        plan = validator.validate(spec_of({"name": "tpe"}, 3, space, warm_start={"study_ids": ids}))
        with pytest.raises(InvalidArgument) as err:
            validator.check_earlier_studies(plan, ext[0].storage)
        assert err.value.field == path and why in err.value.reason, err.value
    plan = validator.validate(spec_of({"name": "tpe"}, 3, warm_start={"study_ids": [earlier]}))
    validator.check_earlier_studies(plan, ext[0].storage)
    assert plan.warm_start == (earlier,)


def test_a_restored_search_does_not_tell_the_earlier_trials_twice(ext: tuple[Any, Any], earlier: str) -> None:
    from tuneyard.server.study.search import build_search

    handle = ext[0]
    registry = PluginRegistry.load(entry_points=False)
    plan = SpecValidator(registry).validate(spec_of({"name": "tpe"}, 3, warm_start={"study_ids": [earlier]}))
    searcher, _ = build_search(plan, registry, handle.storage)
    searcher.suggest(1)
    journaled = searcher.state_dict()
    told = [e for e in journaled["searcher"]["events"] if e[0] == "prior"]
    assert len(told) == 20 and journaled["guided"]["primed"]
    restored, _ = build_search(plan, registry, handle.storage)
    restored.load_state_dict(journaled)
    assert restored.suggest(2) == searcher.suggest(2)
    events = restored.state_dict()["searcher"]["events"]
    assert [e[0] for e in events].count("prior") == 20


def test_a_search_leaves_out_an_earlier_study_deleted_or_of_another_space(ext: tuple[Any, Any], earlier: str) -> None:
    from tuneyard.server.study.search import warm_priors
    from tuneyard.server.study.spec_components import ComponentChecker
    from tuneyard.server.study.spec_space import SpaceChecker

    handle, stub = ext
    other, _ = run(stub, spec_of({"name": "random"}, 2, SPACE[:1]), 2, lambda c: c["x"])
    gone, _ = run(stub, spec_of({"name": "random"}, 2), 2)
    handle.storage.delete_study(gone)
    registry = PluginRegistry.load(entry_points=False)
    plan = SpecValidator(registry).validate(
        spec_of({"name": "tpe"}, 3, warm_start={"study_ids": [other, gone, earlier]})
    )
    priors = warm_priors(plan, handle.storage, SpaceChecker(ComponentChecker(registry)))
    assert len(priors) == 20 and all(set(p.config) == {"x", "y"} and p.state == "COMPLETED" for p in priors)


def test_create_refuses_an_unknown_or_incompatible_earlier_study(ext: tuple[Any, Any], earlier: str) -> None:
    wider = [SPACE[0], {"name": "y", "float_range": {"low": 0.0, "high": 2.0}}]
    for space, ids, path in (
        (SPACE, [earlier, "st-000000000000"], "spec.warm_start.study_ids[1]"),
        (wider, [earlier], "spec.warm_start.study_ids[0]"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            create(ext[1], spec_of({"name": "tpe"}, 3, space, warm_start={"study_ids": ids}))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(f"{path}: "), err.value.details()

"""Outcome constraints (issue 18): `constraints: [{metric, max | min}]` in a spec. A trial that violates
one (or lacks its metric) ends COMPLETED but infeasible: stored with the constraints it violates, in its
events too, and never the best trial nor on the Pareto front. TPE is told the constraint values through
Optuna's constraints_func, and steers away from the infeasible region."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from support import tiny_spec, to_proto, watch_all
from test_external import complete, create, external_spec, suggest

from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.study.domain import InvalidArgument, TrialState
from tuneyard.server.study.spec import SpecValidator
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

PARAMS_MAX = {"metric": "params", "max": 1000}


@pytest.fixture(scope="module")
def ext(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    from tuneyard.server.app import start_server

    handle = start_server(data_dir=tmp_path_factory.mktemp("constraints"), devices="cpu", cpu_slots=1)
    with grpc.insecure_channel(handle.address) as channel:
        yield handle, service_pb2_grpc.TrainingServiceStub(channel)
    handle.stop()


def refused(stub: Any, spec: dict[str, Any]) -> str:
    with pytest.raises(grpc.RpcError) as err:
        create(stub, spec)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return str(err.value.details())


@pytest.mark.parametrize(
    ("constraints", "path", "why"),
    [
        ([{"metric": "params"}], "spec.constraints[0]", "exactly one of max and min"),
        ([{"metric": "params", "max": 1, "min": 0}], "spec.constraints[0]", "exactly one of max and min"),
        ([{"metric": "params", "max": "Infinity"}], "spec.constraints[0].max", "finite"),
        ([{"metric": "params", "min": "NaN"}], "spec.constraints[0].min", "finite"),
        ([{"max": 1}], "spec.constraints[0].metric", "required"),
        ([{"metric": "m" * 201, "max": 1}], "spec.constraints[0].metric", "longer than"),
        ([PARAMS_MAX, {"metric": "params", "max": 5}], "spec.constraints[1]", "a second max"),
        ([PARAMS_MAX] * 33, "spec.constraints", "more than 32"),
    ],
)
def test_hostile_constraints_are_refused_with_their_path(
    ext: tuple[Any, Any], constraints: list[Any], path: str, why: str
) -> None:
    details = refused(ext[1], external_spec(constraints=constraints))
    assert details.startswith(f"{path}: ") and why in details, details


def test_a_training_study_constrains_only_metrics_its_trainer_reports(ext: tuple[Any, Any]) -> None:
    details = refused(ext[1], tiny_spec(constraints=[{"metric": "paramz", "max": 5}]))
    assert details.startswith("spec.constraints[0].metric: unknown metric 'paramz'"), details


def test_shapes_that_proto_cannot_carry_are_refused_too() -> None:
    validator = SpecValidator(PluginRegistry.load(entry_points=False))
    for constraints, path in (
        ({"metric": "params"}, "spec.constraints"),
        (["params"], "spec.constraints[0]"),
        ([{"metric": "params", "max": 1, "below": 2}], "spec.constraints[0].below"),
        ([{"metric": 3, "max": 1}], "spec.constraints[0].metric"),
        ([{"metric": "params", "max": True}], "spec.constraints[0].max"),
    ):
        with pytest.raises(InvalidArgument) as err:
            validator.validate(external_spec(constraints=constraints))
        assert err.value.field == path, err.value


def test_violating_trials_complete_infeasible_and_stay_off_the_best_and_the_front(ext: tuple[Any, Any]) -> None:
    handle, stub = ext
    objectives = [{"metric": "accuracy", "mode": "MAXIMIZE"}, {"metric": "latency", "mode": "MINIMIZE"}]
    spec = external_spec(objectives=objectives, constraints=[PARAMS_MAX], budget={"max_trials": 5})
    del spec["objective"]
    study_id = create(stub, spec)
    trials = suggest(stub, study_id, count=5).trials
    results = [  # (accuracy, latency, params): the best two on both objectives break the constraint
        {"accuracy": 0.95, "latency": 1.0, "params": 5000.0},
        {"accuracy": 0.6, "latency": 3.0, "params": 500.0},
        {"accuracy": 0.7, "latency": 4.0, "params": 1000.0},  # on the bound: it holds
        {"accuracy": 0.99, "latency": 0.5},  # no params reported: it cannot be shown to hold
        {"accuracy": 0.5, "latency": 5.0, "params": 100.0},
    ]
    for trial, metrics in zip(trials, results, strict=True):
        assert complete(stub, study_id, trial.trial_id, **metrics).state == pb.TRIAL_COMPLETED
    watch_all(stub, study_id)
    ids = [t.trial_id for t in trials]
    study = stub.GetStudy(pb.GetStudyRequest(study_id=study_id))
    assert study.state == pb.STUDY_COMPLETED
    assert study.best_trial.trial_id == ids[2]
    assert sorted(t.trial_id for t in study.pareto_front) == sorted([ids[1], ids[2]])
    stored = {t: handle.storage.get_trial(study_id, t) for t in ids}
    assert [stored[t].violated_constraints for t in ids] == [["params <= 1000"], [], [], ["params <= 1000"], []]
    assert {s.state for s in stored.values()} == {TrialState.COMPLETED}
    finished = [e.payload["trial"] for e in handle.storage.events_after(study_id, 0) if e.kind == "trial_finished"]
    assert {t["trial_id"]: t["violated_constraints"] for t in finished} == {
        t: stored[t].violated_constraints for t in ids
    }
    listed = stub.ListTrials(pb.ListTrialsRequest(study_id=study_id)).trials
    shown = {t.trial_id: list(t.violated_constraints) for t in listed}  # Trial.violated_constraints
    assert shown == {t: stored[t].violated_constraints for t in ids}


def _tpe_run(stub: Any, constrained: bool) -> tuple[list[float], Any]:
    spec = external_spec(
        search_space=[{"name": "x", "float_range": {"low": 0.0, "high": 1.0}}],
        searcher={"name": "tpe", "options": {"n_startup_trials": 5}},
        objective={"metric": "value", "mode": "MAXIMIZE"},
        budget={"max_trials": 25, "max_concurrent_trials": 1},
    )
    if constrained:
        spec["constraints"] = [{"metric": "value", "max": 0.3}]
    study_id = create(stub, spec)
    xs = []
    for _ in range(25):
        trial = suggest(stub, study_id).trials[0]
        x = trial.config.fields["x"].number_value
        xs.append(x)
        complete(stub, study_id, trial.trial_id, value=x)
    return xs, stub.GetStudy(pb.GetStudyRequest(study_id=study_id))


def test_tpe_is_told_the_constraints_and_searches_the_feasible_region(ext: tuple[Any, Any]) -> None:
    handle, stub = ext
    free, _ = _tpe_run(stub, constrained=False)
    bound, study = _tpe_run(stub, constrained=True)
    assert free[:5] == bound[:5]  # the same startup design: only what TPE is told differs
    assert statistics.median(free[-10:]) > 0.7
    assert statistics.median(bound[-10:]) < 0.45
    assert study.best_trial.objective_value == max(x for x in bound if x <= 0.3)
    searcher_state, _ = handle.storage.search_state(study.study_id)
    assert searcher_state is not None
    told = [e for e in searcher_state["events"] if e[0] == "observe"]
    assert len(told) == 25 and all(len(e) == 5 and e[4] == [pytest.approx(e[3] - 0.3)] for e in told)


def test_a_trained_model_over_its_params_budget_completes_infeasible(server: Any, stub: Any) -> None:
    spec = tiny_spec(
        search_space=[{"name": "model.num_filters", "choice": {"values": [4, 32]}}],
        searcher={"name": "grid"},
        constraints=[{"metric": "params", "max": 2000}],
    )
    spec["training"]["epochs"] = 1
    study_id = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec))).study_id
    watch_all(stub, study_id)
    trials = {server.storage.get_trial(study_id, t).config["model.num_filters"]: t for t in (1, 2)}
    small, large = (server.storage.get_trial(study_id, trials[n]) for n in (4, 32))
    assert (small.state, large.state) == (TrialState.COMPLETED, TrialState.COMPLETED)
    assert small.final_metrics["params"] <= 2000 < large.final_metrics["params"]
    assert (small.violated_constraints, large.violated_constraints) == ([], ["params <= 2000"])
    study = stub.GetStudy(pb.GetStudyRequest(study_id=study_id))
    assert study.state == pb.STUDY_COMPLETED and study.best_trial.trial_id == small.trial_id


def test_a_store_written_before_constraints_gains_the_column_and_keeps_its_trials(tmp_path: Any) -> None:
    import sqlite3
    import time

    from tuneyard.server.storage.sqlite import Storage
    from tuneyard.server.storage.sqlite_file import DB_NAME
    from tuneyard.server.study.domain import TrialEnd

    store = Storage(tmp_path)
    study, _ = store.create_study(external_spec(), "")
    store.create_trial(study.study_id, 1, {"x": 1.0}, "client:a", "")
    store.end_trial(study.study_id, 1, TrialEnd(TrialState.COMPLETED, time.time(), objective_value=0.5))
    store.close()
    with sqlite3.connect(tmp_path / DB_NAME) as db:  # the trials table as the release before wrote it
        db.execute("ALTER TABLE trials DROP COLUMN violated_constraints")
    store = Storage(tmp_path)
    old = store.get_trial(study.study_id, 1)
    assert (old.objective_value, old.violated_constraints, old.feasible) == (0.5, [], True)
    store.create_trial(study.study_id, 2, {"x": 2.0}, "client:a", "")
    end = TrialEnd(TrialState.COMPLETED, time.time(), objective_value=0.9, violated_constraints=["params <= 1000"])
    assert store.end_trial(study.study_id, 2, end).violated_constraints == ["params <= 1000"]
    store.close()

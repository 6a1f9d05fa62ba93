"""ExtendStudy (issue 18, part 4): a finished study reopens with more budget, runs exactly `add_trials`
more trials from its journaled search state, and its events go on from the last sequence, also across
a kill -9 of the server between the extension and its end."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format
from support import tiny_spec, to_proto, watch_all

from tuneyard.server.study.domain import StudyRecord, StudyState, TrialCounts, WrongState
from tuneyard.server.study.manager import extended_spec
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc


def spec(max_trials: int, searcher: str = "tpe", **budget: Any) -> dict[str, Any]:
    return {
        "name": "extend",
        "external": {},
        "search_space": [
            {"name": "x", "float_range": {"low": -5.0, "high": 10.0}},
            {"name": "y", "float_range": {"low": 0.0, "high": 15.0}},
        ],
        # TPE after two startup trials: its suggestions depend on what it was told, so an extension
        # that lost the searcher's state would suggest other configurations.
        "searcher": {"name": "tpe", "options": {"n_startup_trials": 2}} if searcher == "tpe" else {"name": searcher},
        "objective": {"metric": "value", "mode": "MINIMIZE"},
        "budget": {"max_trials": max_trials, "max_concurrent_trials": 1, **budget},
    }


def value_of(config: dict[str, float]) -> float:
    x, y = config["x"], config["y"]
    return (y - 5.1 / (4 * math.pi**2) * x**2 + 5 / math.pi * x - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x)


@pytest.fixture(scope="module")
def ext_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tuneyard.server.app import start_server

    handle = start_server(data_dir=tmp_path_factory.mktemp("extend-data"), devices="cpu", cpu_slots=1)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def ext(ext_server: Any) -> Iterator[Any]:
    with grpc.insecure_channel(ext_server.address) as channel:
        yield service_pb2_grpc.TrainingServiceStub(channel)


def create(stub: Any, body: dict[str, Any]) -> str:
    return stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(body)), timeout=30).study_id


def evaluate_all(stub: Any, study_id: str) -> list[dict[str, float]]:
    """Evaluates every trial the study hands out until it is done; returns their configurations."""
    configs = []
    while True:
        response = stub.SuggestTrials(pb.SuggestTrialsRequest(study_id=study_id, count=1, client_id="c"), timeout=30)
        if not response.trials:
            assert response.study_done
            return configs
        (trial,) = response.trials
        config = json_format.MessageToDict(trial.config)
        configs.append(config)
        request = pb.CompleteTrialRequest(
            study_id=study_id, trial_id=trial.trial_id, state=pb.TRIAL_COMPLETED, metrics={"value": value_of(config)}
        )
        stub.CompleteTrial(request, timeout=30)


def extend(stub: Any, study_id: str, trials: int = 0, seconds: int = 0) -> pb.ExtendStudyResponse:
    request = pb.ExtendStudyRequest(study_id=study_id, add_trials=trials)
    if seconds:
        request.add_duration.CopyFrom(duration_pb2.Duration(seconds=seconds))
    return stub.ExtendStudy(request, timeout=30)


def error_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_an_extension_runs_exactly_add_trials_more_from_the_journaled_search(ext: Any) -> None:
    straight = create(ext, spec(5))
    straight_configs = evaluate_all(ext, straight)
    study_id = create(ext, spec(3))
    first = evaluate_all(ext, study_id)
    before = watch_all(ext, study_id)
    assert before[-1].study_state.state == pb.STUDY_COMPLETED

    response = extend(ext, study_id, trials=2)
    assert response.study.state == pb.STUDY_RUNNING and response.after_sequence == before[-1].sequence
    assert response.study.spec.budget.max_trials == 5
    assert error_of(lambda: extend(ext, study_id, trials=1))[0] == grpc.StatusCode.FAILED_PRECONDITION
    more = evaluate_all(ext, study_id)
    assert len(more) == 2 and first + more == straight_configs  # the searcher went on where it stopped

    extension = watch_all(ext, study_id, after=response.after_sequence)
    assert extension[0].study_state.state == pb.STUDY_RUNNING
    assert [e.trial_started.trial.trial_id for e in extension if e.HasField("trial_started")] == [4, 5]
    assert extension[-1].study_state.state == pb.STUDY_COMPLETED
    everything = watch_all(ext, study_id)  # from the start: past the first run's end, to the last one
    assert [e.sequence for e in everything] == list(range(1, len(everything) + 1))
    assert everything == before + extension
    study = ext.GetStudy(pb.GetStudyRequest(study_id=study_id), timeout=30)
    assert study.state == pb.STUDY_COMPLETED and study.trial_counts.completed == 5
    assert study.best_trial.objective_value == min(value_of(c) for c in straight_configs)


def test_bad_extensions_are_refused_with_the_field(ext: Any) -> None:
    study_id = create(ext, spec(1))
    evaluate_all(ext, study_id)
    negative = pb.ExtendStudyRequest(study_id=study_id, add_duration=duration_pb2.Duration(seconds=-5))
    cases = [
        (lambda: extend(ext, study_id, trials=-1), grpc.StatusCode.INVALID_ARGUMENT, "add_trials:"),
        (lambda: ext.ExtendStudy(negative, timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "add_duration:"),
        (lambda: extend(ext, study_id), grpc.StatusCode.INVALID_ARGUMENT, "add_trials:"),
        (lambda: extend(ext, study_id, trials=10**6), grpc.StatusCode.INVALID_ARGUMENT, "add_trials:"),
        (lambda: extend(ext, "st-000000000000", trials=1), grpc.StatusCode.NOT_FOUND, ""),
        (lambda: extend(ext, "", trials=1), grpc.StatusCode.INVALID_ARGUMENT, "study_id:"),
    ]
    for call, code, prefix in cases:
        got, details = error_of(call)
        assert got == code and details.startswith(prefix), details
    assert ext.GetStudy(pb.GetStudyRequest(study_id=study_id), timeout=30).spec.budget.max_trials == 1
    failed = create(ext, spec(1))
    (trial,) = ext.SuggestTrials(pb.SuggestTrialsRequest(study_id=failed, count=1), timeout=30).trials
    ext.CompleteTrial(
        pb.CompleteTrialRequest(study_id=failed, trial_id=trial.trial_id, state=pb.TRIAL_FAILED), timeout=30
    )
    assert watch_all(ext, failed)[-1].study_state.state == pb.STUDY_FAILED
    assert error_of(lambda: extend(ext, failed, trials=1))[0] == grpc.StatusCode.FAILED_PRECONDITION


def test_a_training_study_extended_trains_one_more_trial_and_evaluates_the_best_again(stub: Any) -> None:
    body = tiny_spec(budget={"max_trials": 1}, training={**tiny_spec()["training"], "epochs": 1})
    study_id = create(stub, body)
    assert watch_all(stub, study_id)[-1].study_state.state == pb.STUDY_COMPLETED
    response = extend(stub, study_id, trials=1)
    events = watch_all(stub, study_id, after=response.after_sequence)
    assert events[-1].study_state.state == pb.STUDY_COMPLETED, events[-1]
    assert [e.trial_started.trial.trial_id for e in events if e.HasField("trial_started")] == [2]
    assert "test_accuracy" in events[-1].study_state.test_metrics
    trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study_id), timeout=30).trials
    assert [(t.trial_id, t.state) for t in trials] == [(1, pb.TRIAL_COMPLETED), (2, pb.TRIAL_COMPLETED)]


def _ended(end_time: float, counted_from: float, max_trials: int, **budget: Any) -> StudyRecord:
    counts = TrialCounts(completed=max_trials)
    body = {"budget": {"max_trials": max_trials, **budget}}
    return StudyRecord("st-1", body, StudyState.COMPLETED, counts=counts, start_time=counted_from, end_time=end_time)


def test_the_time_a_study_sat_finished_does_not_count_against_its_duration() -> None:
    study = _ended(end_time=160.0, counted_from=100.0, max_trials=4, max_duration="100s")  # ran 60 s
    body, counted_from = extended_spec(study, 3, 0.0, 100.0, now=1000.0)
    assert body["budget"] == {"max_trials": 7, "max_duration": "100.000s"} and counted_from == 940.0
    body, counted_from = extended_spec(study, 0, 30.0, 100.0, now=1000.0)
    assert body["budget"] == {"max_trials": 4, "max_duration": "130.000s"} and counted_from == 940.0
    unlimited = _ended(end_time=160.0, counted_from=100.0, max_trials=4)
    body, counted_from = extended_spec(unlimited, 0, 30.0, 100.0, now=1000.0)
    assert body["budget"]["max_duration"] == "90.000s" and counted_from == 940.0  # 30 s from now
    assert extended_spec(unlimited, 2, 0.0, 100.0, now=1000.0)[0]["budget"] == {"max_trials": 6}
    spent = _ended(end_time=200.0, counted_from=100.0, max_trials=4, max_duration="100s")
    with pytest.raises(WrongState, match="add_duration"):
        extended_spec(spent, 2, 0.0, 100.0, now=1000.0)


def test_an_extension_survives_a_kill_right_after_it(server_process: Any, tmp_path: Any) -> None:
    data = tmp_path / "data"
    server = server_process(data)
    study_id = create(server.stub(), spec(2, "random"))
    evaluate_all(server.stub(), study_id)
    last = watch_all(server.stub(), study_id)[-1].sequence
    assert extend(server.stub(), study_id, trials=2).after_sequence == last
    server.kill()  # kill -9 before the extension handed out anything

    restarted = server_process(data)
    stub = restarted.stub()
    assert len(evaluate_all(stub, study_id)) == 2
    events = watch_all(stub, study_id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[last].study_state.state == pb.STUDY_RUNNING  # the extension's event, stored before the kill
    assert [e.trial_started.trial.trial_id for e in events[last:] if e.HasField("trial_started")] == [3, 4]
    study = stub.GetStudy(pb.GetStudyRequest(study_id=study_id), timeout=30)
    assert study.state == pb.STUDY_COMPLETED and study.trial_counts.completed == 4
    restarted.kill()  # nothing left to keep: a graceful stop only takes longer


def test_the_cli_extends_with_a_duration_and_detaches(ext: Any, ext_server: Any, capsys: Any) -> None:
    from tuneyard.client.cli import main
    from tuneyard.client.lifecycle import parse_duration

    assert [parse_duration(v) for v in ("90", "90s", "10m", "1h30m", "1.5h", 2)] == [90, 90, 600, 5400, 5400, 2]
    study_id = create(ext, spec(1, "random"))
    evaluate_all(ext, study_id)
    address = ext_server.address
    assert main(["extend", study_id, "--trials", "1", "--duration", "10m", "--detach", "--server", address]) == 0
    assert f"study {study_id} extended: max_trials 2, max_duration 60" in capsys.readouterr().out
    budget = ext.GetStudy(pb.GetStudyRequest(study_id=study_id), timeout=30).spec.budget
    assert 600 <= budget.max_duration.ToTimedelta().total_seconds() < 610  # the time it ran, plus 10 minutes
    assert len(evaluate_all(ext, study_id)) == 1
    assert main(["extend", study_id, "--duration", "soon", "--server", address]) == 2
    assert "not a duration" in capsys.readouterr().err

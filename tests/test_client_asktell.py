"""The thin client's ask/tell SDK against a real in-process server: external studies end to end.

`Client.optimize` runs a real search (Branin, two worker threads); a function that raises fails its
trials with the traceback, `Infeasible` ends one INFEASIBLE, ASHA's STOP reaches the function as
`Pruned` and the trial ends PRUNED; `ask` / `report` / `tell` by hand show what each call returns.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tuneyard.client import Client, ExternalTrial, Infeasible, Pruned, TuneyardError
from tuneyard.v1 import service_pb2 as pb

pytestmark = pytest.mark.timeout(60)


def branin(x: float, y: float) -> float:
    """Branin-Hoo on x in [-5, 10], y in [0, 15]: minimum 0.397887 at three points."""
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (y - b * x**2 + c * x - 6) ** 2 + 10 * (1 - t) * math.cos(x) + 10


def _spec(max_trials: int, concurrent: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "name": "branin",
        "external": {},
        "search_space": [
            {"name": "x", "float_range": {"low": -5, "high": 10}},
            {"name": "y", "float_range": {"low": 0, "high": 15}},
        ],
        "objective": {"metric": "value", "mode": "MINIMIZE"},
        "budget": {"max_trials": max_trials, "max_concurrent_trials": concurrent},
        **extra,
    }


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    from tuneyard.server.app import start_server

    handle = start_server(data_dir=tmp_path_factory.mktemp("asktell"), devices="cpu", cpu_slots=1)
    with Client(handle.address) as c:
        yield c
    handle.stop()


def _trials(client: Client, study_id: str) -> dict[int, pb.Trial]:
    return {t.trial_id: t for t in client.list_trials(study_id)}


def test_optimize_minimises_branin_on_two_workers(client: Client) -> None:
    seen: list[tuple[int, str]] = []
    events: list[pb.StudyEvent] = []
    lock = threading.Lock()

    def fn(trial: ExternalTrial) -> float:
        with lock:
            seen.append((trial.trial_id, threading.current_thread().name))
        time.sleep(0.01)  # long enough that the other worker asks while this one evaluates
        return branin(trial.config["x"], trial.config["y"])

    result = client.optimize(
        _spec(12, searcher={"name": "tpe"}), fn, n_workers=2, progress=events.append, client_id="bench"
    )

    assert result.succeeded, result.study.error
    trials = _trials(client, result.study.study_id)
    assert len(trials) == 12 and sorted(t for t, _ in seen) == list(range(1, 13))
    assert {t.state for t in trials.values()} == {pb.TRIAL_COMPLETED}
    assert {t.device for t in trials.values()} == {"client:bench"}  # one holder: the optimize
    assert len({name for _, name in seen}) == 2  # both workers evaluated trials
    values = {i: branin(t.config["x"], t.config["y"]) for i, t in trials.items()}
    for i, trial in trials.items():
        assert trial.objective_value == pytest.approx(values[i])
    best = min(values, key=values.__getitem__)
    assert result.study.best_trial.trial_id == best
    assert result.best_metrics == {"value": pytest.approx(values[best])}
    assert result.best_config == {"x": trials[best].config["x"], "y": trials[best].config["y"]}
    # The same progress events `run` shows: every trial's start and end, then the study's end.
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds.count("trial_started") == 12 and kinds.count("trial_finished") == 12
    assert events[-1].study_state.state == pb.STUDY_COMPLETED


def test_optimize_tells_and_asks_in_one_call_for_every_trial_that_ended(client: Client) -> None:
    calls: list[tuple[str, int, int]] = []
    rpc = client._call

    def counted(method: str, request: Any) -> Any:
        if method in ("SuggestTrials", "CompleteTrial"):
            told = len(request.completions) if method == "SuggestTrials" else 1
            calls.append((method, getattr(request, "count", 0), told))
        return rpc(method, request)

    client._call = counted  # type: ignore[method-assign]
    try:
        result = client.optimize(_spec(20, concurrent=4), lambda t: t.config["x"] ** 2, n_workers=4, progress=False)
    finally:
        del client._call
    assert result.succeeded and len(_trials(client, result.study.study_id)) == 20
    assert {m for m, _, _ in calls} == {"SuggestTrials"}  # every end rode on an ask
    assert sum(told for _, _, told in calls) == 20 and calls[0] == ("SuggestTrials", 4, 0)
    assert len(calls) <= 21  # at most one call per trial, and fewer whenever ends arrive together
    assert all(count <= 4 for _, count, _ in calls)  # never more asked for than workers are free


def test_a_raising_function_fails_its_trials_with_the_traceback(client: Client) -> None:
    def fn(trial: ExternalTrial) -> dict[str, float]:
        if trial.trial_id % 3 == 0:
            return {"value": 1 / (trial.trial_id - trial.trial_id)}  # ZeroDivisionError
        if trial.trial_id == 4:
            raise Infeasible("x and y cannot both be chosen")
        return {"value": branin(trial.config["x"], trial.config["y"]), "x2": trial.config["x"] ** 2}

    result = client.optimize(_spec(7, concurrent=1), fn, n_workers=2, progress=False)

    trials = _trials(client, result.study.study_id)
    states = {i: t.state for i, t in trials.items()}
    assert states == {
        1: pb.TRIAL_COMPLETED,
        2: pb.TRIAL_COMPLETED,
        3: pb.TRIAL_FAILED,
        4: pb.TRIAL_INFEASIBLE,
        5: pb.TRIAL_COMPLETED,
        6: pb.TRIAL_FAILED,
        7: pb.TRIAL_COMPLETED,
    }
    for failed in (trials[3], trials[6]):
        assert "Traceback (most recent call last)" in failed.error
        assert "ZeroDivisionError: division by zero" in failed.error and "in fn" in failed.error
    assert "x and y cannot both be chosen" in trials[4].error
    assert dict(trials[5].final_metrics) == {
        "value": pytest.approx(branin(**_xy(trials[5]))),
        "x2": pytest.approx(trials[5].config["x"] ** 2),
    }
    assert result.best_metrics["value"] == min(trials[i].objective_value for i in (1, 2, 5, 7))


def _xy(trial: pb.Trial) -> dict[str, float]:
    return {"x": trial.config["x"], "y": trial.config["y"]}


def test_asha_stop_raises_pruned_inside_the_function_and_ends_the_trial_pruned(client: Client) -> None:
    caught: dict[int, int] = {}  # trial id -> the step whose report raised Pruned

    def fn(trial: ExternalTrial) -> None:
        bad = trial.config["x"] > 2.5  # a curve that stays high: ASHA stops it at a rung
        for step in range(1, 9):
            value = 50.0 + step if bad else branin(**trial.config) / 10 / step  # bad: above 50, good: below 31
            try:
                trial.report(step, value)
            except Pruned:
                caught[trial.trial_id] = step
                raise
        return None  # the last report stands

    spec = _spec(
        10, concurrent=1, training={"epochs": 8}, early_stopping={"name": "asha", "options": {"grace_period": 1}}
    )
    result = client.optimize(spec, fn, n_workers=2, progress=False)

    assert result.succeeded, result.study.error
    trials = _trials(client, result.study.study_id)
    pruned = {i for i, t in trials.items() if t.state == pb.TRIAL_PRUNED}
    assert pruned and pruned == set(caught), (pruned, caught)
    for i, trial in trials.items():
        steps = caught.get(i, 8)
        assert trial.epochs_completed == steps and len(trial.metrics) == steps
        if i not in caught:
            assert trial.state == pb.TRIAL_COMPLETED
    assert result.study.trial_counts.pruned == len(pruned)


def test_ask_report_tell_by_hand(client: Client) -> None:
    spec = _spec(3, concurrent=2, training={"epochs": 4})
    spec["search_space"].append({"name": "k", "int_range": {"low": 1, "high": 4}})
    study = client.create_study(spec)

    first = client.ask(study.study_id, count=3, client_id="laptop")
    assert len(first) == 2 and not first.study_done  # two concurrency slots
    assert isinstance(first[0].config["k"], int) and set(first[0].config) == {"x", "y", "k"}
    assert not client.ask(study.study_id, client_id="laptop")  # both slots taken, not done either

    a, b = first
    assert client.report(study.study_id, a.trial_id, 1, 3.5) is True
    a.report(2, {"value": 2.5, "loss": 0.1})
    done = client.tell(study.study_id, a.trial_id, 2.0)
    assert done.state == pb.TRIAL_COMPLETED and done.objective_value == 2.0 and done.device == "client:laptop"
    assert client.tell(study.study_id, a.trial_id, 2.0) == done  # the same call again: the same trial

    failed = client.tell(study.study_id, b.trial_id, state="FAILED", error="out of memory")
    assert failed.state == pb.TRIAL_FAILED and "out of memory" in failed.error
    with pytest.raises(TuneyardError):
        client.tell(study.study_id, b.trial_id, state="PRUNED")

    (last,) = client.ask(study.study_id)
    last.report(1, 7.0)
    assert client.tell(study.study_id, last.trial_id).final_metrics["value"] == 7.0  # no metrics: the last report
    end = client.ask(study.study_id)
    assert not end and end.study_done
    assert client.wait(study.study_id).best_metrics == {"value": 2.0}


def test_optimize_refuses_a_spec_without_external(client: Client) -> None:
    before = len(list(client.list_studies()))
    spec = _spec(2)
    del spec["external"]
    with pytest.raises(ValueError, match="external"):
        client.optimize(spec, lambda trial: 0.0)
    assert len(list(client.list_studies())) == before


def test_a_number_needs_a_single_objective(client: Client) -> None:
    spec = _spec(1)
    del spec["objective"]
    spec["objectives"] = [{"metric": "value", "mode": "MINIMIZE"}, {"metric": "cost", "mode": "MINIMIZE"}]
    study = client.create_study(spec)
    (trial,) = client.ask(study.study_id)
    with pytest.raises(ValueError, match="2 objectives"):
        trial.report(1, 1.0)
    assert client.tell(study.study_id, trial.trial_id, {"value": 1.0, "cost": 3.0}).state == pb.TRIAL_COMPLETED


def test_a_refused_call_stops_the_workers_and_is_raised(client: Client) -> None:
    calls: list[int] = []

    def fn(trial: ExternalTrial) -> float:
        calls.append(trial.trial_id)
        return math.nan  # the server refuses a metric that is not finite

    with pytest.raises(TuneyardError) as err:
        client.optimize(_spec(6, concurrent=1, name="refused"), fn, n_workers=2, progress=False)
    assert err.value.code.name == "INVALID_ARGUMENT" and "finite" in err.value.details
    assert calls == [1]  # the other worker asked for no more
    (study,) = [s for s in client.list_studies() if s.spec.name == "refused"]
    assert study.state == pb.STUDY_RUNNING  # left on the server, as after `run`
    assert client.cancel_study(study.study_id).state == pb.STUDY_CANCELLED


def test_a_study_cancelled_meanwhile_ends_optimize_without_an_error(client: Client) -> None:
    stopped: list[int] = []

    def fn(trial: ExternalTrial) -> float:
        if trial.trial_id == 2:
            client.cancel_study(trial.study_id)
        try:
            trial.report(1, 1.0)
        except Pruned:
            stopped.append(trial.trial_id)
            raise
        return 1.0

    result = client.optimize(_spec(8, concurrent=1, training={"epochs": 2}), fn, n_workers=2, progress=False)

    assert result.study.state == pb.STUDY_CANCELLED and not result.succeeded
    assert stopped == [2]
    states = [t.state for t in client.list_trials(result.study.study_id)]
    assert states == [pb.TRIAL_COMPLETED, pb.TRIAL_CANCELLED]

"""Studies whose clients evaluate the trials (spec.external): SuggestTrials, ReportTrial, CompleteTrial
over real gRPC on a loopback port, from plain stubs, as any language's client would call them."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from support import watch_all

from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc, spec_pb2


def branin(x: float, y: float) -> float:
    a, b, c, r, s, t = 1.0, 5.1 / (4 * math.pi**2), 5 / math.pi, 6.0, 10.0, 1 / (8 * math.pi)
    return a * (y - b * x**2 + c * x - r) ** 2 + s * (1 - t) * math.cos(x) + s


def external_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "branin",
        "external": {},
        "search_space": [
            {"name": "x", "float_range": {"low": -5.0, "high": 10.0}},
            {"name": "y", "float_range": {"low": 0.0, "high": 15.0}},
        ],
        "searcher": {"name": "random"},
        "objective": {"metric": "value", "mode": "MINIMIZE"},
        "budget": {"max_trials": 6, "max_concurrent_trials": 2},
    }
    spec.update(overrides)
    return spec


@pytest.fixture(scope="module")
def ext(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tuneyard.server.app import start_server

    handle = start_server(data_dir=tmp_path_factory.mktemp("external-data"), devices="cpu", cpu_slots=1)
    with grpc.insecure_channel(handle.address) as channel:
        yield service_pb2_grpc.TrainingServiceStub(channel)
    handle.stop()


def create(stub: Any, spec: dict[str, Any]) -> str:
    return stub.CreateStudy(pb.CreateStudyRequest(spec=json_format.ParseDict(spec, spec_pb2.StudySpec()))).study_id


def suggest(stub: Any, study_id: str, count: int = 1, client: str = "tester") -> pb.SuggestTrialsResponse:
    return stub.SuggestTrials(pb.SuggestTrialsRequest(study_id=study_id, count=count, client_id=client), timeout=30)


def report(stub: Any, study_id: str, trial_id: int, step: int, **metrics: float) -> int:
    request = pb.ReportTrialRequest(study_id=study_id, trial_id=trial_id, step=step, metrics=metrics)
    return stub.ReportTrial(request, timeout=30).decision


def complete(
    stub: Any, study_id: str, trial_id: int, state: int = pb.TRIAL_COMPLETED, error: str = "", **metrics: float
) -> pb.Trial:
    request = pb.CompleteTrialRequest(study_id=study_id, trial_id=trial_id, state=state, metrics=metrics, error=error)
    return stub.CompleteTrial(request, timeout=30)


def config(trial: pb.Trial) -> dict[str, Any]:
    return json_format.MessageToDict(trial.config)


def code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.details(), err.value.code()
    return err.value.code()


def test_clients_evaluate_a_whole_study_and_the_server_keeps_everything(ext: Any) -> None:
    study_id = create(ext, external_spec())
    values = {}
    while True:
        response = suggest(ext, study_id, count=2)
        if not response.trials:
            assert response.study_done
            break
        for trial in response.trials:
            assert trial.state == pb.TRIAL_RUNNING and trial.device == "client:tester"
            value = branin(config(trial)["x"], config(trial)["y"])
            assert report(ext, study_id, trial.trial_id, 1, value=value + 1.0, other=2.0) == pb.CONTINUE
            done = complete(ext, study_id, trial.trial_id, value=value)
            assert done.state == pb.TRIAL_COMPLETED and done.objective_value == value
            values[trial.trial_id] = value
    events = watch_all(ext, study_id)
    assert events[-1].study_state.state == pb.STUDY_COMPLETED
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds.count("trial_started") == kinds.count("trial_finished") == kinds.count("trial_progress") == 6
    study = ext.GetStudy(pb.GetStudyRequest(study_id=study_id))
    assert sorted(values) == [1, 2, 3, 4, 5, 6]
    assert study.best_trial.objective_value == min(values.values())
    assert dict(study.test_metrics) == {}
    history = ext.GetTrial(pb.GetTrialRequest(study_id=study_id, trial_id=1)).metrics
    assert [(m.epoch, dict(m.values)) for m in history] == [(1, {"value": values[1] + 1.0, "other": 2.0})]


def test_the_concurrency_budget_and_the_trial_budget_bound_what_is_handed_out(ext: Any) -> None:
    study_id = create(ext, external_spec(budget={"max_trials": 3, "max_concurrent_trials": 2}))
    first = suggest(ext, study_id, count=5)
    assert len(first.trials) == 2 and not first.study_done
    assert not suggest(ext, study_id).trials  # both slots held
    complete(ext, study_id, first.trials[0].trial_id, value=1.0)
    (third,) = suggest(ext, study_id, count=5, client="other").trials
    assert third.trial_id == 3 and third.device == "client:other"
    assert not suggest(ext, study_id).trials  # the budget is spent
    for trial in (first.trials[1], third):
        complete(ext, study_id, trial.trial_id, value=2.0)
    last = suggest(ext, study_id)
    assert not last.trials and last.study_done
    assert ext.GetStudy(pb.GetStudyRequest(study_id=study_id)).state == pb.STUDY_COMPLETED


def test_a_lease_that_runs_out_fails_the_trial_and_a_retry_hands_its_config_out_again(ext: Any) -> None:
    spec = external_spec(external={"lease": "0.6s"}, budget={"max_trials": 1, "trial_retries": 1})
    study_id = create(ext, spec)
    (trial,) = suggest(ext, study_id).trials
    time.sleep(1.2)
    (again,) = suggest(ext, study_id, client="rescuer").trials  # the retry: the same trial, the same config
    assert (again.trial_id, config(again), again.retries, again.device) == (
        trial.trial_id,
        config(trial),
        1,
        "client:rescuer",
    )
    late = pb.ReportTrialRequest(study_id=study_id, trial_id=trial.trial_id, step=1, metrics={"value": 1.0})
    late.client_id = "tester"  # the first holder, whose lease ran out
    assert code(lambda: ext.ReportTrial(late)) == grpc.StatusCode.FAILED_PRECONDITION
    ending = pb.CompleteTrialRequest(study_id=study_id, trial_id=trial.trial_id, state=pb.TRIAL_COMPLETED)
    ending.client_id = "tester"
    assert code(lambda: ext.CompleteTrial(ending)) == grpc.StatusCode.FAILED_PRECONDITION
    time.sleep(1.2)
    assert suggest(ext, study_id).study_done  # no retry left: the trial ended
    ended = ext.GetTrial(pb.GetTrialRequest(study_id=study_id, trial_id=trial.trial_id))
    assert (ended.state, ended.failure_reason, ended.retries) == (pb.TRIAL_FAILED, "timeout", 1)
    assert "client 'rescuer'" in ended.error and "ran out" in ended.error
    assert ext.GetStudy(pb.GetStudyRequest(study_id=study_id)).state == pb.STUDY_FAILED


def test_reports_renew_the_lease(ext: Any) -> None:
    study_id = create(ext, external_spec(external={"lease": "1s"}, training={"epochs": 10}, budget={"max_trials": 1}))
    (trial,) = suggest(ext, study_id).trials
    for step in range(1, 6):
        time.sleep(0.5)
        assert report(ext, study_id, trial.trial_id, step, value=float(step)) == pb.CONTINUE
    assert complete(ext, study_id, trial.trial_id).state == pb.TRIAL_COMPLETED  # the last report's metrics
    assert ext.GetTrial(pb.GetTrialRequest(study_id=study_id, trial_id=trial.trial_id)).final_metrics["value"] == 5.0


def test_asha_answers_stop_through_report_trial_and_the_trial_ends_pruned(ext: Any) -> None:
    spec = external_spec(
        search_space=[{"name": "x", "choice": {"values": [0.0, 5.0, 1.0]}}],
        searcher={"name": "grid"},
        training={"epochs": 4},
        early_stopping={"name": "asha", "options": {"grace_period": 1, "reduction_factor": 2}},
        budget={"max_trials": 3, "max_concurrent_trials": 1},
    )
    study_id = create(ext, spec)
    decisions = {}
    while (response := suggest(ext, study_id)).trials:
        (trial,) = response.trials
        x = config(trial)["x"]
        for step in range(1, 5):
            decision = report(ext, study_id, trial.trial_id, step, value=x + 1.0 / step)
            if decision == pb.STOP:
                break
        decisions[x] = (step, decision)
        complete(ext, study_id, trial.trial_id)
    assert decisions[0.0] == (4, pb.CONTINUE)
    assert decisions[5.0] == (1, pb.STOP)  # worse than the best at the first rung
    trials = {config(t)["x"]: t for t in ext.ListTrials(pb.ListTrialsRequest(study_id=study_id)).trials}
    assert trials[5.0].state == pb.TRIAL_PRUNED and trials[5.0].epochs_completed == 1
    assert trials[0.0].state == pb.TRIAL_COMPLETED


def test_cancel_ends_the_running_trials_and_clients_hear_stop(ext: Any) -> None:
    study_id = create(ext, external_spec(budget={"max_trials": 4, "max_concurrent_trials": 2}))
    held = suggest(ext, study_id, count=2).trials
    report(ext, study_id, held[0].trial_id, 1, value=3.0)
    assert ext.CancelStudy(pb.CancelStudyRequest(study_id=study_id)).state == pb.STUDY_CANCELLED
    assert report(ext, study_id, held[0].trial_id, 2, value=2.0) == pb.STOP
    assert suggest(ext, study_id).study_done and not suggest(ext, study_id).trials
    late = complete(ext, study_id, held[1].trial_id, value=1.0)  # a client finishing after the cancel
    assert late.state == pb.TRIAL_CANCELLED
    kept = ext.GetTrial(pb.GetTrialRequest(study_id=study_id, trial_id=held[0].trial_id))
    assert kept.state == pb.TRIAL_CANCELLED and kept.final_metrics["value"] == 3.0


def test_a_deadline_answers_stop_and_keeps_what_was_reported(ext: Any) -> None:
    study_id = create(ext, external_spec(training={"epochs": 50}, budget={"max_trials": 3, "max_duration": "1s"}))
    (trial,) = suggest(ext, study_id).trials
    assert report(ext, study_id, trial.trial_id, 1, value=4.0) == pb.CONTINUE
    time.sleep(1.5)
    assert report(ext, study_id, trial.trial_id, 2, value=3.0) == pb.STOP
    assert not suggest(ext, study_id).trials
    assert complete(ext, study_id, trial.trial_id).state == pb.TRIAL_COMPLETED
    assert ext.GetStudy(pb.GetStudyRequest(study_id=study_id)).state == pb.STUDY_COMPLETED


def test_several_objectives_keep_a_pareto_front(ext: Any) -> None:
    both = [{"metric": "a", "mode": "MINIMIZE"}, {"metric": "b", "mode": "MINIMIZE"}]
    spec = external_spec(objectives=both, budget={"max_trials": 3, "max_concurrent_trials": 3})
    del spec["objective"]
    study_id = create(ext, spec)
    trials = suggest(ext, study_id, count=3).trials
    for trial, (a, b) in zip(trials, [(1.0, 3.0), (3.0, 1.0), (4.0, 4.0)], strict=True):
        complete(ext, study_id, trial.trial_id, a=a, b=b)
    study = ext.GetStudy(pb.GetStudyRequest(study_id=study_id))
    assert study.state == pb.STUDY_COMPLETED
    assert sorted(t.trial_id for t in study.pareto_front) == [trials[0].trial_id, trials[1].trial_id]


def test_hostile_calls_get_clear_codes_and_harm_nothing(ext: Any) -> None:
    study_id = create(ext, external_spec(training={"epochs": 5}, budget={"max_trials": 5, "max_concurrent_trials": 5}))
    other_id = create(ext, external_spec(budget={"max_trials": 5}))
    (trial,) = suggest(ext, study_id).trials
    tid = trial.trial_id
    invalid, missing, wrong = (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert code(lambda: suggest(ext, "st-nope")) == missing
    assert code(lambda: suggest(ext, "")) == invalid
    for count in (0, -1, 10**6):
        assert code(lambda count=count: suggest(ext, study_id, count=count)) == invalid
    assert code(lambda: suggest(ext, study_id, client="x" * 500)) == invalid
    assert code(lambda: report(ext, study_id, 99, 1, value=1.0)) == missing
    assert code(lambda: report(ext, other_id, tid, 1, value=1.0)) == missing  # a trial of another study
    assert code(lambda: report(ext, study_id, 0, 1, value=1.0)) == invalid
    for bad in (math.nan, math.inf, -math.inf):
        assert code(lambda bad=bad: report(ext, study_id, tid, 1, value=bad)) == invalid
        assert code(lambda bad=bad: complete(ext, study_id, tid, value=bad)) == invalid
    for step in (0, -3, 6):
        assert code(lambda step=step: report(ext, study_id, tid, step, value=1.0)) == invalid
    assert report(ext, study_id, tid, 3, value=1.0) == pb.CONTINUE
    assert report(ext, study_id, tid, 3, value=1.0) == pb.CONTINUE  # the same step again: a retry
    assert code(lambda: report(ext, study_id, tid, 2, value=1.0)) == invalid  # steps going backwards
    for state in (pb.TRIAL_STATE_UNSPECIFIED, pb.TRIAL_RUNNING, pb.TRIAL_PRUNED, 42):
        assert code(lambda state=state: complete(ext, study_id, tid, state=state, value=1.0)) == invalid
    assert code(lambda: complete(ext, study_id, tid, other=1.0)) == invalid  # no objective
    assert code(lambda: complete(ext, study_id, tid, error="e" * 70_000, state=pb.TRIAL_FAILED)) == invalid
    first = complete(ext, study_id, tid, value=0.5)
    assert complete(ext, study_id, tid, value=0.5) == first  # the same call again: the same trial
    assert code(lambda: complete(ext, study_id, tid, value=0.7)) == wrong
    assert code(lambda: complete(ext, study_id, tid, state=pb.TRIAL_FAILED, error="boom")) == wrong
    assert code(lambda: report(ext, study_id, tid, 4, value=1.0)) == wrong
    from support import tiny_spec, to_proto

    builtin = ext.CreateStudy(pb.CreateStudyRequest(spec=to_proto(tiny_spec(budget={"max_trials": 1})))).study_id
    assert code(lambda: suggest(ext, builtin)) == wrong
    watch_all(ext, builtin)
    stored = ext.GetTrial(pb.GetTrialRequest(study_id=study_id, trial_id=tid))
    assert stored.state == pb.TRIAL_COMPLETED and stored.objective_value == 0.5
    assert [m.epoch for m in stored.metrics] == [3]


def test_suggest_tells_its_completions_first_in_one_round_trip(ext: Any) -> None:
    study_id = create(ext, external_spec(budget={"max_trials": 3, "max_concurrent_trials": 1}))
    (first,) = suggest(ext, study_id).trials
    told = pb.CompleteTrialRequest(trial_id=first.trial_id, state=pb.TRIAL_COMPLETED, metrics={"value": 3.0})
    request = pb.SuggestTrialsRequest(study_id=study_id, count=1, client_id="tester", completions=[told])
    response = ext.SuggestTrials(request, timeout=30)
    (ended,) = response.completed
    assert ended.trial_id == 1 and ended.state == pb.TRIAL_COMPLETED and ended.objective_value == 3.0
    (second,) = response.trials  # the one slot was freed by the completion before suggesting
    assert second.trial_id == 2 and not response.study_done
    again = ext.SuggestTrials(request, timeout=30)  # a retry: the completion repeats, a new trial is leased
    assert list(again.completed) == [ended] and not again.trials  # the slot is second's
    invalid, wrong = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION

    def tell(*completions: pb.CompleteTrialRequest) -> Any:
        return lambda: ext.SuggestTrials(
            pb.SuggestTrialsRequest(study_id=study_id, count=1, completions=completions), timeout=30
        )

    def ending(**fields: Any) -> pb.CompleteTrialRequest:
        return pb.CompleteTrialRequest(**{"trial_id": 2, "state": pb.TRIAL_COMPLETED, **fields})

    for bad, path in [
        (ending(metrics={"value": math.nan}), "completions[1].metrics.value"),
        (ending(study_id="st-other"), "completions[1].study_id"),
        (ending(state=pb.TRIAL_PRUNED, metrics={"value": 1.0}), "completions[1].state"),
        (ending(trial_id=0, metrics={"value": 1.0}), "completions[1].trial_id"),
        (ending(metrics={"other": 1.0}), "completions[1].metrics"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            tell(told, bad)()
        assert err.value.code() == invalid and err.value.details().startswith(path + ":"), err.value.details()
    assert code(tell(ending(metrics={"value": 9.0}), ending(metrics={"value": 8.0}))) == wrong  # ended otherwise
    assert code(tell(*[told] * 101)) == invalid
    stored = ext.GetTrial(pb.GetTrialRequest(study_id=study_id, trial_id=2))
    assert stored.state == pb.TRIAL_COMPLETED and stored.objective_value == 9.0  # the first told stands
    (third,) = suggest(ext, study_id).trials
    last = tell(ending(trial_id=third.trial_id, metrics={"value": 1.0}))()
    assert not last.trials and last.study_done and last.completed[0].trial_id == 3
    assert ext.GetStudy(pb.GetStudyRequest(study_id=study_id)).state == pb.STUDY_COMPLETED


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"dataset": {"name": "digits"}}, "spec.dataset"),
        ({"trainable": {"name": "bowl"}}, "spec.trainable"),
        ({"external": {"lease": "-5s"}}, "spec.external.lease"),
        ({"training": {"batch_size": 8}}, "spec.training.batch_size"),
        ({"resources": {"gpus_per_trial": 1}}, "spec.resources"),
        ({"objective": {"metric": "score"}}, "spec.objective.mode"),
        ({"search_space": [{"name": "two words", "choice": {"values": [1]}}]}, "spec.search_space[0].name"),
    ],
)
def test_a_bad_external_spec_is_refused_with_its_field(ext: Any, change: dict, path: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        create(ext, external_spec(**change))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(path), err.value.details()


def test_the_server_killed_mid_study_resumes_while_clients_keep_going(server_process: Any, tmp_path: Any) -> None:
    """kill -9 of the server with trials leased: the restarted server leases them to their clients
    again, the clients go on reporting and completing, and the study ends with exactly max_trials.

    A kill between a handout's commit and its response leaves a trial leased to a client that never
    heard of it (about 1 run in 20 under load): its lease runs out and the retry hands its
    configuration out again, so the lease is short and one retry allowed."""
    data = tmp_path / "data"
    server = [server_process(data)]
    budget = {"max_trials": 12, "max_concurrent_trials": 2, "trial_retries": 1}
    spec = external_spec(external={"lease": "3s"}, budget=budget)
    study_id = create(server[0].stub(), spec)
    done = threading.Event()
    finished: list[int] = []

    def call(fn: Any) -> Any:
        while True:
            try:
                return fn(server[-1].stub())
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                time.sleep(0.1)

    def client(name: str) -> None:
        while not done.is_set():
            response = call(lambda stub: suggest(stub, study_id, client=name))
            if not response.trials:
                if response.study_done:
                    return
                time.sleep(0.05)
                continue
            (trial,) = response.trials
            finished.append(evaluate(trial.trial_id, branin(config(trial)["x"], config(trial)["y"])))

    def evaluate(trial_id: int, value: float) -> int:
        for step in (1, 2):
            time.sleep(0.1)
            call(lambda stub, step=step: report(stub, study_id, trial_id, step, value=value + 1 / step))
        return call(lambda stub: complete(stub, study_id, trial_id, value=value)).trial_id

    threads = [threading.Thread(target=client, args=(f"c{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    while len(finished) < 4:
        time.sleep(0.02)
    server[0].kill()
    server.append(server_process(data))
    for thread in threads:
        thread.join(120)
    done.set()
    stub = server[-1].stub()
    assert watch_all(stub, study_id)[-1].study_state.state == pb.STUDY_COMPLETED
    trials = list(stub.ListTrials(pb.ListTrialsRequest(study_id=study_id)).trials)
    assert len(trials) == 12 and all(t.state == pb.TRIAL_COMPLETED for t in trials)
    assert sorted(finished) == list(range(1, 13))
    assert all(
        [m.epoch for m in stub.GetTrial(pb.GetTrialRequest(study_id=study_id, trial_id=t.trial_id)).metrics] == [1, 2]
        for t in trials
    )

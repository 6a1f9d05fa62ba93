"""The study runner's small pieces, each on its own: how a trial's end is written down and what the study
has found (`results`), the early stopper's ledger (`stopping`), and the board that stops and polices the
running tasks (`trial_runs`). Plans come from the real `SpecValidator`."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import pytest
from support import tiny_spec
from test_gang import SETTINGS, FakeWorker

from tuneyard.plugins.api import Decision, Objective
from tuneyard.plugins.builtin.early_stoppers import MedianStoppingRule
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.execution.devices import Device
from tuneyard.server.execution.messages import TrainTask
from tuneyard.server.execution.scheduler import Allocation
from tuneyard.server.study import trial_runs
from tuneyard.server.study.domain import StudyState, TrialRecord, TrialState
from tuneyard.server.study.outcomes import Ending
from tuneyard.server.study.results import Results, StudyEnd, study_end, trial_end
from tuneyard.server.study.spec import SpecValidator, StudyPlan
from tuneyard.server.study.stopping import StopperLedger
from tuneyard.server.study.trial_runs import STOP_GRACE_S, TEST, EvaluationRun, TaskBoard, TrialRun

CONTINUE, STOP = Decision.CONTINUE, Decision.STOP
ACCURACY = {"metric": "val_accuracy", "mode": "MAXIMIZE"}
LOSS = {"metric": "val_loss", "mode": "MINIMIZE"}


@pytest.fixture(scope="module")
def validator() -> SpecValidator:
    return SpecValidator(PluginRegistry.load(entry_points=False))


@pytest.fixture(scope="module")
def plan(validator: SpecValidator) -> StudyPlan:
    return validator.validate(tiny_spec(budget={"max_trials": 4, "max_failures": 1}))


@pytest.fixture(scope="module")
def two_objectives(validator: SpecValidator) -> StudyPlan:
    spec = tiny_spec(objectives=[ACCURACY, LOSS])
    del spec["objective"]
    return validator.validate(spec)


def trial(trial_id: int, value: float | None, state: TrialState = TrialState.COMPLETED, **kw: Any) -> TrialRecord:
    return TrialRecord("s", trial_id, state, {}, objective_value=value, **kw)


# ---- results.trial_end ----


def test_a_done_trial_is_stored_with_its_objective_value(plan: StudyPlan) -> None:
    before = time.time()
    ending = Ending("done", result={"final_metrics": {"val_accuracy": 0.9, "val_loss": 0.3}})
    end = trial_end(ending, TrialState.COMPLETED, plan)
    assert (end.state, end.objective_value, end.objective_values, end.error) == (TrialState.COMPLETED, 0.9, [], "")
    assert before <= end.end_time <= time.time()
    end = trial_end(Ending("done", result={"final_metrics": {}}), TrialState.CANCELLED, plan)
    assert (end.state, end.objective_value) == (TrialState.CANCELLED, None)  # stopped before its first epoch


def test_a_done_trial_of_several_objectives_stores_every_value_in_their_order(two_objectives: StudyPlan) -> None:
    ending = Ending("done", result={"final_metrics": {"val_loss": 0.3, "val_accuracy": 0.9}})
    end = trial_end(ending, TrialState.COMPLETED, two_objectives)
    assert (end.objective_value, end.objective_values) == (0.9, [0.9, 0.3])


def test_an_infeasible_trial_stores_why_and_no_failure_forensics(plan: StudyPlan) -> None:
    end = trial_end(Ending("infeasible", error="too big", reason="x"), TrialState.INFEASIBLE, plan)
    assert (end.error, end.failure_reason, end.exit_code) == ("too big", "", None)


def test_a_crashed_trial_stores_its_forensics(plan: StudyPlan) -> None:
    ending = Ending("crashed", error="died", reason="crash", exit_code=-9, exit_signal="SIGKILL", stderr_tail="t")
    end = trial_end(ending, TrialState.FAILED, plan)
    assert (end.state, end.error, end.failure_reason) == (TrialState.FAILED, "died", "crash")
    assert (end.exit_code, end.exit_signal, end.stderr_tail, end.objective_value) == (-9, "SIGKILL", "t", None)


# ---- results.Results ----


def test_the_first_completed_trial_is_the_best_and_only_a_strictly_better_one_takes_over(plan: StudyPlan) -> None:
    results = Results(plan)
    assert results.take_if_best(trial(1, 0.5))
    assert not results.take_if_best(trial(2, 0.5))
    assert not results.take_if_best(trial(3, 0.4))
    assert results.take_if_best(trial(4, 0.6))
    assert results.best is not None and results.best.trial_id == 4


def test_better_follows_the_objectives_mode(validator: SpecValidator) -> None:
    results = Results(validator.validate(tiny_spec(objective=LOSS)))
    results.take_if_best(trial(1, 0.5))
    assert not results.take_if_best(trial(2, 0.6)) and results.take_if_best(trial(3, 0.4))


@pytest.mark.parametrize(
    ("state", "value"),
    [(TrialState.FAILED, 0.9), (TrialState.PRUNED, 0.9), (TrialState.CANCELLED, 0.9), (TrialState.COMPLETED, None)],
)
def test_a_trial_that_did_not_complete_with_a_value_is_never_the_best(
    plan: StudyPlan, state: TrialState, value: float | None
) -> None:
    results = Results(plan)
    assert not results.take_if_best(trial(1, value, state)) and results.best is None


def test_a_single_objective_study_has_no_front(plan: StudyPlan) -> None:
    results = Results(plan)
    assert not results.offer_to_front(trial(1, 0.9, objective_values=[0.9])) and results.front == []


def test_the_front_keeps_the_completed_trials_nobody_dominates(two_objectives: StudyPlan) -> None:
    results = Results(two_objectives)
    assert results.offer_to_front(trial(1, 0.9, objective_values=[0.9, 0.5]))
    assert results.offer_to_front(trial(2, 0.8, objective_values=[0.8, 0.2]))
    results.offer_to_front(trial(3, 0.7, objective_values=[0.7, 0.6]))  # dominated by both
    assert results.front == [(1, [0.9, 0.5]), (2, [0.8, 0.2])]
    assert results.offer_to_front(trial(4, 0.95, objective_values=[0.95, 0.1]))  # dominates both
    assert results.front == [(4, [0.95, 0.1])]


def test_an_unfinished_or_short_trial_never_joins_the_front(two_objectives: StudyPlan) -> None:
    results = Results(two_objectives)
    assert not results.offer_to_front(trial(1, 0.9, TrialState.PRUNED, objective_values=[0.9, 0.1]))
    assert not results.offer_to_front(trial(2, 0.9, objective_values=[0.9]))
    assert results.front == []


# ---- results.study_end ----


def finished(plan: StudyPlan, *, failures: int = 0, best: bool = True) -> Results:
    results = Results(plan)
    results.failures = failures
    if best:
        results.take_if_best(trial(1, 0.9))
    return results


def evaluation(error: str = "", metrics: dict[str, float] | None = None) -> EvaluationRun:
    return EvaluationRun(trial_id=1, error=error, test_metrics=metrics)


DONE = evaluation(metrics={"test_accuracy": 0.8})
COMPLETED = StudyEnd(StudyState.COMPLETED, test_metrics={"test_accuracy": 0.8})
FAILED = StudyState.FAILED


@pytest.mark.parametrize(
    ("cancelled", "failures", "best", "run", "expected"),
    [
        pytest.param(True, 5, False, evaluation("boom"), StudyEnd(StudyState.CANCELLED), id="cancelled-whatever-else"),
        pytest.param(False, 2, True, DONE, StudyEnd(FAILED, "2 trials failed (budget.max_failures is 1)"), id="failed"),
        pytest.param(False, 1, True, DONE, COMPLETED, id="failures-at-the-budget-still-complete"),
        pytest.param(False, 1, False, DONE, StudyEnd(FAILED, "no trial completed (1 failed)"), id="no-best"),
        pytest.param(False, 0, True, evaluation("CUDA error"), StudyEnd(FAILED, "CUDA error"), id="evaluation-failed"),
        pytest.param(False, 0, True, DONE, COMPLETED, id="evaluation-done"),
        pytest.param(False, 0, True, evaluation(), None, id="evaluation-not-ended"),
        pytest.param(False, 0, True, None, None, id="evaluation-not-started"),
    ],
)
def test_study_end(
    plan: StudyPlan, cancelled: bool, failures: int, best: bool, run: EvaluationRun | None, expected: StudyEnd | None
) -> None:
    results = finished(plan, failures=failures, best=best)
    assert study_end(cancelled=cancelled, results=results, evaluation=run) == expected


def test_no_max_failures_means_any_number_may_fail(validator: SpecValidator) -> None:
    results = finished(validator.validate(tiny_spec()), failures=50)
    end = study_end(cancelled=False, results=results, evaluation=DONE)
    assert end is not None and end.state == StudyState.COMPLETED


# ---- stopping.StopperLedger ----


class ScriptedStopper:
    """An early stopper that records what it was told and says STOP at `stop_at`."""

    def __init__(self, stop_at: int = 0, state: Any = None) -> None:
        self.stop_at, self._state = stop_at, state if state is not None else {"seen": 0}
        self.reports: list[tuple[int, int, float]] = []
        self.completed: list[tuple[int, float | None]] = []

    def report(self, trial_id: int, step: int, value: float) -> Decision:
        self.reports.append((trial_id, step, value))
        return Decision.STOP if step == self.stop_at else Decision.CONTINUE

    def complete(self, trial_id: int, value: float | None) -> None:
        self.completed.append((trial_id, value))

    def state_dict(self) -> Any:
        return self._state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = state


OBJECTIVE = Objective("val_accuracy")


def test_each_epoch_is_told_to_the_stopper_once() -> None:
    stopper = ScriptedStopper()
    ledger = StopperLedger(stopper, OBJECTIVE)
    for epoch in (1, 1, 2, 1, 2, 3):
        ledger.tell(7, epoch, {"val_accuracy": epoch / 10})
    ledger.tell(8, 1, {"val_accuracy": 0.5})
    assert stopper.reports == [(7, 1, 0.1), (7, 2, 0.2), (7, 3, 0.3), (8, 1, 0.5)]
    assert ledger.reported == {7: 3, 8: 1}


def test_a_stop_verdict_is_true() -> None:
    ledger = StopperLedger(ScriptedStopper(stop_at=2), OBJECTIVE)
    assert [ledger.tell(1, epoch, {"val_accuracy": 0.1}) for epoch in (1, 2, 3)] == [CONTINUE, STOP, CONTINUE]


def test_an_epoch_without_the_objective_metric_is_not_told() -> None:
    stopper = ScriptedStopper(stop_at=1)
    ledger = StopperLedger(stopper, OBJECTIVE)
    assert ledger.tell(1, 1, {"val_loss": 0.1}) == CONTINUE and stopper.reports == [] and ledger.reported == {}


def test_without_a_stopper_nothing_stops_and_nothing_is_journaled() -> None:
    ledger = StopperLedger(None, OBJECTIVE)
    assert ledger.tell(1, 1, {"val_accuracy": 0.1}) == CONTINUE
    ledger.complete(1, 0.1)
    ledger.restore({"state": {}, "reported": {"1": 2}})
    assert ledger.state() is None and ledger.reported == {}


def test_complete_forgets_the_trial_and_tells_the_stopper() -> None:
    stopper = ScriptedStopper()
    ledger = StopperLedger(stopper, OBJECTIVE)
    ledger.tell(1, 1, {"val_accuracy": 0.1})
    ledger.complete(1, 0.4)
    assert ledger.reported == {} and stopper.completed == [(1, 0.4)]


def test_state_and_restore_round_trip_through_json() -> None:
    objective = Objective("val_accuracy")
    ledger = StopperLedger(MedianStoppingRule(objective, min_samples=1), objective)
    for trial_id, epoch, value in [(1, 1, 0.5), (1, 2, 0.6), (2, 1, 0.4)]:
        ledger.tell(trial_id, epoch, {"val_accuracy": value})
    journaled = json.loads(json.dumps(ledger.state()))
    again = StopperLedger(MedianStoppingRule(objective, min_samples=1), objective)
    again.restore(journaled)  # the journal's JSON keys trial ids as text
    assert again.reported == {1: 2, 2: 1}
    again_state = again.state()
    assert again_state is not None and again_state["state"] == journaled["state"]
    assert again.stopper.report(2, 2, 0.1) == ledger.stopper.report(2, 2, 0.1) == Decision.STOP


def test_a_stopper_state_that_is_not_json_is_none_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    ledger = StopperLedger(ScriptedStopper(state={"when": object()}), OBJECTIVE)
    ledger.tell(3, 1, {"val_accuracy": 0.1})
    with caplog.at_level(logging.WARNING, logger="tuneyard.server.study.stopping"):
        state = ledger.state()
    assert state == {"state": None, "reported": {3: 1}}
    assert "early stopper's state_dict is not plain data" in caplog.text
    fresh = StopperLedger(ScriptedStopper(), OBJECTIVE)
    fresh.restore(json.loads(json.dumps(state)))
    assert fresh.reported == {}


# ---- trial_runs.TaskBoard ----

CPU = Device(0, "cpu:0", "cpu", "cpu", "", threads=2)


def allocation(workers: int = 1) -> Allocation:
    return Allocation("s", (CPU,) * workers, 1.0, [FakeWorker() for _ in range(workers)])


def workers_of(alloc: Allocation | None) -> list[FakeWorker]:
    assert alloc is not None
    return [w for w in alloc.workers if isinstance(w, FakeWorker)]


def worker(board: TaskBoard, key: Any) -> FakeWorker:
    """The (one) fake worker of running task `key`."""
    run = board.evaluation if key == TEST else board.trials[key]
    assert run is not None
    return workers_of(run.alloc)[0]


def kills(board: TaskBoard) -> list[tuple[Any, list[str]]]:
    """Each running task's key with the kill reasons its worker got."""
    return [(key, worker(board, key).killed) for key, _ in board.running()]


def trial_run(trial_id: int) -> TrialRun:
    return TrialRun(trial_id=trial_id, task=TrainTask(trial_id, SETTINGS, f"{trial_id}.pt", OBJECTIVE), units=1.0)


def board_with(
    running: list[int], waiting: Sequence[int] = (), evaluation: bool = False, timeout: float = 0.0
) -> TaskBoard:
    board = TaskBoard("s", timeout)
    for trial_id in [*running, *waiting]:
        board.trials[trial_id] = trial_run(trial_id)
    for trial_id in running:
        board.hold(trial_id, board.trials[trial_id], allocation())
    board.requeued.extend(waiting)
    if evaluation:
        board.evaluation = EvaluationRun(trial_id=1)
        board.hold(TEST, board.evaluation, allocation())
    return board


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """time.monotonic, at clock[0], moved by the test."""
    clock = [1000.0]
    monkeypatch.setattr(trial_runs.time, "monotonic", lambda: clock[0])
    return clock


def test_running_lists_the_trials_holding_an_allocation_and_the_evaluation() -> None:
    board = board_with(running=[1, 3], waiting=[2], evaluation=True)
    assert [key for key, _ in board.running()] == [1, 3, TEST]
    assert board.running_trial(1) is board.trials[1]
    assert board.running_trial(2) is None and board.running_trial(TEST) is None
    board.evaluation = EvaluationRun(trial_id=1)  # waiting for a slot
    assert [key for key, _ in board.running()] == [1, 3]


def test_hold_names_the_holder_and_starts_the_run_afresh() -> None:
    board = board_with(running=[1])
    run = board.trials[1]
    board.ask_stop(1, run, "pruned")
    run.killed = True
    alloc = allocation()
    board.hold(1, run, alloc)
    assert alloc.holder == "s/1" and run.alloc is alloc
    assert (run.stop_reason, run.stop_time, run.killed) == (None, None, False)


def test_ask_stop_is_idempotent_and_stops_every_rank_once(clock: list[float]) -> None:
    board = TaskBoard("s", 0.0)
    run = board.trials[1] = trial_run(1)
    board.hold(1, run, allocation(workers=2))
    board.ask_stop(1, run, "pruned")
    clock[0] += 1
    board.ask_stop(1, run, "cancelled")
    assert (run.stop_reason, run.stop_time) == ("pruned", 1000.0)
    assert [w.stopped for w in workers_of(run.alloc)] == [[1], [1]]


def test_stop_trials_leaves_the_evaluation_and_stop_all_stops_it() -> None:
    board = board_with(running=[1], evaluation=True)
    board.stop_trials("deadline")
    assert board.trials[1].stop_reason == "deadline" and worker(board, TEST).stopped == []
    board.stop_all("halted")
    assert worker(board, TEST).stopped == [TEST]
    assert board.trials[1].stop_reason == "deadline"  # asked once, first reason kept


def test_police_kills_a_task_that_ignored_a_stop_for_longer_than_the_grace_once(clock: list[float]) -> None:
    board = board_with(running=[1, 2], evaluation=True)
    board.stop_all("cancelled")
    clock[0] += STOP_GRACE_S
    board.police()
    assert kills(board) == [(1, []), (2, []), (TEST, [])]
    clock[0] += 0.01
    board.police()
    board.police()
    assert kills(board) == [(1, ["stopped"]), (2, ["stopped"]), (TEST, ["stopped"])]


def test_a_stop_grace_counts_from_when_a_starting_worker_can_hear_the_stop(clock: list[float]) -> None:
    """A fresh worker still importing torch cannot hear a stop; killing it for that replaced it with
    another fresh one, and studies created and cancelled in a row then killed every worker in turn."""
    board = board_with(running=[1])
    worker(board, 1).starting = True
    board.stop_all("cancelled")
    clock[0] += 10 * STOP_GRACE_S
    board.police()
    assert kills(board) == [(1, [])]
    worker(board, 1).starting = False  # ready now: its grace starts at the last look while starting
    clock[0] += STOP_GRACE_S
    board.police()
    assert kills(board) == [(1, [])]
    clock[0] += 0.01
    board.police()
    assert kills(board) == [(1, ["stopped"])]


def test_police_kills_a_silent_task_once(caplog: pytest.LogCaptureFixture) -> None:
    board = board_with(running=[1, 2], evaluation=True, timeout=30.0)
    for key, silent in [(1, 30.0), (2, 31.0), (TEST, 99.0)]:  # 30 s is not longer than the timeout
        worker(board, key).silent = silent
    with caplog.at_level(logging.WARNING, logger="tuneyard.server.study.trial_runs"):
        board.police()
        board.police()
    assert kills(board) == [(1, []), (2, ["timeout"]), (TEST, ["timeout"])]
    assert board.trials[2].killed and caplog.text.count("sent no heartbeat") == 2


def test_no_heartbeat_timeout_means_a_silent_task_is_never_killed() -> None:
    board = board_with(running=[1], timeout=0.0)
    worker(board, 1).silent = 10**6
    board.police()
    assert kills(board) == [(1, [])]


def test_a_waiting_trial_asked_to_stop_only_remembers_why_and_drop_requeued_forgets_it() -> None:
    board = board_with(running=[1], waiting=[2, 3])
    board.ask_stop(2, board.trials[2], "cancelled")
    assert board.trials[2].stop_reason == "cancelled"
    board.drop_requeued()
    assert list(board.trials) == [1] and board.requeued == []

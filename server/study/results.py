"""What a study has found so far: its best trial, its Pareto front (several objectives), and how
many trials failed; and how a trial's ending is written down (`trial_end`).

A trial that violates one of the spec's constraints (`spec_search`) still ends COMPLETED, with the
constraints it violates stored; only feasible trials can be the best trial or stand on the front."""

from __future__ import annotations

import time
from dataclasses import dataclass

from tuneyard.server.study.domain import StudyState, TrialEnd, TrialRecord, TrialState
from tuneyard.server.study.outcomes import Ending
from tuneyard.server.study.pareto import pareto_front
from tuneyard.server.study.spec import StudyPlan
from tuneyard.server.study.spec_search import violated
from tuneyard.server.study.trial_runs import EvaluationRun

_JUDGED = (TrialState.COMPLETED, TrialState.PRUNED)  # the states whose metrics constraints judge


def trial_end(ending: Ending, state: TrialState, plan: StudyPlan) -> TrialEnd:
    """The columns a finished trial is stored with: its objective values, or why it failed."""
    now = time.time()
    match ending.kind:
        case "done":
            metrics = ending.result["final_metrics"]
            values = [metrics[o.metric] for o in plan.objectives if o.metric in metrics]
            return TrialEnd(
                state=state,
                end_time=now,
                objective_value=metrics.get(plan.objective.metric),
                objective_values=values if len(plan.objectives) > 1 else [],
                final_metrics=dict(metrics),
                violated_constraints=violated(plan.constraints, metrics) if state in _JUDGED else [],
            )
        case "infeasible":
            return TrialEnd(state=state, end_time=now, error=ending.error)
    return TrialEnd(
        state=state,
        end_time=now,
        error=ending.error,
        failure_reason=ending.reason,
        exit_code=ending.exit_code,
        exit_signal=ending.exit_signal,
        stderr_tail=ending.stderr_tail,
    )


class Results:
    """The best trial and the Pareto front, updated as trials finish."""

    def __init__(self, plan: StudyPlan) -> None:
        self.plan = plan
        self.best: TrialRecord | None = None
        self.front: list[tuple[int, list[float]]] = []
        self.failures = 0

    def failures_exceeded(self) -> bool:
        return bool(self.plan.max_failures) and self.failures > self.plan.max_failures

    def take_if_best(self, trial: TrialRecord) -> bool:
        """Takes a finished trial as the best when it completed with a better objective value."""
        if trial.state != TrialState.COMPLETED or trial.objective_value is None or not trial.feasible:
            return False
        best = self.best.objective_value if self.best is not None else None
        if best is not None and not self.plan.objective.better(trial.objective_value, best):
            return False
        self.best = trial
        return True

    def offer_to_front(self, trial: TrialRecord) -> bool:
        """Offers a completed, feasible trial to the Pareto front (several objectives); True when the
        front was recomputed with it (and is to be stored), whether or not the trial stayed on it."""
        objectives = self.plan.objectives
        if len(objectives) < 2 or trial.state != TrialState.COMPLETED or len(trial.objective_values) != len(objectives):
            return False
        if not trial.feasible:
            return False
        self.front = pareto_front([*self.front, (trial.trial_id, trial.objective_values)], [o.mode for o in objectives])
        return True


@dataclass(frozen=True)
class StudyEnd:
    """The state a study ends in, why (FAILED), and its test metrics (COMPLETED)."""

    state: StudyState
    error: str = ""
    test_metrics: dict[str, float] | None = None


def study_end(*, cancelled: bool, results: Results, evaluation: EvaluationRun | None) -> StudyEnd | None:
    """How a study whose trials are over ends: cancelled, too many failures, no completed trial, a
    failed test evaluation, or COMPLETED with the best trial's test metrics; None while that
    evaluation has not ended (a server shutdown left it for the next start)."""
    if cancelled:
        return StudyEnd(StudyState.CANCELLED)
    if results.failures_exceeded():
        allowed = results.plan.max_failures
        return StudyEnd(StudyState.FAILED, f"{results.failures} trials failed (budget.max_failures is {allowed})")
    if results.best is None:
        return StudyEnd(StudyState.FAILED, f"no trial completed ({results.failures} failed)")
    if not results.plan.has_test_split:  # a trainable's or clients' study: its best trial is its result
        return StudyEnd(StudyState.COMPLETED, test_metrics={})
    if evaluation is not None and evaluation.error:
        return StudyEnd(StudyState.FAILED, evaluation.error)
    if evaluation is not None and evaluation.test_metrics is not None:
        return StudyEnd(StudyState.COMPLETED, test_metrics=evaluation.test_metrics)
    return None

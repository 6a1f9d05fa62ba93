"""Reading an unfinished study back after a restart: the journaled search state (with the steps of
interrupted trials replayed into a searcher that observes steps), what was found, and the trials
that were interrupted (the runner then ends or re-runs each)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuneyard.server.storage.store import Store
from tuneyard.server.study.domain import TrialRecord, TrialState
from tuneyard.server.study.results import Results
from tuneyard.server.study.stopping import StopperLedger


@dataclass
class Restored:
    next_id: int = 1  # the id the next new trial gets
    stored: int = 0  # trials in the store
    interrupted: list[TrialRecord] = field(default_factory=list)  # running when the server stopped


def restore(store: Store, study_id: str, searcher: Any, stopping: StopperLedger, results: Results) -> Restored:
    """Loads the journaled state into the searcher and the stopper, the best trial, Pareto front and
    failure count into `results`, and returns the interrupted trials in id order."""
    searcher_state, stopper_state = store.search_state(study_id)
    if searcher_state is not None:
        searcher.load_state_dict(searcher_state)
    stopping.restore(stopper_state)
    study = store.get_study(study_id)
    results.best = study.best_trial
    results.front = [(t.trial_id, t.objective_values) for t in study.pareto_front]
    trials, _ = store.list_trials(study_id, 10**9, "")
    restored = Restored(stored=len(trials))
    for trial in trials:
        restored.next_id = max(restored.next_id, trial.trial_id + 1)
        if trial.state == TrialState.FAILED:
            results.failures += 1
        if not trial.state.terminal:
            restored.interrupted.append(trial)
            replay_steps(searcher, trial, stopping.objective.metric)
    return restored


def replay_steps(searcher: Any, trial: TrialRecord, metric: str) -> None:
    """Tells a searcher with `observe_step` an interrupted trial's stored steps: those after the last
    journaled state are in no state_dict (it is journaled at trial starts and ends, and an ended
    trial's steps all came before its end); steps it had seen already are told again, which
    `observe_step` takes as a repeat."""
    observe_step = getattr(searcher, "observe_step", None)
    if observe_step is None:
        return
    for epoch in trial.metrics:
        value = epoch.values.get(metric)
        if value is not None:
            observe_step(trial.trial_id, epoch.epoch, value)

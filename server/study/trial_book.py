"""Every change a trial makes to its study, journaled before anything acts on it: its start (with the
search state that chose it), each step (the early stopper's verdict stored with the step it judged)
and its end (the searcher and stopper told, the best trial and the Pareto front updated), each in one
transaction with the event announcing it.

The one place both kinds of study write trials through: the runner whose workers train them
(`runner`) and the study whose clients evaluate them (`external`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tuneyard.plugins.api import Decision, Exploit
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.execution.snapshots import snapshot_dir
from tuneyard.server.storage.store import Store
from tuneyard.server.study.domain import ConfigChange, TrialRecord, TrialState, trial_to_dict
from tuneyard.server.study.journal import StudyJournal
from tuneyard.server.study.outcomes import Ending, final_state
from tuneyard.server.study.results import Results, trial_end
from tuneyard.server.study.search import build_search, tell
from tuneyard.server.study.spec import StudyPlan
from tuneyard.server.study.stopping import StopperLedger

log = logging.getLogger(__name__)
Config = dict[str, Any]


class TrialBook:
    """One study's searcher, early stopper and results, and the journaled writes that change them."""

    def __init__(
        self,
        study_id: str,
        plan: StudyPlan,
        *,
        storage: Store,
        journal: StudyJournal,
        registry: PluginRegistry,
        searcher: Any,
        stopping: StopperLedger,
        results: Results,
    ) -> None:
        self.study_id, self.plan = study_id, plan
        self.storage, self.journal, self.registry = storage, journal, registry
        self.searcher, self.stopping, self.results = searcher, stopping, results
        self._deferred = self._search_changed = False  # see `batched`

    @classmethod
    def built(
        cls, study_id: str, plan: StudyPlan, *, storage: Store, journal: StudyJournal, registry: PluginRegistry
    ) -> TrialBook:
        """A study's book with its searcher and early stopper built from the plan, and no results yet."""
        searcher, stopping = build_search(plan, registry, storage)
        return cls(
            study_id,
            plan,
            storage=storage,
            journal=journal,
            registry=registry,
            searcher=searcher,
            stopping=stopping,
            results=Results(plan),
        )

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Inside one store transaction (`storage.atomic()`): the search state is written once, at the
        end, instead of at every trial's start and end (they commit together, so only the last counts)."""
        self._deferred = True
        try:
            yield
            self._deferred = False
            if self._search_changed:
                self.journal.search_state(self.searcher, self.stopping)
        finally:
            self._deferred = self._search_changed = False

    def _journal_search(self) -> None:
        if self._deferred:
            self._search_changed = True
        else:
            self.journal.search_state(self.searcher, self.stopping)

    def start(self, trial_id: int, config: dict[str, Any], device: str, checkpoint: str = "") -> TrialRecord:
        """Stores a new RUNNING trial with the search state that suggested it, and announces it."""
        with self.storage.atomic():
            trial = self.storage.create_trial(self.study_id, trial_id, config, device, checkpoint)
            self._journal_search()
            self.journal.publish("trial_started", {"trial": trial_to_dict(trial)})
        self.registry.on_trial_start(self.study_id, trial_id, dict(config))
        return trial

    def step(
        self, trial_id: int, step: int, metrics: dict[str, float], *, judge: bool = True, config: Config | None = None
    ) -> Decision:
        """Stores a step's metrics; with `judge`, asks the early stopper first (`config`: what the trial
        trains now, for a population stopper). A STOP is stored with the step, so a restart ends the
        trial PRUNED however far it got; a population stopper's state is journaled with each decision
        epoch. Once stored, a searcher with `observe_step` is told the objective's value (`resume`
        replays the steps the journal had not caught up with)."""
        verdict = self.stopping.tell(trial_id, step, metrics, config) if judge else Decision.CONTINUE
        with self.storage.atomic():
            self.storage.add_epoch(self.study_id, trial_id, step, metrics)
            if verdict == Decision.STOP:
                self.storage.mark_pruned(self.study_id, trial_id, step)
            if judge and self.stopping.decides_at(step):
                self._journal_search()
            self.journal.publish("trial_progress", {"trial_id": trial_id, "epoch": step, "metrics": metrics})
        observe_step = getattr(self.searcher, "observe_step", None)
        value = metrics.get(self.plan.objective.metric)
        if observe_step is not None and value is not None:
            observe_step(trial_id, step, value)
        self.registry.on_trial_report(self.study_id, trial_id, step, dict(metrics))
        return verdict

    def decide(self, trial_id: int, epoch: int) -> ConfigChange | None:
        """The population stopper's verdict on the trial's decision epoch, journaled: an exploit as the
        trial's new `ConfigChange` (with its event), or None to go on. Asked again (a restart), it
        returns the change already stored and writes nothing."""
        history = self.storage.get_trial(self.study_id, trial_id).config_history
        if history and history[-1].epoch == epoch:
            return history[-1]
        exploit = self.stopping.verdict(trial_id, epoch)
        change = self._change(trial_id, exploit) if exploit is not None else None
        with self.storage.atomic():
            if change is not None:
                self.storage.set_config_history(self.study_id, trial_id, [*history, change])
                self.journal.publish("trial_exploited", {"trial_id": trial_id, **asdict(change)})
            self._journal_search()  # the verdict is in the stopper's state
        return change

    def _change(self, trial_id: int, exploit: Exploit) -> ConfigChange | None:
        """The exploit as the trial's config change: the source's config at that step, with the values
        the stopper explored in place of its changeable ones; None (logged) when the source's files of
        that step are gone (deleted by hand), so the trial goes on as it is."""
        source = self.storage.get_trial(self.study_id, exploit.source_trial_id)
        if not snapshot_dir(Path(source.checkpoint).parent, exploit.source_step).is_dir():
            log.warning(
                "study %s: trial %s would go on from trial %s's epoch %s, whose files are gone; it goes on as it is",
                self.study_id,
                trial_id,
                exploit.source_trial_id,
                exploit.source_step,
            )
            return None
        kept = {name: value for name, value in source.current_config.items() if name not in self.stopping.changeable}
        return ConfigChange(exploit.source_step, exploit.source_trial_id, {**kept, **exploit.config})

    def finish(self, trial_id: int, ending: Ending, stop_reason: str | None) -> TrialRecord:
        """Stores the trial's end with the search state and its events, in one transaction."""
        state = final_state(ending, stop_reason)
        end = trial_end(ending, state, self.plan)
        if state == TrialState.FAILED:
            self.results.failures += 1
        value = end.objective_value if state in (TrialState.COMPLETED, TrialState.PRUNED) else None
        tell(self.searcher, self.plan, trial_id, end, value)
        self.stopping.complete(trial_id, value)
        with self.storage.atomic():
            trial = self.storage.end_trial(self.study_id, trial_id, end)
            self._journal_search()
            self.journal.publish("trial_finished", {"trial": trial_to_dict(trial)})
            if self.results.offer_to_front(trial):
                self.storage.set_pareto(self.study_id, [trial_id for trial_id, _ in self.results.front])
            if self.results.take_if_best(trial):
                self.storage.set_best_trial(self.study_id, trial_id)
                self.journal.publish("best_trial_changed", {"trial": trial_to_dict(trial)})
        self.registry.on_trial_end(self.study_id, trial_id, trial.state.value, dict(trial.final_metrics))
        return trial

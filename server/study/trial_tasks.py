"""A study's trial tasks: what a trial's run is handed, from its config, and its PBT exploits
(`early_stopping: pbt`) carried out.

The trial book journals an exploit of a trial waiting at a decision epoch (`TrialRecord.config_history`);
before the trial runs again this copies the source trial's snapshot of that epoch over the trial's
files, marks the change applied, and gives the trial its explored config and a task that resumes
from there. A restart finds an unapplied change and copies the files again: the
snapshot does not change, so it ends the same.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.execution.messages import TrainTask
from tuneyard.server.execution.snapshots import adopt_snapshot
from tuneyard.server.storage.store import Store
from tuneyard.server.study.domain import ConfigChange, TrialRecord
from tuneyard.server.study.settings import resolve
from tuneyard.server.study.spec import StudyPlan
from tuneyard.server.study.trial_runs import TrialRun

log = logging.getLogger(__name__)


class TrialTasks:
    """Builds a study's trial tasks; `decide_every` is the population stopper's interval (0: none)."""

    def __init__(self, study_id: str, plan: StudyPlan, registry: PluginRegistry, storage: Store) -> None:
        self.study_id, self.plan, self.registry, self.storage = study_id, plan, registry, storage
        self.decide_every = 0

    def task(self, trial_id: int, config: dict[str, Any], checkpoint: str, explored_at: int = 0) -> TrainTask:
        """The trial's task with this config (`explored_at`: the epoch of its last exploit, 0 none)."""
        settings = resolve(self.plan.spec, config, self.registry)
        return TrainTask(
            trial_id,
            settings,
            checkpoint,
            self.plan.objective,
            study_id=self.study_id,
            decide_every=self.decide_every,
            explored_at=explored_at,
        )

    def restored(self, trial: TrialRecord) -> TrialRun:
        """An interrupted trial's run, an exploit journaled before the stop applied first."""
        change = self.adopt(trial)
        config = trial.current_config
        task = self.task(trial.trial_id, config, trial.checkpoint, change.epoch if change else 0)
        run = TrialRun(trial_id=trial.trial_id, task=task, config=config, units=self.plan.resources.units)
        run.epochs, run.retries = trial.epochs_completed, trial.retries
        return run

    def explore(self, run: TrialRun) -> None:
        """The trial's journaled exploit applied: the source's files, the explored config, a new task."""
        change = self.adopt(self.storage.get_trial(self.study_id, run.trial_id))
        assert change is not None
        run.config, run.epochs = change.config, change.epoch
        run.task = self.task(run.trial_id, change.config, run.task.checkpoint, change.epoch)
        run.stop_reason = run.stop_time = None
        run.killed = False

    def adopt(self, trial: TrialRecord) -> ConfigChange | None:
        """The trial's last config change (None without one), its source's files in the trial's folder."""
        if not trial.config_history:
            return None
        change = trial.config_history[-1]
        if change.applied:
            return change
        source = self.storage.get_trial(self.study_id, change.source_trial_id)
        adopt_snapshot(Path(source.checkpoint).parent, change.epoch, Path(trial.checkpoint).parent)
        applied = replace(change, applied=True)
        self.storage.set_config_history(self.study_id, trial.trial_id, [*trial.config_history[:-1], applied])
        log.info(
            "study %s: trial %s goes on from trial %s's checkpoint of epoch %s with %s",
            self.study_id,
            trial.trial_id,
            change.source_trial_id,
            change.epoch,
            change.config,
        )
        return applied

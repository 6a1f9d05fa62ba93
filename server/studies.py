"""Owns the study runners: creates studies, starts and cancels their runners, settles restarts."""

from __future__ import annotations

import threading
import time
from typing import Any

from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.domain import InvalidArgument, StudyRecord, StudyState, TrialState, WrongState
from tuneyard.server.events import EventHub
from tuneyard.server.runner import StudyRunner
from tuneyard.server.scheduler import DeviceScheduler
from tuneyard.server.spec import SpecValidator
from tuneyard.server.storage import Storage

CANCEL_WAIT_S = 10.0


class StudyManager:
    """The collaborator the servicer calls for every state-changing request."""

    def __init__(
        self,
        *,
        storage: Storage,
        hub: EventHub,
        scheduler: DeviceScheduler,
        registry: PluginRegistry,
    ) -> None:
        self.storage, self.hub, self.scheduler, self.registry = storage, hub, scheduler, registry
        self.validator = SpecValidator(registry)
        self._runners: dict[str, StudyRunner] = {}
        self._lock = threading.Lock()

    def create(self, spec: dict[str, Any], request_id: str) -> StudyRecord:
        """Validates, stores and starts a study; a repeated request_id returns the first study."""
        plan = self.validator.validate(spec)
        why = self.scheduler.check(plan.spec["resources"]["gpus_per_trial"])
        if why:
            raise InvalidArgument("spec.resources.gpus_per_trial", why)
        with self._lock:
            study, created = self.storage.create_study(plan.spec, request_id)
            if created:
                runner = StudyRunner(
                    study.study_id, plan, storage=self.storage, hub=self.hub, scheduler=self.scheduler,
                    registry=self.registry,
                )  # fmt: skip
                self._runners[study.study_id] = runner
                runner.start()
        return study

    def cancel(self, study_id: str) -> StudyRecord:
        study = self.storage.get_study(study_id)
        if study.state.terminal:
            raise WrongState(f"study {study_id} is already {study.state.value}")
        runner = self._runners.get(study_id)
        if runner is not None:
            runner.cancel()
            runner.join(CANCEL_WAIT_S)
        return self.storage.get_study(study_id)

    def settle_interrupted(self) -> None:
        """Marks studies left unfinished by a previous server process as FAILED, with the reason.

        Resuming them from their checkpoints is the crash-recovery work still to come; until
        then they end clearly rather than stay RUNNING forever.
        """
        for study_id in self.storage.unfinished_studies():
            for trial in self.storage.list_trials(study_id, 100_000, "")[0]:
                if not trial.state.terminal:
                    self.storage.update_trial(
                        study_id, trial.trial_id, state=TrialState.FAILED,
                        error="interrupted: the server stopped during this trial", end_time=time.time(),
                    )  # fmt: skip
            why = "interrupted: the server stopped while this study was running"
            self.storage.update_study(study_id, state=StudyState.FAILED, error=why, end_time=time.time())
            self.hub.publish(study_id, "study_state", {"state": StudyState.FAILED.value, "error": why})

    def shutdown(self) -> None:
        """Halts every runner; unfinished studies stay unfinished for the next start to settle."""
        for runner in list(self._runners.values()):
            if runner.is_alive():
                runner.halt()
        for runner in list(self._runners.values()):
            runner.join(CANCEL_WAIT_S)

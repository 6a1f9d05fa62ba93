"""Owns the study runners: creates studies, starts and cancels their runners, resumes after a restart."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.execution.scheduler import DeviceScheduler
from tuneyard.server.limits import DEFAULT_MAX_ACTIVE_STUDIES
from tuneyard.server.storage.store import Store
from tuneyard.server.study.domain import InvalidArgument, ResourceExhausted, StudyRecord, StudyState, WrongState
from tuneyard.server.study.events import EventHub
from tuneyard.server.study.external import ExternalStudy
from tuneyard.server.study.runner import StudyRunner
from tuneyard.server.study.spec import SpecValidator, StudyPlan

log = logging.getLogger(__name__)
CANCEL_WAIT_S = 5.0  # CancelStudy answers once the study is CANCELLED, or after this long
SHUTDOWN_WAIT_S = 10.0
_LOOKUP_PAGE = 500


class StudyManager:
    """The collaborator the servicer calls for every state-changing request.

    `data_root` confines the path options of specs (see `spec`); None means the server's default,
    `<data dir>/datasets`. `max_active_studies` caps the unfinished (PENDING or RUNNING) studies:
    one more is refused with ResourceExhausted; 0 means no cap.
    """

    def __init__(
        self,
        *,
        storage: Store,
        hub: EventHub,
        scheduler: DeviceScheduler,
        registry: PluginRegistry,
        heartbeat_timeout: float = 0.0,
        data_root: str | None = None,
        max_active_studies: int = DEFAULT_MAX_ACTIVE_STUDIES,
    ) -> None:
        self.storage, self.hub, self.scheduler, self.registry = storage, hub, scheduler, registry
        self.heartbeat_timeout = heartbeat_timeout
        self.max_active_studies = max_active_studies
        root = str(storage.data_dir / "datasets") if data_root is None else data_root
        self.validator = SpecValidator(registry, data_root=root)
        self._runners: dict[str, StudyRunner | ExternalStudy] = {}
        self._lock = threading.Lock()

    def create(self, spec: dict[str, Any], request_id: str) -> StudyRecord:
        """Validates, stores and starts a study; a repeated request_id returns the first study."""
        plan = self.validator.validate(spec)
        why = self.scheduler.check(plan.resources.gpus_per_trial)
        if why:
            raise InvalidArgument("spec.resources.gpus_per_trial", why)
        with self._lock:
            active = len(self.storage.unfinished_studies())
            if self.max_active_studies and active >= self.max_active_studies:
                earlier = self._by_request_id(request_id)
                if earlier is not None:  # a retry of a study that already exists is no new study
                    return earlier
                raise ResourceExhausted(
                    f"{active} studies are unfinished on this server (at most {self.max_active_studies}); "
                    "wait for one to end, or cancel one"
                )
            study, created = self.storage.create_study(plan.spec, request_id)
            if created:
                self._start(study.study_id, plan)
        return study

    def _by_request_id(self, request_id: str) -> StudyRecord | None:
        """The study created with `request_id`, or None (a scan: only asked when the cap is reached)."""
        if not request_id:
            return None
        token = ""
        while True:
            studies, token = self.storage.list_studies(_LOOKUP_PAGE, token)
            found = next((s for s in studies if s.request_id == request_id), None)
            if found is not None or not token:
                return found

    def _start(self, study_id: str, plan: StudyPlan) -> None:
        if plan.external:
            external = ExternalStudy(study_id, plan, storage=self.storage, hub=self.hub, registry=self.registry)
            external.open()
            self._runners[study_id] = external
            external.start()
            return
        runner = StudyRunner(
            study_id,
            plan,
            storage=self.storage,
            hub=self.hub,
            scheduler=self.scheduler,
            registry=self.registry,
            heartbeat_timeout=self.heartbeat_timeout,
        )
        self._runners[study_id] = runner
        runner.start()

    def external(self, study_id: str) -> ExternalStudy:
        """The study whose clients evaluate its trials; NotFound, or WrongState for a study the server
        runs itself. An external study that ended before the server restarted answers from the store."""
        runner = self._runners.get(study_id)
        if isinstance(runner, ExternalStudy):
            return runner
        study = self.storage.get_study(study_id)
        if "external" not in study.spec:
            raise WrongState(f"study {study_id} is not external: this server runs its trials")
        with self._lock:
            runner = self._runners.get(study_id)
            if isinstance(runner, ExternalStudy):
                return runner
            plan = self.validator.validate(study.spec)
            ended = ExternalStudy.ended(study_id, plan, storage=self.storage, hub=self.hub, registry=self.registry)
            ended.start()  # returns at once: it only answers from the store
            self._runners[study_id] = ended
            return ended

    def cancel(self, study_id: str) -> StudyRecord:
        study = self.storage.get_study(study_id)
        if study.state.terminal:
            raise WrongState(f"study {study_id} is already {study.state.value}")
        runner = self._runners.get(study_id)
        if runner is not None:
            runner.cancel()
            runner.join(CANCEL_WAIT_S)
        return self.storage.get_study(study_id)

    def resume_unfinished(self) -> list[str]:
        """Starts a runner for every study a previous server process left unfinished.

        Each resumes where its journal ends (see `StudyRunner`). A study that can no longer run
        here — its plugins are gone, or it needs more devices than this server has — ends FAILED
        with the reason instead of staying RUNNING forever. Returns the resumed study ids.
        """
        resumed = []
        for study_id in self.storage.unfinished_studies():
            spec = self.storage.get_study(study_id).spec
            try:
                plan = self.validator.validate(spec)
                why = self.scheduler.check(plan.resources.gpus_per_trial)
                if why:
                    raise InvalidArgument("spec.resources.gpus_per_trial", why)
            except InvalidArgument as exc:
                error = f"cannot resume after the server restarted: {exc}"
                log.warning("study %s: %s", study_id, error)
                with self.storage.atomic():
                    self.storage.end_study(study_id, StudyState.FAILED, end_time=time.time(), error=error)
                    self.hub.publish(study_id, "study_state", {"state": StudyState.FAILED.value, "error": error})
                continue
            with self._lock:
                self._start(study_id, plan)
            resumed.append(study_id)
        return resumed

    def shutdown(self) -> None:
        """Halts every runner; unfinished studies stay unfinished for the next start to resume."""
        for runner in list(self._runners.values()):
            if runner.is_alive():
                runner.halt()
        for runner in list(self._runners.values()):
            runner.join(SHUTDOWN_WAIT_S)

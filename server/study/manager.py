"""Owns the study runners: creates studies, starts and cancels their runners, resumes after a restart,
and extends or deletes studies that have ended."""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import Any

from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.execution.scheduler import DeviceScheduler
from tuneyard.server.limits import DEFAULT_MAX_ACTIVE_STUDIES, MAX_TRIALS
from tuneyard.server.storage.files import remove_folder
from tuneyard.server.storage.store import Store
from tuneyard.server.study.domain import InvalidArgument, ResourceExhausted, StudyRecord, StudyState, WrongState
from tuneyard.server.study.events import EventHub
from tuneyard.server.study.external import ExternalStudy
from tuneyard.server.study.runner import StudyRunner
from tuneyard.server.study.spec import SpecValidator, StudyPlan
from tuneyard.server.study.spec_values import duration_s

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
        self.validator.check_earlier_studies(plan, self.storage)  # warm_start names stored studies
        why = self.scheduler.check(plan.resources.gpus_per_trial)
        if why:
            raise InvalidArgument("spec.resources.gpus_per_trial", why)
        with self._lock:
            if self._full():
                earlier = self._by_request_id(request_id)
                if earlier is not None:  # a retry of a study that already exists is no new study
                    return earlier
                self._refuse_when_full()
            study, created = self.storage.create_study(plan.spec, request_id)
            if created:
                self._start(study.study_id, plan)
        return study

    def _full(self) -> bool:
        return bool(self.max_active_studies) and len(self.storage.unfinished_studies()) >= self.max_active_studies

    def _refuse_when_full(self) -> None:
        if self._full():
            raise ResourceExhausted(
                f"{len(self.storage.unfinished_studies())} studies are unfinished on this server "
                f"(at most {self.max_active_studies}); wait for one to end, or cancel one"
            )

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

    def extend(self, study_id: str, add_trials: int, add_duration_s: float) -> tuple[StudyRecord, int]:
        """Reopens a COMPLETED or CANCELLED study with more budget (see `extended_spec`); returns it and
        the sequence of its last event before the extension.

        The new budget is stored, with the study RUNNING and an event saying so, in one transaction
        before its runner starts: a server killed right after resumes the extension like any
        unfinished study. A FAILED study stays failed: what failed it (its failure budget, a store
        or plugin error) would fail the extension too; a new study can take its results as a warm start.
        """
        with self._lock:
            study = self.storage.get_study(study_id)
            if not study.state.terminal:
                raise WrongState(f"study {study_id} is {study.state.value}: extend it once it has ended")
            if study.state == StudyState.FAILED:
                raise WrongState(f"study {study_id} FAILED ({study.error}); only a COMPLETED or CANCELLED one extends")
            self._refuse_when_full()
            counted_from = self.storage.budget_start(study_id)
            spec, counted_from = extended_spec(study, add_trials, add_duration_s, counted_from, time.time())
            plan = self.validator.validate(spec)
            why = self.scheduler.check(plan.resources.gpus_per_trial)
            if why:
                raise InvalidArgument("spec.resources.gpus_per_trial", why)
            self._retire(study_id)
            after, _ = self.storage.last_sequence(study_id)
            with self.storage.atomic():
                self.storage.extend_study(study_id, plan.spec, counted_from)
                self.hub.publish(study_id, "study_state", {"state": StudyState.RUNNING.value, "error": ""})
            log.info("study %s extended: budget %s", study_id, plan.spec["budget"])
            self._start(study_id, plan)
        return self.storage.get_study(study_id), after

    def delete(self, study_id: str) -> tuple[int, int]:
        """Removes an ended study: its rows and events at once, then its folder of files. Returns (its
        trials, the bytes of files removed). A folder left by a crash in between is only disk space."""
        with self._lock:
            study = self.storage.get_study(study_id)
            if not study.state.terminal:
                raise WrongState(f"study {study_id} is {study.state.value}: cancel it, or wait for it to end")
            self._retire(study_id)
            trials = self.storage.delete_study(study_id)
        return trials, remove_folder(self.storage.checkpoint_dir, self.storage.study_folder(study_id))

    def _retire(self, study_id: str) -> None:
        """Forgets the runner of an ended study, once its thread is done (it ends right after the study)."""
        runner = self._runners.get(study_id)
        if runner is not None:
            runner.join(CANCEL_WAIT_S)
            if runner.is_alive():
                raise WrongState(f"study {study_id} is still finishing; retry in a moment")
            del self._runners[study_id]

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


def extended_spec(
    study: StudyRecord, add_trials: int, add_s: float, counted_from: float | None, now: float
) -> tuple[dict[str, Any], float | None]:
    """The study's spec with its budget extended, and the new budget start (when max_duration counts from).

    `add_trials` > 0: max_trials becomes the trials the study has plus add_trials, so exactly that
    many more run (unless the searcher runs out, or time does). `add_s` > 0: max_duration grows by
    it (a study without one gets the time it ran plus `add_s`). The time the study already ran counts
    against its max_duration; the time it sat finished does not: the budget start moves to
    `now` less that time. A max_duration already spent, with no `add_s`, is refused.
    """
    spec = copy.deepcopy(study.spec)
    budget = spec.setdefault("budget", {})
    if add_trials:
        total = study.counts.finished + study.counts.running + study.counts.pending + add_trials
        if total > MAX_TRIALS:
            raise InvalidArgument("add_trials", f"the study would have {total} trials, more than {MAX_TRIALS}")
        budget["max_trials"] = total
    limit = duration_s(budget.get("max_duration"), "spec.budget.max_duration")
    if limit is None and not add_s:
        return spec, counted_from
    ran = study.end_time - counted_from if study.end_time is not None and counted_from is not None else 0.0
    limit = (ran if limit is None else limit) + add_s
    if limit <= ran:
        raise WrongState(
            f"study {study.study_id} spent its budget.max_duration ({limit:g}s): give add_duration to extend it"
        )
    budget["max_duration"] = f"{limit:.3f}s"
    return spec, now - ran

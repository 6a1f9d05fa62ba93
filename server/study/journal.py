"""What a study runner writes: each change of a study with the event announcing it, in one
transaction, so a watcher never sees an event the store does not hold (or the reverse)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from tuneyard.server.storage.store import Store
from tuneyard.server.study.domain import StudyState
from tuneyard.server.study.events import EventHub
from tuneyard.server.study.stopping import StopperLedger, plain_state

log = logging.getLogger(__name__)
STORE_RETRY_S = 0.5  # first wait before storing a study's failure again while the store refuses writes
STORE_RETRY_MAX_S = 10.0


class StudyJournal:
    """One study's writes to the store and its events."""

    def __init__(self, study_id: str, storage: Store, hub: EventHub) -> None:
        self.study_id, self.storage, self.hub = study_id, storage, hub

    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        self.hub.publish(self.study_id, kind, payload)

    def start(self, started_at: float) -> None:
        with self.storage.atomic():
            self.storage.start_study(self.study_id, started_at)
            self.publish("study_state", {"state": StudyState.RUNNING.value, "error": ""})

    def end(self, state: StudyState, error: str = "", test_metrics: dict[str, float] | None = None) -> None:
        payload: dict[str, Any] = {"state": state.value, "error": error}
        if test_metrics is not None:
            payload["test_metrics"] = test_metrics
        with self.storage.atomic():
            self.storage.end_study(self.study_id, state, end_time=time.time(), error=error, test_metrics=test_metrics)
            self.publish("study_state", payload)

    def search_state(self, searcher: Any, stopping: StopperLedger) -> None:
        """Stores the searcher's and stopper's state; called inside the transaction of a trial's
        start or end."""
        self.storage.journal_search(self.study_id, plain_state(searcher, "searcher"), stopping.state())

    def fail_when_writable(self, error: str, halted: threading.Event) -> None:
        """Marks the study FAILED, retrying while the store refuses writes (a full disk): the study
        ends FAILED once space is freed, instead of staying RUNNING with no runner. A server
        shutdown meanwhile leaves it unfinished, for the next start to resume."""
        wait = STORE_RETRY_S
        while not halted.is_set():
            try:
                self.end(StudyState.FAILED, error=error)
                return
            except Exception as exc:  # noqa: BLE001 - the store is still failing; try again
                log.error("study %s: cannot store its failure yet (%s); retrying in %.0f s", self.study_id, exc, wait)
                halted.wait(wait)
                wait = min(wait * 2, STORE_RETRY_MAX_S)

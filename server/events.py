"""Publishes study events: stored first, then announced to waiting watchers."""

from __future__ import annotations

import threading
from typing import Any

from tuneyard.server.domain import EventRecord
from tuneyard.server.storage import Storage


class EventHub:
    """Watchers read from storage and sleep here until a newer event is stored."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._changed = threading.Condition()
        self._latest: dict[str, int] = {}
        self._closed = False

    def publish(self, study_id: str, kind: str, payload: dict[str, Any]) -> EventRecord:
        event = self._storage.append_event(study_id, kind, payload)
        with self._changed:
            self._latest[study_id] = event.sequence
            self._changed.notify_all()
        return event

    def wait_for(self, study_id: str, after: int, timeout: float) -> bool:
        """Blocks until an event after `after` may exist, the hub closes, or `timeout` passes."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._closed or self._latest.get(study_id, after) > after, timeout=timeout
            )

    def close(self) -> None:
        """Wakes every watcher so streams end promptly when the server stops."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

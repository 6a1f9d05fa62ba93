"""Publishes study events: stored first, then announced to waiting watchers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from tuneyard.server.storage.store import Store
from tuneyard.server.study.domain import EventRecord, Unavailable

FOLLOW_POLL_S = 1.0


class EventHub:
    """Watchers read from storage and sleep here until a newer event is stored."""

    def __init__(self, storage: Store) -> None:
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

    def follow(self, study_id: str, after: int, active: Callable[[], bool] = lambda: True) -> Iterator[EventRecord]:
        """The study's stored events after `after`, then each new one as it is stored, until the
        terminal one (or at once, for a reader already past it). Raises Unavailable when the hub
        closes; stops when `active()` turns false.

        Events are read from the store at the reader's own pace: nothing is buffered per reader, so a
        slow one never holds up its study."""
        while active():
            events = self._storage.events_after(study_id, after)
            for event in events:
                yield event
                after = event.sequence
                if event.terminal:
                    return
            if not events:
                last, ended = self._storage.last_sequence(study_id)
                if ended and after >= last:
                    return  # reconnected after the terminal event: nothing more will come
                if ended:
                    continue  # the terminal event was stored just now
                if self._closed:
                    raise Unavailable("server is shutting down; reconnect with after_sequence to go on")
                self.wait_for(study_id, after, FOLLOW_POLL_S)

    def close(self) -> None:
        """Wakes every watcher so streams end promptly when the server stops."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

"""The `Store` Protocol: what the server asks of its storage, and the contract every backend keeps.

The servicer, dashboard, study manager, event hub and runner are typed against `Store`; `sqlite.Storage`
is the one backend. Contract (after Optuna's `storages/_base.py`):
- Thread safe. Every method is one transaction: it stores all it writes or, raising, nothing.
  `atomic()` makes every call inside its block one transaction; blocks nest (an inner one joins the
  outermost), and an exception leaving the outermost block undoes every write inside it.
- Only a study's runner writes its trials and events; RPC handlers only read, except `create_study`
  (and the study manager ends a study it cannot resume, and extends or deletes an ended one).
- Durability order: a write (an epoch's metrics, an event) is committed when its method returns,
  or when the outermost `atomic()` block ends. The event hub announces an event only after
  `append_event` returned, so a watcher that reconnects with its last sequence sees each event once.
- Event sequences are per study, contiguous from 1.
- Reads never take a query per trial: a study's best trial and Pareto front, and a page of trials
  with their epochs, come in a bounded number of queries.
- Unknown ids raise `NotFound` from every read by id and every update of a stored row (`start_study`
  to `set_pareto`, `move_trial` to `end_trial`), which then writes nothing; `create_trial`, `add_epoch`
  and `append_event` expect the study to be stored (the runner's own).
- A failure of the store itself (damage, a full disk, a locked or failing file) raises a `StoreError`
  subclass (StoreDamaged, StoreFull, StoreUnavailable) and leaves the store usable once its cause is
  gone; a bad page token raises `InvalidArgument("page_token", ...)`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from tuneyard.server.study.domain import ConfigChange, EventRecord, StudyRecord, StudyState, TrialEnd, TrialRecord


class JsonState(dict[str, Any]):
    """A plugin's state_dict already known to be JSON data, with its JSON text: `journal_search`
    stores the text as it is, so a large state (a searcher's) is encoded once per journal entry."""

    def __init__(self, state: dict[str, Any], text: str) -> None:
        super().__init__(state)
        self.text = text


class Store(Protocol):
    """Studies, their trials with per-epoch metrics, and their events."""

    @property
    def data_dir(self) -> Path:
        """The server's data directory (the store's file, datasets and checkpoints by default lie in it)."""
        ...

    def close(self) -> None:
        """Closes the store; no method may be called after."""
        ...

    def atomic(self) -> AbstractContextManager[Any]:
        """`with store.atomic():` — every call inside commits together, or none does. Nests."""
        ...

    # ---- studies ----

    def create_study(self, spec: dict[str, Any], request_id: str) -> tuple[StudyRecord, bool]:
        """Stores a new PENDING study; returns (study, created). A known non-empty request_id returns
        the study first created with it, and created False."""
        ...

    def get_study(self, study_id: str) -> StudyRecord:
        """The study with its trial counts, epochs spent, best trial and Pareto front; NotFound."""
        ...

    def list_studies(
        self, page_size: int, page_token: str, state: StudyState | None = None
    ) -> tuple[list[StudyRecord], str]:
        """At most `page_size` studies (of `state`, when given) in creation order, after `page_token`
        ("" for the first page); returns (studies, the next page's token, "" after the last page)."""
        ...

    def study_page_token(self, study_id: str) -> str:
        """The page token that lists the studies after `study_id` (for a page cut short by size); NotFound."""
        ...

    def unfinished_studies(self) -> list[str]:
        """Ids of the PENDING and RUNNING studies, in creation order."""
        ...

    def search_state(self, study_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The journaled (searcher, early stopper) state_dicts of a study; None where none was stored; NotFound."""
        ...

    def start_study(self, study_id: str, start_time: float) -> None:
        """The study is RUNNING since `start_time`; NotFound."""
        ...

    def end_study(
        self,
        study_id: str,
        state: StudyState,
        *,
        end_time: float,
        error: str = "",
        test_metrics: dict[str, float] | None = None,
    ) -> None:
        """The study ended in `state` at `end_time` with `error`; `test_metrics`, when given, are the
        best trial's on the test split (None leaves them as stored). NotFound."""
        ...

    def journal_search(
        self, study_id: str, searcher_state: dict[str, Any] | None, stopper_state: dict[str, Any] | None
    ) -> None:
        """Stores the searcher's and early stopper's state_dicts (None: there is none; a `JsonState` as
        its text), for an exact resume; `search_state` reads them back. NotFound."""
        ...

    def extend_study(self, study_id: str, spec: dict[str, Any], budget_start: float | None) -> None:
        """The study runs again with `spec` (its new budget): RUNNING, no end time or error, its
        `max_duration` counted from `budget_start` (see `budget_start`). NotFound."""
        ...

    def budget_start(self, study_id: str) -> float | None:
        """When the study's `max_duration` counts from: its start time, or, once extended, a time that
        leaves out the while it sat finished (None before it started). NotFound."""
        ...

    def delete_study(self, study_id: str) -> int:
        """Removes the study with its trials, epochs and events; returns how many trials it had. NotFound."""
        ...

    def study_folder(self, study_id: str) -> Path:
        """The folder of the study's files (its trials' checkpoint folders), under the checkpoint directory."""
        ...

    def set_best_trial(self, study_id: str, trial_id: int) -> None:
        """`trial_id` is the study's best trial (read back as `StudyRecord.best_trial`); NotFound for the study."""
        ...

    def set_pareto(self, study_id: str, trial_ids: list[int]) -> None:
        """The study's Pareto front is these trials, in this order; NotFound for the study."""
        ...

    # ---- trials ----

    def create_trial(
        self, study_id: str, trial_id: int, config: dict[str, Any], device: str, checkpoint: str
    ) -> TrialRecord:
        """Stores a RUNNING trial started now on `device`, with the key of its checkpoint (a path relative
        to the checkpoint directory; see `checkpoint_path`); returns it."""
        ...

    def move_trial(self, study_id: str, trial_id: int, device: str) -> None:
        """The trial runs again, on `device`; NotFound."""
        ...

    def set_retries(self, study_id: str, trial_id: int, retries: int) -> None:
        """The trial has been retried `retries` times; NotFound."""
        ...

    def set_fused_group(self, study_id: str, trial_id: int, group: str) -> None:
        """The trial trains in fused group `group` now ("": solo; `resources.fuse`); NotFound."""
        ...

    def set_config_history(self, study_id: str, trial_id: int, history: list[ConfigChange]) -> None:
        """The trial's PBT exploits, oldest first (a new one journaled with its step, in one `atomic()`); NotFound."""
        ...

    def mark_pruned(self, study_id: str, trial_id: int, epoch: int) -> None:
        """The early stopper said STOP at `epoch` (store it with that epoch, in one `atomic()`); NotFound."""
        ...

    def end_trial(self, study_id: str, trial_id: int, end: TrialEnd) -> TrialRecord:
        """Stores how the trial ended (every field of `end`); returns the trial as stored. NotFound."""
        ...

    def add_epoch(self, study_id: str, trial_id: int, epoch: int, values: dict[str, float]) -> None:
        """Stores an epoch's metrics (replacing a stored one of that epoch); they become the trial's final
        metrics and `epoch` its epochs completed."""
        ...

    def get_trial(self, study_id: str, trial_id: int) -> TrialRecord:
        """The trial with its epochs; NotFound for the study or the trial."""
        ...

    def list_trials(self, study_id: str, page_size: int, page_token: str) -> tuple[list[TrialRecord], str]:
        """At most `page_size` trials with their epochs, by trial id, after `page_token` ("" first); returns
        (trials, the next page's token, "" after the last page). NotFound for the study."""
        ...

    def trial_page_token(self, study_id: str, trial_id: int) -> str:
        """The page token that lists the study's trials after `trial_id` (for a page cut short by size)."""
        ...

    def checkpoint_path(self, stored: str) -> str:
        """Where a checkpoint stored under the key `stored` lies now ("" for none)."""
        ...

    @property
    def checkpoint_dir(self) -> Path:
        """The folder every checkpoint lies under (by default `<data dir>/studies`): nothing outside
        it is served as a checkpoint."""
        ...

    # ---- events ----

    def append_event(self, study_id: str, kind: str, payload: dict[str, Any]) -> EventRecord:
        """Stores the study's next event (sequence: the last plus one); durable when this returns, or
        when the enclosing `atomic()` block ends."""
        ...

    def last_sequence(self, study_id: str) -> tuple[int, bool]:
        """(the study's last event sequence, 0 before any; whether the study has ended); NotFound."""
        ...

    def events_after(self, study_id: str, after: int, limit: int = 500) -> list[EventRecord]:
        """At most `limit` of the study's events with sequence above `after`, in sequence order; NotFound."""
        ...

"""SQLite storage of studies, trials, per-epoch metrics and events: the `Store` of a server.

`store.Store` states the contract every method keeps; this module adds what is SQLite's:
- One connection guarded by a re-entrant lock; every public method is one transaction (`BEGIN
  IMMEDIATE` ... `COMMIT`), and `atomic()` joins the calls inside it into the outermost one.
- Journal mode WAL; the file is `<data-dir>/tuneyard.db`, marked ours by `PRAGMA application_id`
  (APPLICATION_ID). Opening refuses a file that is not a tuneyard store (see `StoreConnection`).
- SQLite's failures of the store itself leave every method as a `StoreError` (see
  `sqlite_file.store_error`), never as sqlite3's. Errors of ours (a broken constraint, bad SQL) stay
  sqlite3 errors: bugs.
Opening and transactions live in `connection`, tables and migration in `schema`, page tokens in `tokens`,
reading rows into records in `records`.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tuneyard.server.storage import records
from tuneyard.server.storage.connection import StoreConnection
from tuneyard.server.storage.sqlite_file import DB_NAME
from tuneyard.server.storage.store import JsonState
from tuneyard.server.storage.tokens import decode_token, encode_token
from tuneyard.server.study.domain import (
    ConfigChange,
    EventRecord,
    NotFound,
    StudyRecord,
    StudyState,
    TrialEnd,
    TrialRecord,
    TrialState,
)

__all__ = ["Storage"]


class Storage(StoreConnection):
    """The SQLite store: see `store.Store` for its contract, the module docstring for SQLite's part, and
    `StoreConnection` for what opening refuses."""

    def __init__(self, data_dir: Path, checkpoint_dir: Path | None = None, *, check_integrity: bool = False) -> None:
        self.data_dir = Path(data_dir)
        # Trials' checkpoints: stored as paths relative to this folder, so the data directory may move.
        self._checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else self.data_dir / "studies"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(self.data_dir / DB_NAME, check_integrity=check_integrity)

    @property
    def checkpoint_dir(self) -> Path:
        return self._checkpoint_dir

    def _set_study(self, study_id: str, values: dict[str, Any]) -> None:
        """One UPDATE of the study's row; NotFound, and nothing written, when there is none."""
        sets = ", ".join(f"{column} = ?" for column in values)
        with self._tx() as db:
            if db.execute(f"UPDATE studies SET {sets} WHERE id = ?", (*values.values(), study_id)).rowcount == 0:
                raise NotFound(f"study {study_id!r} not found")

    def _set_trial(self, study_id: str, trial_id: int, values: dict[str, Any]) -> None:
        """One UPDATE of the trial's row; NotFound, and nothing written, when there is none."""
        sets = ", ".join(f"{column} = ?" for column in values)
        query = f"UPDATE trials SET {sets} WHERE study_id = ? AND trial_id = ?"
        with self._tx() as db:
            if db.execute(query, (*values.values(), study_id, trial_id)).rowcount == 0:
                raise NotFound(f"trial {trial_id} of study {study_id!r} not found")

    # ---- studies ----

    def create_study(self, spec: dict[str, Any], request_id: str) -> tuple[StudyRecord, bool]:
        with self._tx() as db:
            if request_id:
                row = db.execute("SELECT id FROM studies WHERE request_id = ?", (request_id,)).fetchone()
                if row:
                    return records.read_study(db, row["id"], self.checkpoint_dir), False
            study_id = "st-" + uuid.uuid4().hex[:12]
            db.execute(
                "INSERT INTO studies (id, request_id, spec, state, create_time) VALUES (?, ?, ?, ?, ?)",
                (study_id, request_id or None, json.dumps(spec), StudyState.PENDING.value, time.time()),
            )
            return records.read_study(db, study_id, self.checkpoint_dir), True

    def get_study(self, study_id: str) -> StudyRecord:
        with self._lock:
            return records.read_study(self._db, study_id, self.checkpoint_dir)

    def list_studies(
        self, page_size: int, page_token: str, state: StudyState | None = None
    ) -> tuple[list[StudyRecord], str]:
        after = decode_token(page_token)
        with self._lock:
            query = "SELECT * FROM studies WHERE row > ?"
            args: list[int | str] = [after]
            if state is not None:
                query += " AND state = ?"
                args.append(state.value)
            rows = self._db.execute(query + " ORDER BY row LIMIT ?", (*args, page_size + 1)).fetchall()
            studies = records.read_studies(self._db, rows[:page_size], self.checkpoint_dir)
        token = encode_token(rows[page_size - 1]["row"]) if len(rows) > page_size else ""
        return studies, token

    def study_page_token(self, study_id: str) -> str:
        with self._lock:
            row = self._db.execute("SELECT row FROM studies WHERE id = ?", (study_id,)).fetchone()
        if row is None:
            raise NotFound(f"study {study_id!r} not found")
        return encode_token(row["row"])

    def start_study(self, study_id: str, start_time: float) -> None:
        self._set_study(study_id, {"state": StudyState.RUNNING.value, "start_time": start_time})

    def end_study(
        self,
        study_id: str,
        state: StudyState,
        *,
        end_time: float,
        error: str = "",
        test_metrics: dict[str, float] | None = None,
    ) -> None:
        values: dict[str, Any] = {"state": state.value, "end_time": end_time, "error": error}
        if test_metrics is not None:
            values["test_metrics"] = json.dumps(test_metrics)
        self._set_study(study_id, values)

    def journal_search(
        self, study_id: str, searcher_state: dict[str, Any] | None, stopper_state: dict[str, Any] | None
    ) -> None:
        states = {"searcher_state": searcher_state, "stopper_state": stopper_state}
        self._set_study(study_id, {k: _json_text(v) for k, v in states.items()})

    def extend_study(self, study_id: str, spec: dict[str, Any], budget_start: float | None) -> None:
        values = {"spec": json.dumps(spec), "state": StudyState.RUNNING.value, "end_time": None, "error": ""}
        self._set_study(study_id, {**values, "budget_start": budget_start})

    def budget_start(self, study_id: str) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(budget_start, start_time) AS start FROM studies WHERE id = ?", (study_id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"study {study_id!r} not found")
        return row["start"]

    def delete_study(self, study_id: str) -> int:
        with self._tx() as db:
            records.study_exists(db, study_id)
            for table in ("metrics", "events"):
                db.execute(f"DELETE FROM {table} WHERE study_id = ?", (study_id,))
            trials = db.execute("DELETE FROM trials WHERE study_id = ?", (study_id,)).rowcount
            db.execute("DELETE FROM studies WHERE id = ?", (study_id,))
        return trials

    def study_folder(self, study_id: str) -> Path:
        return self.checkpoint_dir / study_id

    def set_best_trial(self, study_id: str, trial_id: int) -> None:
        self._set_study(study_id, {"best_trial_id": trial_id})

    def set_pareto(self, study_id: str, trial_ids: list[int]) -> None:
        self._set_study(study_id, {"pareto": json.dumps(list(trial_ids))})

    def search_state(self, study_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        with self._lock:
            row = self._db.execute(
                "SELECT searcher_state, stopper_state FROM studies WHERE id = ?", (study_id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"study {study_id!r} not found")
        searcher, stopper = (json.loads(row[k]) if row[k] else None for k in ("searcher_state", "stopper_state"))
        return searcher, stopper

    def unfinished_studies(self) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM studies WHERE state IN (?, ?) ORDER BY row",
                (StudyState.PENDING.value, StudyState.RUNNING.value),
            ).fetchall()
        return [r["id"] for r in rows]

    # ---- trials ----

    def create_trial(
        self,
        study_id: str,
        trial_id: int,
        config: dict[str, Any],
        device: str,
        checkpoint: str,
    ) -> TrialRecord:
        with self._tx() as db:
            db.execute(
                "INSERT INTO trials (study_id, trial_id, state, config, device, checkpoint, start_time) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (study_id, trial_id, TrialState.RUNNING.value, json.dumps(config), device, checkpoint, time.time()),
            )
            return self._trial(study_id, trial_id)

    def move_trial(self, study_id: str, trial_id: int, device: str) -> None:
        self._set_trial(study_id, trial_id, {"device": device})

    def set_retries(self, study_id: str, trial_id: int, retries: int) -> None:
        self._set_trial(study_id, trial_id, {"retries": retries})

    def set_fused_group(self, study_id: str, trial_id: int, group: str) -> None:
        self._set_trial(study_id, trial_id, {"fused_group": group})

    def set_config_history(self, study_id: str, trial_id: int, history: list[ConfigChange]) -> None:
        self._set_trial(study_id, trial_id, {"config_history": json.dumps([asdict(change) for change in history])})

    def mark_pruned(self, study_id: str, trial_id: int, epoch: int) -> None:
        self._set_trial(study_id, trial_id, {"pruned_epoch": epoch})

    def end_trial(self, study_id: str, trial_id: int, end: TrialEnd) -> TrialRecord:
        values = {
            "state": end.state.value,
            "end_time": end.end_time,
            "objective_value": end.objective_value,
            "objective_values": json.dumps(list(end.objective_values)),
            "error": end.error,
            "failure_reason": end.failure_reason,
            "exit_code": end.exit_code,
            "exit_signal": end.exit_signal,
            "stderr_tail": end.stderr_tail,
            "violated_constraints": json.dumps(list(end.violated_constraints)),
        }
        if end.final_metrics is not None:
            values["final_metrics"] = json.dumps(end.final_metrics)
        with self._tx():
            self._set_trial(study_id, trial_id, values)
            return self._trial(study_id, trial_id)

    def add_epoch(self, study_id: str, trial_id: int, epoch: int, values: dict[str, float]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO metrics (study_id, trial_id, epoch, vals, time) VALUES (?, ?, ?, ?, ?)",
                (study_id, trial_id, epoch, json.dumps(values), time.time()),
            )
            db.execute(
                "UPDATE trials SET epochs_completed = ?, final_metrics = ? WHERE study_id = ? AND trial_id = ?",
                (epoch, json.dumps(values), study_id, trial_id),
            )

    def get_trial(self, study_id: str, trial_id: int) -> TrialRecord:
        with self._lock:
            records.study_exists(self._db, study_id)
            return self._trial(study_id, trial_id)

    def _trial(self, study_id: str, trial_id: int) -> TrialRecord:
        return records.read_trials(self._db, study_id, [trial_id], self.checkpoint_dir)[0]

    def checkpoint_path(self, stored: str) -> str:
        return records.checkpoint_path(self.checkpoint_dir, stored)

    def list_trials(self, study_id: str, page_size: int, page_token: str) -> tuple[list[TrialRecord], str]:
        after = decode_token(page_token)
        with self._lock:
            records.study_exists(self._db, study_id)
            rows = self._db.execute(
                "SELECT trial_id FROM trials WHERE study_id = ? AND trial_id > ? ORDER BY trial_id LIMIT ?",
                (study_id, after, page_size + 1),
            ).fetchall()
            ids = [r["trial_id"] for r in rows[:page_size]]
            trials = records.read_trials(self._db, study_id, ids, self.checkpoint_dir)
        token = encode_token(rows[page_size - 1]["trial_id"]) if len(rows) > page_size else ""
        return trials, token

    def trial_page_token(self, study_id: str, trial_id: int) -> str:
        return encode_token(trial_id)

    # ---- events ----

    def append_event(self, study_id: str, kind: str, payload: dict[str, Any]) -> EventRecord:
        with self._tx() as db:
            row = db.execute("SELECT last_sequence FROM studies WHERE id = ?", (study_id,)).fetchone()
            sequence = row["last_sequence"] + 1
            now = time.time()
            db.execute(
                "INSERT INTO events (study_id, sequence, time, kind, payload) VALUES (?, ?, ?, ?, ?)",
                (study_id, sequence, now, kind, json.dumps(payload)),
            )
            db.execute("UPDATE studies SET last_sequence = ? WHERE id = ?", (sequence, study_id))
        return EventRecord(study_id=study_id, sequence=sequence, time=now, kind=kind, payload=payload)

    def last_sequence(self, study_id: str) -> tuple[int, bool]:
        with self._lock:
            row = self._db.execute("SELECT last_sequence, state FROM studies WHERE id = ?", (study_id,)).fetchone()
        if row is None:
            raise NotFound(f"study {study_id!r} not found")
        return row["last_sequence"], StudyState(row["state"]).terminal

    def events_after(self, study_id: str, after: int, limit: int = 500) -> list[EventRecord]:
        with self._lock:
            records.study_exists(self._db, study_id)
            rows = self._db.execute(
                "SELECT * FROM events WHERE study_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                (study_id, after, limit),
            ).fetchall()
        return [records.event_record(study_id, r) for r in rows]


def _json_text(state: dict[str, Any] | None) -> str | None:
    if state is None:
        return None
    return state.text if isinstance(state, JsonState) else json.dumps(state)

"""SQLite storage of studies, trials, per-epoch metrics and events.

Contract:
- Thread safe: one connection guarded by a lock; every public method is one transaction, and
  `atomic()` makes several calls one transaction (the runner journals a trial's result, the
  searcher's and stopper's state and the event announcing it together, so a server killed at
  any moment leaves all of them or none).
- Only the study's runner writes its trials and events; RPC handlers only read, except
  `create_study` and state changes made through the runner.
- Durability order: a trial's epoch metrics and any event are committed before the event
  is announced to watchers (`append_event` returns only after the commit), so a watcher
  that reconnects with its last sequence sees every event exactly once.
- Sequences are per study, contiguous from 1.
- Journal mode WAL; the file is `<data-dir>/tuneyard.db`.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tuneyard.server.domain import (
    EpochRecord,
    EventRecord,
    InvalidArgument,
    NotFound,
    StudyRecord,
    StudyState,
    TrialCounts,
    TrialRecord,
    TrialState,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    request_id TEXT UNIQUE,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    test_metrics TEXT NOT NULL DEFAULT '{}',
    best_trial_id INTEGER,
    searcher_state TEXT,
    stopper_state TEXT,
    pareto TEXT NOT NULL DEFAULT '[]',
    create_time REAL NOT NULL,
    start_time REAL,
    end_time REAL,
    last_sequence INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS trials (
    study_id TEXT NOT NULL,
    trial_id INTEGER NOT NULL,
    state TEXT NOT NULL,
    config TEXT NOT NULL,
    device TEXT NOT NULL DEFAULT '',
    final_metrics TEXT NOT NULL DEFAULT '{}',
    objective_value REAL,
    error TEXT NOT NULL DEFAULT '',
    checkpoint TEXT NOT NULL DEFAULT '',
    epochs_completed INTEGER NOT NULL DEFAULT 0,
    start_time REAL,
    end_time REAL,
    objective_values TEXT NOT NULL DEFAULT '[]',
    failure_reason TEXT NOT NULL DEFAULT '',
    exit_code INTEGER,
    exit_signal TEXT NOT NULL DEFAULT '',
    stderr_tail TEXT NOT NULL DEFAULT '',
    retries INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (study_id, trial_id)
);
CREATE TABLE IF NOT EXISTS metrics (
    study_id TEXT NOT NULL,
    trial_id INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    vals TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (study_id, trial_id, epoch)
);
CREATE TABLE IF NOT EXISTS events (
    study_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (study_id, sequence)
);
"""

_TRIAL_FIELDS = {
    "state", "device", "final_metrics", "objective_value", "error", "checkpoint",
    "epochs_completed", "start_time", "end_time", "objective_values",
    "failure_reason", "exit_code", "exit_signal", "stderr_tail", "retries",
}  # fmt: skip
# Columns added after the first release, with their definitions: `_migrate` adds them to older files.
_ADDED_COLUMNS = {
    "trials": {
        "failure_reason": "TEXT NOT NULL DEFAULT ''",
        "exit_code": "INTEGER",
        "exit_signal": "TEXT NOT NULL DEFAULT ''",
        "stderr_tail": "TEXT NOT NULL DEFAULT ''",
        "retries": "INTEGER NOT NULL DEFAULT 0",
    },
    "studies": {"stopper_state": "TEXT"},
}
_JSON_TRIAL_FIELDS = {"final_metrics", "objective_values"}


def encode_token(row: int) -> str:
    return base64.urlsafe_b64encode(f"r{row}".encode()).decode()


def decode_token(token: str) -> int:
    """Page tokens are opaque to clients; a tampered one is an invalid argument."""
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        if not text.startswith("r"):
            raise ValueError
        return int(text[1:])
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("page_token", "not a token returned by this server") from None


class Storage:
    """The SQLite store; see the module docstring for its contract."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._depth = 0  # transactions open on the lock's owner; nested ones join the outer one
        self._db = sqlite3.connect(self.data_dir / "tuneyard.db", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Adds the columns a store written by an older version lacks; nothing else changes."""
        for table, columns in _ADDED_COLUMNS.items():
            have = {row["name"] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for name, definition in columns.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._db
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._db
            except BaseException:
                self._depth = 0
                self._db.execute("ROLLBACK")
                raise
            self._depth = 0
            self._db.execute("COMMIT")

    def atomic(self) -> Any:
        """`with storage.atomic():` — every call inside commits together, or not at all."""
        return self._tx()

    def study_dir(self, study_id: str) -> Path:
        return self.data_dir / "studies" / study_id

    # ---- studies ----

    def create_study(self, spec: dict[str, Any], request_id: str) -> tuple[StudyRecord, bool]:
        """Stores a new PENDING study; returns (study, created). A known request_id returns the first."""
        with self._tx() as db:
            if request_id:
                row = db.execute("SELECT id FROM studies WHERE request_id = ?", (request_id,)).fetchone()
                if row:
                    return self._study(row["id"]), False
            study_id = "st-" + uuid.uuid4().hex[:12]
            db.execute(
                "INSERT INTO studies (id, request_id, spec, state, create_time) VALUES (?, ?, ?, ?, ?)",
                (study_id, request_id or None, json.dumps(spec), StudyState.PENDING.value, time.time()),
            )
            return self._study(study_id), True

    def get_study(self, study_id: str) -> StudyRecord:
        with self._lock:
            return self._study(study_id)

    def _study(self, study_id: str) -> StudyRecord:
        row = self._db.execute("SELECT * FROM studies WHERE id = ?", (study_id,)).fetchone()
        if row is None:
            raise NotFound(f"study {study_id!r} not found")
        study = StudyRecord(
            study_id=row["id"],
            spec=json.loads(row["spec"]),
            state=StudyState(row["state"]),
            request_id=row["request_id"] or "",
            error=row["error"],
            test_metrics=json.loads(row["test_metrics"]),
            best_trial_id=row["best_trial_id"],
            pareto_ids=json.loads(row["pareto"]),
            create_time=row["create_time"],
            start_time=row["start_time"],
            end_time=row["end_time"],
        )
        counts = TrialCounts()
        for r in self._db.execute(
            "SELECT state, COUNT(*) AS n FROM trials WHERE study_id = ? GROUP BY state", (study_id,)
        ):
            setattr(counts, r["state"].lower(), r["n"])
        study.counts = counts
        spent = self._db.execute(
            "SELECT COALESCE(SUM(epochs_completed), 0) AS n FROM trials WHERE study_id = ?", (study_id,)
        ).fetchone()
        study.epochs_spent = spent["n"]
        if study.best_trial_id is not None:
            study.best_trial = self._trial(study_id, study.best_trial_id)
        study.pareto_front = [self._trial(study_id, t) for t in study.pareto_ids]
        return study

    def list_studies(
        self, page_size: int, page_token: str, state: StudyState | None = None
    ) -> tuple[list[StudyRecord], str]:
        after = decode_token(page_token)
        with self._lock:
            query, args = "SELECT row, id FROM studies WHERE row > ?", [after]
            if state is not None:
                query += " AND state = ?"
                args.append(state.value)
            rows = self._db.execute(query + " ORDER BY row LIMIT ?", (*args, page_size + 1)).fetchall()
            studies = [self._study(r["id"]) for r in rows[:page_size]]
        token = encode_token(rows[page_size - 1]["row"]) if len(rows) > page_size else ""
        return studies, token

    def update_study(self, study_id: str, **fields: Any) -> None:
        allowed = {"state", "error", "test_metrics", "best_trial_id", "searcher_state", "stopper_state",
                   "start_time", "end_time", "pareto"}  # fmt: skip
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot update {unknown}")
        as_json = ("test_metrics", "searcher_state", "stopper_state", "pareto")
        values = {k: (json.dumps(v) if k in as_json else v) for k, v in fields.items()}
        values = {k: (v.value if isinstance(v, StudyState) else v) for k, v in values.items()}
        with self._tx() as db:
            sets = ", ".join(f"{k} = ?" for k in values)
            db.execute(f"UPDATE studies SET {sets} WHERE id = ?", (*values.values(), study_id))

    def search_state(self, study_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The journaled (searcher, early stopper) state_dicts of a study; None where none was stored."""
        with self._lock:
            row = self._db.execute(
                "SELECT searcher_state, stopper_state FROM studies WHERE id = ?", (study_id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"study {study_id!r} not found")
        return tuple(json.loads(row[k]) if row[k] else None for k in ("searcher_state", "stopper_state"))  # type: ignore[return-value]

    def unfinished_studies(self) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM studies WHERE state IN (?, ?) ORDER BY row",
                (StudyState.PENDING.value, StudyState.RUNNING.value),
            ).fetchall()
        return [r["id"] for r in rows]

    # ---- trials ----

    def create_trial(self, study_id: str, trial_id: int, config: dict[str, Any], device: str) -> TrialRecord:
        with self._tx() as db:
            db.execute(
                "INSERT INTO trials (study_id, trial_id, state, config, device, start_time) VALUES (?, ?, ?, ?, ?, ?)",
                (study_id, trial_id, TrialState.RUNNING.value, json.dumps(config), device, time.time()),
            )
            return self._trial(study_id, trial_id)

    def update_trial(self, study_id: str, trial_id: int, **fields: Any) -> TrialRecord:
        unknown = set(fields) - _TRIAL_FIELDS
        if unknown:
            raise ValueError(f"cannot update {unknown}")
        values = {
            k: (json.dumps(v) if k in _JSON_TRIAL_FIELDS else v.value if isinstance(v, TrialState) else v)
            for k, v in fields.items()
        }
        with self._tx() as db:
            sets = ", ".join(f"{k} = ?" for k in values)
            db.execute(
                f"UPDATE trials SET {sets} WHERE study_id = ? AND trial_id = ?",
                (*values.values(), study_id, trial_id),
            )
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
            self._study_exists(study_id)
            return self._trial(study_id, trial_id)

    def _study_exists(self, study_id: str) -> None:
        if self._db.execute("SELECT 1 FROM studies WHERE id = ?", (study_id,)).fetchone() is None:
            raise NotFound(f"study {study_id!r} not found")

    def _trial(self, study_id: str, trial_id: int) -> TrialRecord:
        row = self._db.execute(
            "SELECT * FROM trials WHERE study_id = ? AND trial_id = ?", (study_id, trial_id)
        ).fetchone()
        if row is None:
            raise NotFound(f"trial {trial_id} of study {study_id!r} not found")
        epochs = [
            EpochRecord(epoch=r["epoch"], values=json.loads(r["vals"]), time=r["time"])
            for r in self._db.execute(
                "SELECT epoch, vals, time FROM metrics WHERE study_id = ? AND trial_id = ? ORDER BY epoch",
                (study_id, trial_id),
            )
        ]
        return TrialRecord(
            study_id=study_id,
            trial_id=trial_id,
            state=TrialState(row["state"]),
            config=json.loads(row["config"]),
            device=row["device"],
            metrics=epochs,
            final_metrics=json.loads(row["final_metrics"]),
            objective_value=row["objective_value"],
            error=row["error"],
            checkpoint=row["checkpoint"],
            epochs_completed=row["epochs_completed"],
            start_time=row["start_time"],
            end_time=row["end_time"],
            objective_values=json.loads(row["objective_values"]),
            failure_reason=row["failure_reason"],
            exit_code=row["exit_code"],
            exit_signal=row["exit_signal"],
            stderr_tail=row["stderr_tail"],
            retries=row["retries"],
        )

    def list_trials(self, study_id: str, page_size: int, page_token: str) -> tuple[list[TrialRecord], str]:
        after = decode_token(page_token)
        with self._lock:
            self._study_exists(study_id)
            rows = self._db.execute(
                "SELECT trial_id FROM trials WHERE study_id = ? AND trial_id > ? ORDER BY trial_id LIMIT ?",
                (study_id, after, page_size + 1),
            ).fetchall()
            trials = [self._trial(study_id, r["trial_id"]) for r in rows[:page_size]]
        token = encode_token(rows[page_size - 1]["trial_id"]) if len(rows) > page_size else ""
        return trials, token

    def max_trial_id(self, study_id: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(trial_id) AS m FROM trials WHERE study_id = ?", (study_id,)).fetchone()
        return row["m"] or 0

    # ---- events ----

    def append_event(self, study_id: str, kind: str, payload: dict[str, Any]) -> EventRecord:
        """Stores the next event of the study; it is durable when this returns."""
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
        """(the study's last event sequence, whether the study has ended)."""
        with self._lock:
            row = self._db.execute("SELECT last_sequence, state FROM studies WHERE id = ?", (study_id,)).fetchone()
        if row is None:
            raise NotFound(f"study {study_id!r} not found")
        return row["last_sequence"], StudyState(row["state"]).terminal

    def events_after(self, study_id: str, after: int, limit: int = 500) -> list[EventRecord]:
        with self._lock:
            self._study_exists(study_id)
            rows = self._db.execute(
                "SELECT * FROM events WHERE study_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                (study_id, after, limit),
            ).fetchall()
        return [
            EventRecord(
                study_id=study_id,
                sequence=r["sequence"],
                time=r["time"],
                kind=r["kind"],
                payload=json.loads(r["payload"]),
            )
            for r in rows
        ]

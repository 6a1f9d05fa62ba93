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
- Journal mode WAL; the file is `<data-dir>/tuneyard.db`, marked ours by `PRAGMA application_id`
  (APPLICATION_ID). Opening refuses a file that is not a tuneyard store (see `Storage`).
- Failures of the store itself leave every method as a `StoreError` (see `sqlite_file.store_error`), never as
  sqlite3's: a damaged page StoreDamaged, a full disk StoreFull, a locked or failing file
  StoreUnavailable. A failed transaction is rolled back, so the store works again once the cause
  is gone (space freed). Errors of ours (a broken constraint, bad SQL) stay sqlite3 errors: bugs.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from tuneyard.server.storage.sqlite_file import (
    APPLICATION_ID,
    DB_NAME,
    MAX_PROBLEMS,
    StoreLock,
    check_owner,
    connect,
    integrity_problems,
    refusing,
    store_error,
)
from tuneyard.server.study.domain import (
    EpochRecord,
    EventRecord,
    InvalidArgument,
    NotFound,
    StoreDamaged,
    StudyRecord,
    StudyState,
    TrialRecord,
    TrialState,
)

__all__ = ["APPLICATION_ID", "DB_NAME", "SCHEMA", "Storage", "decode_token", "encode_token", "store_error"]

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
    pruned_epoch INTEGER NOT NULL DEFAULT 0,
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
    "state",
    "device",
    "final_metrics",
    "objective_value",
    "error",
    "checkpoint",
    "epochs_completed",
    "start_time",
    "end_time",
    "objective_values",
    "failure_reason",
    "exit_code",
    "exit_signal",
    "stderr_tail",
    "retries",
    "pruned_epoch",
}
# Columns added after the first release, with their definitions: `_migrate` adds them to older files.
_ADDED_COLUMNS = {
    "trials": {
        "failure_reason": "TEXT NOT NULL DEFAULT ''",
        "exit_code": "INTEGER",
        "exit_signal": "TEXT NOT NULL DEFAULT ''",
        "stderr_tail": "TEXT NOT NULL DEFAULT ''",
        "retries": "INTEGER NOT NULL DEFAULT 0",
        "pruned_epoch": "INTEGER NOT NULL DEFAULT 0",
    },
    "studies": {"stopper_state": "TEXT"},
}
_JSON_TRIAL_FIELDS = {"final_metrics", "objective_values"}


# Tables a tuneyard store may hold (SQLite's own `sqlite_*` tables aside): a file of the release before
# APPLICATION_ID is recognised by them.
_OWN_TABLES = frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA))
_MAX_ROW = 2**63 - 1  # SQLite's INTEGER is signed 64-bit: no row id, hence no page token, lies beyond
_TOKEN_TEXT = re.compile(r"r(0|[1-9][0-9]{0,18})")
_MAX_TOKEN_CHARS = 32  # encode_token(_MAX_ROW) has 28


_CHUNK = 500  # ids bound per query, well below SQLite's limit on variables


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _marks(chunk: list[Any]) -> str:
    return ", ".join("?" * len(chunk))


def encode_token(row: int) -> str:
    return base64.urlsafe_b64encode(f"r{row}".encode()).decode()


def decode_token(token: str) -> int:
    """Page tokens are opaque to clients: anything but what `encode_token` made of a row id SQLite can
    hold (0..2**63-1) is an invalid argument, never a query with a number SQLite cannot bind."""
    if not token:
        return 0
    row = _token_row(token)
    if row is None:
        raise InvalidArgument("page_token", "not a token returned by this server")
    return row


def _token_row(token: str) -> int | None:
    if len(token) > _MAX_TOKEN_CHARS:
        return None
    try:
        match = _TOKEN_TEXT.fullmatch(base64.urlsafe_b64decode(token).decode("ascii"))
    except ValueError:  # not base64 (binascii.Error), not ASCII (UnicodeError)
        return None
    row = int(match.group(1)) if match else -1
    return row if 0 <= row <= _MAX_ROW and encode_token(row) == token else None


class Storage:
    """The SQLite store; see the module docstring for its contract.

    Opening raises StoreInvalid, before anything is written, for a file that is not a tuneyard
    store: empty, not SQLite, truncated or with a damaged header, or another application's (its
    application_id, or tables of its own); StoreFull or StoreUnavailable when the disk is full or
    the file cannot be opened. A new store is created whole under a temporary name and linked into
    place, so no crash leaves an empty `tuneyard.db` behind: an empty one is always refused, never
    taken for a fresh store — its studies are lost, and an empty `studies/` would prove nothing,
    as checkpoints may live elsewhere (`checkpoint_dir`). With `check_integrity`, a store that
    fails `PRAGMA integrity_check` is refused too (StoreDamaged).
    """

    def __init__(self, data_dir: Path, checkpoint_dir: Path | None = None, *, check_integrity: bool = False) -> None:
        self.data_dir = Path(data_dir)
        # Trials' checkpoints: stored as paths relative to this folder, so the data directory may move.
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else self.data_dir / "studies"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / DB_NAME
        self._lock = StoreLock(self.path)
        self._depth = 0  # transactions open on the lock's owner; nested ones join the outer one
        with refusing(self.path):
            self._db = connect(self.path, SCHEMA)
            try:
                self._prepare(check_integrity)
            except BaseException:
                self._db.close()
                raise

    def _prepare(self, check_integrity: bool) -> None:
        """Makes sure the file is ours (and sound, when asked) before writing to it, then updates its schema."""
        check_owner(self._db, self.path, _OWN_TABLES)  # the first read of the file: a bad header fails here
        if check_integrity:
            self._refuse_damage()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Adds the columns a store written by an older version lacks, and marks a store of the release
        before APPLICATION_ID as ours; nothing else changes."""
        for table, columns in _ADDED_COLUMNS.items():
            have = {row["name"] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for name, definition in columns.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")
        if self._db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    def check_integrity(self) -> list[str]:
        """The problems `PRAGMA integrity_check` finds (none: the store is sound); see `integrity_problems`."""
        with self._lock:
            return integrity_problems(self._db)

    def _refuse_damage(self) -> None:
        problems = self.check_integrity()
        if problems:
            count = f"{len(problems)}{' or more' if len(problems) >= MAX_PROBLEMS else ''}"
            raise StoreDamaged(
                f"{self.path} failed PRAGMA integrity_check ({count} found, the first: {problems[0]}); "
                f"restore a backup, or salvage its rows with `sqlite3 {self.path} .recover`"
            )

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
                self._db.execute("COMMIT")  # inside: a COMMIT that fails (full disk) is rolled back too
            except BaseException:
                self._rollback()
                raise
            finally:
                self._depth = 0

    def _rollback(self) -> None:
        """Ends a failed transaction unless SQLite did already (it does on a full disk): a ROLLBACK
        without a transaction would fail and hide the error that caused it."""
        if self._db.in_transaction:
            with suppress(sqlite3.Error):  # the cause is raised; a rollback failing as well adds nothing
                self._db.execute("ROLLBACK")

    def atomic(self) -> Any:
        """`with storage.atomic():` — every call inside commits together, or not at all."""
        return self._tx()

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
        return self._studies([row])[0]

    def _studies(self, rows: list[sqlite3.Row]) -> list[StudyRecord]:
        """Study records for `rows` of the studies table: one query counts every study's trials, and
        two more per study read its best trial and Pareto front (not a query per trial)."""
        studies = [
            StudyRecord(
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
            for row in rows
        ]
        by_id = {study.study_id: study for study in studies}
        for chunk in _chunks(list(by_id)):
            for r in self._db.execute(
                "SELECT study_id, state, COUNT(*) AS n, COALESCE(SUM(epochs_completed), 0) AS epochs FROM trials "
                f"WHERE study_id IN ({_marks(chunk)}) GROUP BY study_id, state",
                chunk,
            ):
                study = by_id[r["study_id"]]
                setattr(study.counts, r["state"].lower(), r["n"])
                study.epochs_spent += r["epochs"]
        for study in studies:
            best = [] if study.best_trial_id is None else [study.best_trial_id]
            trials = self._trials(study.study_id, best + study.pareto_ids)
            if best:
                study.best_trial = trials[0]
            study.pareto_front = trials[len(best) :]
        return studies

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
            studies = self._studies(rows[:page_size])
        token = encode_token(rows[page_size - 1]["row"]) if len(rows) > page_size else ""
        return studies, token

    def study_page_token(self, study_id: str) -> str:
        """The page token that lists the studies after `study_id` (for a page cut short by size)."""
        with self._lock:
            row = self._db.execute("SELECT row FROM studies WHERE id = ?", (study_id,)).fetchone()
        if row is None:
            raise NotFound(f"study {study_id!r} not found")
        return encode_token(row["row"])

    def update_study(self, study_id: str, **fields: Any) -> None:
        allowed = {
            "state",
            "error",
            "test_metrics",
            "best_trial_id",
            "searcher_state",
            "stopper_state",
            "start_time",
            "end_time",
            "pareto",
        }
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
        return self._trials(study_id, [trial_id])[0]

    def _trials(self, study_id: str, trial_ids: list[int]) -> list[TrialRecord]:
        """Trials of one study with their epochs, in the order asked: two queries per _CHUNK of them."""
        rows: dict[int, sqlite3.Row] = {}
        epochs: dict[int, list[EpochRecord]] = {t: [] for t in trial_ids}
        for chunk in _chunks(sorted(set(trial_ids))):
            marks = _marks(chunk)
            for row in self._db.execute(
                f"SELECT * FROM trials WHERE study_id = ? AND trial_id IN ({marks})", (study_id, *chunk)
            ):
                rows[row["trial_id"]] = row
            for r in self._db.execute(
                "SELECT trial_id, epoch, vals, time FROM metrics "
                f"WHERE study_id = ? AND trial_id IN ({marks}) ORDER BY trial_id, epoch",
                (study_id, *chunk),
            ):
                epochs[r["trial_id"]].append(
                    EpochRecord(epoch=r["epoch"], values=json.loads(r["vals"]), time=r["time"])
                )
        missing = next((t for t in trial_ids if t not in rows), None)
        if missing is not None:
            raise NotFound(f"trial {missing} of study {study_id!r} not found")
        return [self._trial_record(study_id, rows[t], epochs[t]) for t in trial_ids]

    def _trial_record(self, study_id: str, row: sqlite3.Row, epochs: list[EpochRecord]) -> TrialRecord:
        return TrialRecord(
            study_id=study_id,
            trial_id=row["trial_id"],
            state=TrialState(row["state"]),
            config=json.loads(row["config"]),
            device=row["device"],
            metrics=epochs,
            final_metrics=json.loads(row["final_metrics"]),
            objective_value=row["objective_value"],
            error=row["error"],
            checkpoint=self.checkpoint_path(row["checkpoint"]),
            epochs_completed=row["epochs_completed"],
            start_time=row["start_time"],
            end_time=row["end_time"],
            objective_values=json.loads(row["objective_values"]),
            failure_reason=row["failure_reason"],
            exit_code=row["exit_code"],
            exit_signal=row["exit_signal"],
            stderr_tail=row["stderr_tail"],
            retries=row["retries"],
            pruned_epoch=row["pruned_epoch"],
        )

    def checkpoint_path(self, stored: str) -> str:
        """Where a stored checkpoint lies now: under `checkpoint_dir`. Stores written before paths were
        kept relative hold absolute ones (`<old dir>/<study>/trial-<n>/checkpoint.pt`); those are
        re-rooted the same way, so a copied or moved data directory keeps its checkpoints."""
        if not stored:
            return ""
        path = Path(stored)
        if path.is_absolute():
            path = Path(*path.parts[-3:])
        return str(self.checkpoint_dir / path)

    def list_trials(self, study_id: str, page_size: int, page_token: str) -> tuple[list[TrialRecord], str]:
        after = decode_token(page_token)
        with self._lock:
            self._study_exists(study_id)
            rows = self._db.execute(
                "SELECT trial_id FROM trials WHERE study_id = ? AND trial_id > ? ORDER BY trial_id LIMIT ?",
                (study_id, after, page_size + 1),
            ).fetchall()
            trials = self._trials(study_id, [r["trial_id"] for r in rows[:page_size]])
        token = encode_token(rows[page_size - 1]["trial_id"]) if len(rows) > page_size else ""
        return trials, token

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

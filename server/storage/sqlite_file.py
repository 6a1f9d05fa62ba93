"""The store's SQLite file: opening it safely, knowing it is ours, and naming SQLite's failures.

`storage.Storage` holds the rows; this module holds what concerns the file itself. A new store is
written whole under a temporary name and linked into place; a file that is not a tuneyard store is
refused before anything is written (`invalid_store`); SQLite's failures of the file itself become
domain errors (`store_error`): damage StoreDamaged, a full disk StoreFull, anything else the file
does StoreUnavailable. Errors of ours (bad SQL, a broken constraint) stay sqlite3 errors: bugs.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType

from tuneyard.server.study.domain import StoreDamaged, StoreError, StoreFull, StoreInvalid, StoreUnavailable

DB_NAME = "tuneyard.db"
APPLICATION_ID = 0x54594442  # "TYDB": `PRAGMA application_id` of every tuneyard store
_TABLES_QUERY = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'"
# SQLite's primary result codes (sqlite3.h). Python 3.10's errors lack `sqlite_errorcode`; their
# messages stand in there.
_SQLITE_ERROR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 1, 11, 13, 26
DAMAGE = (_SQLITE_CORRUPT, _SQLITE_NOTADB)
_CODE_IN_MESSAGE = {"malformed": _SQLITE_CORRUPT, "not a database": _SQLITE_NOTADB, "disk is full": _SQLITE_FULL}
MAX_PROBLEMS = 100  # integrity_check stops after this many


def primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return int(code) & 0xFF  # an extended code carries its primary one in the low byte
    return next((c for text, c in _CODE_IN_MESSAGE.items() if text in str(exc)), None)


def store_error(exc: sqlite3.Error, path: Path) -> StoreError | None:
    """The domain error for a failure of the store itself; None for an error of ours (a broken
    constraint, bad SQL: SQLITE_ERROR), which stays a bug."""
    code = primary_code(exc)
    if code in DAMAGE:
        return StoreDamaged(f"the store is damaged: {exc} ({path}); stop the server and restart it with --check-store")
    if code == _SQLITE_FULL:
        return StoreFull(f"the server's store is full: free disk space for {path} ({exc}), then retry")
    if isinstance(exc, sqlite3.OperationalError) and code != _SQLITE_ERROR:
        return StoreUnavailable(f"the store is unavailable: {exc} ({path}); retry later")
    return None


class StoreLock:
    """The store's re-entrant lock. Every use of the connection holds it, so its exit is the one place
    all of SQLite's errors pass: failures of the store itself leave it as `StoreError`s."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.RLock()
        self._path = path

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._lock.release()
        if isinstance(exc, sqlite3.Error):
            error = store_error(exc, self._path)
            if error is not None:
                raise error from exc


def invalid_store(path: Path, why: str) -> StoreInvalid:
    return StoreInvalid(f"{path} is not a valid tuneyard store: {why}; restore a backup, or move it away to start anew")


@contextmanager
def refusing(path: Path) -> Iterator[None]:
    """While opening: a file SQLite cannot read as a database is no valid store; other failures as ever."""
    try:
        yield
    except sqlite3.Error as exc:
        if primary_code(exc) in DAMAGE:
            raise invalid_store(path, f"SQLite reports '{exc}'") from exc
        error = store_error(exc, path)
        if error is None:
            raise
        raise error from exc


def create_store(path: Path, schema: str) -> None:
    """Writes a new store under a temporary name and links it into place: a crash or a full disk leaves
    no store or a whole one, never the empty file that opening refuses. (Hard links work wherever
    SQLite's WAL does: local file systems.)"""
    partial = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        db = sqlite3.connect(partial, isolation_level=None)
        try:
            db.executescript(f"BEGIN;\n{schema}\nPRAGMA application_id = {APPLICATION_ID};\nCOMMIT;")
        finally:
            db.close()
        with suppress(FileExistsError):  # another server created it first: open that one
            os.link(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def connect(path: Path, schema: str) -> sqlite3.Connection:
    """The store's connection, creating the store where there is none; an empty file is refused."""
    if not path.exists():
        create_store(path, schema)
    elif path.stat().st_size == 0:
        raise invalid_store(
            path, "the file is empty (0 bytes), yet tuneyard never leaves one empty: its studies are lost"
        )
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.row_factory = sqlite3.Row
    return db


def check_owner(db: sqlite3.Connection, path: Path, own_tables: frozenset[str]) -> None:
    """Refuses another application's SQLite file. Ours carry APPLICATION_ID; a file of the release
    before it has the id 0 and only tables in `own_tables` (the caller then marks it ours)."""
    app_id = db.execute("PRAGMA application_id").fetchone()[0]
    if app_id == APPLICATION_ID:
        return
    if app_id != 0:
        raise invalid_store(path, f"it belongs to another application (application_id {app_id:#x})")
    tables = {row[0] for row in db.execute(_TABLES_QUERY)}
    foreign = sorted(tables - own_tables)
    if foreign:
        raise invalid_store(path, f"it holds tables of another application ({', '.join(foreign)})")
    if "studies" not in tables:
        raise invalid_store(path, "it holds no tuneyard tables")


def integrity_problems(db: sqlite3.Connection) -> list[str]:
    """What SQLite's `PRAGMA integrity_check` finds, one a line (at most MAX_PROBLEMS; none: the file is
    sound). It reads every page, so it takes time in proportion to the store's size."""
    try:
        rows = db.execute(f"PRAGMA integrity_check({MAX_PROBLEMS})").fetchall()
    except sqlite3.DatabaseError as exc:  # damage so bad that the check itself stops
        if primary_code(exc) not in DAMAGE:
            raise
        return [f"the check itself stopped: {exc}"]
    lines = [line for row in rows for line in row[0].splitlines() if not line.startswith("*** in database")]
    return [] if lines == ["ok"] else lines

"""The open store file: one SQLite connection, the lock every use of it holds, and transactions that nest."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any

from tuneyard.server.storage.schema import OWN_TABLES, SCHEMA, migrate
from tuneyard.server.storage.sqlite_file import (
    MAX_PROBLEMS,
    StoreLock,
    check_owner,
    connect,
    integrity_problems,
    refusing,
)
from tuneyard.server.study.domain import StoreDamaged


class StoreConnection:
    """The store's file, opened; `sqlite.Storage` reads and writes its rows.

    Opening raises StoreInvalid, before anything is written, for a file that is not a tuneyard
    store: empty, not SQLite, truncated or with a damaged header, or another application's (its
    application_id, or tables of its own); StoreFull or StoreUnavailable when the disk is full or
    the file cannot be opened. A new store is created whole under a temporary name and linked into
    place, so no crash leaves an empty `tuneyard.db` behind: an empty one is always refused, never
    taken for a fresh store — its studies are lost, and an empty `studies/` would prove nothing,
    as checkpoints may live elsewhere (`checkpoint_dir`). With `check_integrity`, a store that
    fails `PRAGMA integrity_check` is refused too (StoreDamaged).
    """

    def __init__(self, path: Path, *, check_integrity: bool = False) -> None:
        self.path = path
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
        check_owner(self._db, self.path, OWN_TABLES)  # the first read of the file: a bad header fails here
        if check_integrity:
            self._refuse_damage()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        migrate(self._db)

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

    def atomic(self) -> AbstractContextManager[Any]:
        """`with storage.atomic():` — every call inside commits together, or not at all."""
        return self._tx()

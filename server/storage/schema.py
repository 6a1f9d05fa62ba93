"""The store's tables, and the migration that brings a file written by an older release up to them."""

from __future__ import annotations

import re
import sqlite3

from tuneyard.server.storage.sqlite_file import APPLICATION_ID

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
    last_sequence INTEGER NOT NULL DEFAULT 0,
    budget_start REAL
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
    violated_constraints TEXT NOT NULL DEFAULT '[]',
    fused_group TEXT NOT NULL DEFAULT '',
    config_history TEXT NOT NULL DEFAULT '[]',
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

# Columns added after the first release, with their definitions: `migrate` adds them to older files.
ADDED_COLUMNS = {
    "trials": {
        "failure_reason": "TEXT NOT NULL DEFAULT ''",
        "exit_code": "INTEGER",
        "exit_signal": "TEXT NOT NULL DEFAULT ''",
        "stderr_tail": "TEXT NOT NULL DEFAULT ''",
        "retries": "INTEGER NOT NULL DEFAULT 0",
        "pruned_epoch": "INTEGER NOT NULL DEFAULT 0",
        "violated_constraints": "TEXT NOT NULL DEFAULT '[]'",
        "fused_group": "TEXT NOT NULL DEFAULT ''",
        "config_history": "TEXT NOT NULL DEFAULT '[]'",
    },
    "studies": {"stopper_state": "TEXT", "budget_start": "REAL"},
}

# Tables a tuneyard store may hold (SQLite's own `sqlite_*` tables aside): a file of the release before
# APPLICATION_ID is recognised by them.
OWN_TABLES = frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA))


def migrate(db: sqlite3.Connection) -> None:
    """Adds the columns a store written by an older version lacks, and marks a store of the release
    before APPLICATION_ID as ours; nothing else changes."""
    for table, columns in ADDED_COLUMNS.items():
        have = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, definition in columns.items():
            if name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")
    if db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")

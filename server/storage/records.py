"""Reading rows into domain records, in a bounded number of queries (never one per trial).

Each function runs on a connection whose lock the caller holds; none writes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneyard.server.study.domain import (
    ConfigChange,
    EpochRecord,
    EventRecord,
    NotFound,
    StudyRecord,
    StudyState,
    TrialRecord,
    TrialState,
)

_CHUNK = 500  # ids bound per query, well below SQLite's limit on variables


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _marks(chunk: list[Any]) -> str:
    return ", ".join("?" * len(chunk))


def checkpoint_path(checkpoint_dir: Path, stored: str) -> str:
    """Where a stored checkpoint lies now: under `checkpoint_dir`. Stores written before paths were
    kept relative hold absolute ones (`<old dir>/<study>/trial-<n>/checkpoint.pt`); those are
    re-rooted the same way, so a copied or moved data directory keeps its checkpoints."""
    if not stored:
        return ""
    path = Path(stored)
    if path.is_absolute():
        path = Path(*path.parts[-3:])
    return str(checkpoint_dir / path)


def study_exists(db: sqlite3.Connection, study_id: str) -> None:
    if db.execute("SELECT 1 FROM studies WHERE id = ?", (study_id,)).fetchone() is None:
        raise NotFound(f"study {study_id!r} not found")


def read_study(db: sqlite3.Connection, study_id: str, checkpoint_dir: Path) -> StudyRecord:
    row = db.execute("SELECT * FROM studies WHERE id = ?", (study_id,)).fetchone()
    if row is None:
        raise NotFound(f"study {study_id!r} not found")
    return read_studies(db, [row], checkpoint_dir)[0]


def read_studies(db: sqlite3.Connection, rows: list[sqlite3.Row], checkpoint_dir: Path) -> list[StudyRecord]:
    """Study records for `rows` of the studies table: one query counts every study's trials, and
    two more per study read its best trial and Pareto front (not a query per trial)."""
    studies = [_study_record(row) for row in rows]
    by_id = {study.study_id: study for study in studies}
    for chunk in _chunks(list(by_id)):
        for r in db.execute(
            "SELECT study_id, state, COUNT(*) AS n, COALESCE(SUM(epochs_completed), 0) AS epochs FROM trials "
            f"WHERE study_id IN ({_marks(chunk)}) GROUP BY study_id, state",
            chunk,
        ):
            study = by_id[r["study_id"]]
            setattr(study.counts, r["state"].lower(), r["n"])
            study.epochs_spent += r["epochs"]
    for study in studies:
        best = [] if study.best_trial_id is None else [study.best_trial_id]
        trials = read_trials(db, study.study_id, best + study.pareto_ids, checkpoint_dir)
        if best:
            study.best_trial = trials[0]
        study.pareto_front = trials[len(best) :]
    return studies


def _study_record(row: sqlite3.Row) -> StudyRecord:
    return StudyRecord(
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


def read_trials(db: sqlite3.Connection, study_id: str, trial_ids: list[int], checkpoint_dir: Path) -> list[TrialRecord]:
    """Trials of one study with their epochs, in the order asked: two queries per _CHUNK of them.
    Raises NotFound for the first id the study lacks."""
    rows: dict[int, sqlite3.Row] = {}
    epochs: dict[int, list[EpochRecord]] = {t: [] for t in trial_ids}
    for chunk in _chunks(sorted(set(trial_ids))):
        marks = _marks(chunk)
        for row in db.execute(f"SELECT * FROM trials WHERE study_id = ? AND trial_id IN ({marks})", (study_id, *chunk)):
            rows[row["trial_id"]] = row
        for r in db.execute(
            "SELECT trial_id, epoch, vals, time FROM metrics "
            f"WHERE study_id = ? AND trial_id IN ({marks}) ORDER BY trial_id, epoch",
            (study_id, *chunk),
        ):
            epochs[r["trial_id"]].append(EpochRecord(epoch=r["epoch"], values=json.loads(r["vals"]), time=r["time"]))
    missing = next((t for t in trial_ids if t not in rows), None)
    if missing is not None:
        raise NotFound(f"trial {missing} of study {study_id!r} not found")
    return [_trial_record(study_id, rows[t], epochs[t], checkpoint_dir) for t in trial_ids]


def _trial_record(study_id: str, row: sqlite3.Row, epochs: list[EpochRecord], checkpoint_dir: Path) -> TrialRecord:
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
        checkpoint=checkpoint_path(checkpoint_dir, row["checkpoint"]),
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
        violated_constraints=json.loads(row["violated_constraints"]),
        fused_group=row["fused_group"],
        config_history=[ConfigChange(**change) for change in json.loads(row["config_history"])],
    )


def event_record(study_id: str, row: sqlite3.Row) -> EventRecord:
    return EventRecord(
        study_id=study_id,
        sequence=row["sequence"],
        time=row["time"],
        kind=row["kind"],
        payload=json.loads(row["payload"]),
    )

"""Reads of studies and trials take a bounded number of queries, not one per trial (issue 14, item 6)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneyard.server.storage.sqlite import Storage
from tuneyard.server.study.domain import TrialEnd, TrialState

STUDIES, TRIALS, EPOCHS = 6, 40, 3


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    store = Storage(tmp_path / "data")
    for s in range(STUDIES):
        study, _ = store.create_study({"name": f"s{s}"}, "")
        for t in range(1, TRIALS + 1):
            store.create_trial(study.study_id, t, {"x": t}, "cpu:0", "")
            for epoch in range(1, EPOCHS + 1):
                store.add_epoch(study.study_id, t, epoch, {"val_accuracy": t / 100 + epoch})
            store.end_trial(study.study_id, t, TrialEnd(TrialState.COMPLETED, time.time(), objective_value=t / 100))
        store.set_best_trial(study.study_id, TRIALS)
        store.set_pareto(study.study_id, list(range(1, TRIALS + 1)))
    yield store
    store.close()


def count_queries(store: Storage) -> list[str]:
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    return statements


def test_listing_studies_does_not_query_per_trial(storage):
    statements = count_queries(storage)
    studies, _ = storage.list_studies(100, "")
    storage._db.set_trace_callback(None)
    assert len(studies) == STUDIES
    for study in studies:
        assert study.counts.completed == TRIALS and study.epochs_spent == TRIALS * EPOCHS
        assert study.best_trial is not None and study.best_trial.trial_id == TRIALS
        assert [t.trial_id for t in study.pareto_front] == list(range(1, TRIALS + 1))
        assert all([e.epoch for e in t.metrics] == [1, 2, 3] for t in study.pareto_front)
    # The page, the counts of all its studies, and per study its trials and their epochs.
    assert len(statements) <= 2 + 2 * STUDIES, statements


def test_listing_trials_takes_three_queries(storage):
    study_id = storage.list_studies(1, "")[0][0].study_id
    statements = count_queries(storage)
    trials, token = storage.list_trials(study_id, 25, "")
    storage._db.set_trace_callback(None)
    assert [t.trial_id for t in trials] == list(range(1, 26)) and token
    assert all(
        len(t.metrics) == EPOCHS and t.metrics[-1].values["val_accuracy"] == t.trial_id / 100 + EPOCHS for t in trials
    )
    assert len(statements) <= 4, statements  # the study exists, the page, its trials, their epochs
    rest, _ = storage.list_trials(study_id, 100, token)
    assert [t.trial_id for t in rest] == list(range(26, TRIALS + 1))


def test_a_missing_trial_is_still_not_found(storage):
    from tuneyard.server.study.domain import NotFound

    study_id = storage.list_studies(1, "")[0][0].study_id
    with pytest.raises(NotFound, match="trial 999"):
        storage.get_trial(study_id, 999)

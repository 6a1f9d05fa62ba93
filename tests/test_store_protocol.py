"""The SQLite `Storage` keeps the `Store` contract: every typed update round-trips through a real file,
`atomic()` is all-or-nothing and nests, unknown ids are NotFound, and the class satisfies the Protocol."""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO

from tuneyard.server.storage.sqlite import Storage
from tuneyard.server.storage.store import Store
from tuneyard.server.study.domain import NotFound, StudyState, TrialEnd, TrialState

CONFIG = {"lr": 0.1, "layers": 2}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(path: Path) -> Iterator[Storage]:
    storage = Storage(path)
    yield storage
    storage.close()


def _reopened(path: Path) -> Storage:
    """A second Storage on the same file: what it reads was committed, not held in memory."""
    return Storage(path)


def _study(store: Storage) -> str:
    return store.create_study({"name": "s"}, "")[0].study_id


def test_study_updates_round_trip(store, path):
    study_id = _study(store)
    store.start_study(study_id, 100.0)
    store.journal_search(study_id, {"seen": [1, 2]}, {"state": {"rungs": 3}, "reported": {"1": 2}})
    store.create_trial(study_id, 1, CONFIG, "cpu:0", f"{study_id}/trial-1/checkpoint.pt")
    store.create_trial(study_id, 2, CONFIG, "cpu:1", f"{study_id}/trial-2/checkpoint.pt")
    store.set_best_trial(study_id, 2)
    store.set_pareto(study_id, [2, 1])
    running = _reopened(path)
    try:
        study = running.get_study(study_id)
        assert study.state == StudyState.RUNNING and study.start_time == 100.0 and study.end_time is None
        assert running.search_state(study_id) == ({"seen": [1, 2]}, {"state": {"rungs": 3}, "reported": {"1": 2}})
        assert study.best_trial is not None and study.best_trial.trial_id == 2
        assert study.pareto_ids == [2, 1] and [t.trial_id for t in study.pareto_front] == [2, 1]
        assert running.unfinished_studies() == [study_id]
    finally:
        running.close()
    store.journal_search(study_id, None, None)
    store.end_study(study_id, StudyState.COMPLETED, end_time=200.0, test_metrics={"test_accuracy": 0.9})
    ended = _reopened(path)
    try:
        study = ended.get_study(study_id)
        assert (study.state, study.end_time, study.error, study.test_metrics) == (
            StudyState.COMPLETED,
            200.0,
            "",
            {"test_accuracy": 0.9},
        )
        assert ended.search_state(study_id) == (None, None)
        assert ended.unfinished_studies() == []
    finally:
        ended.close()


def test_a_failed_study_keeps_its_error_and_no_test_metrics(store):
    study_id = _study(store)
    store.end_study(study_id, StudyState.FAILED, end_time=5.0, error="no trial completed (3 failed)")
    study = store.get_study(study_id)
    assert (study.state, study.end_time, study.error, study.test_metrics) == (
        StudyState.FAILED,
        5.0,
        "no trial completed (3 failed)",
        {},
    )


def test_trial_updates_round_trip(store, path):
    study_id = _study(store)
    created = store.create_trial(study_id, 1, CONFIG, "cpu:0", f"{study_id}/trial-1/checkpoint.pt")
    assert created.state == TrialState.RUNNING and created.start_time is not None
    assert created.checkpoint == str(path / "studies" / study_id / "trial-1" / "checkpoint.pt")
    store.add_epoch(study_id, 1, 1, {"val_accuracy": 0.5})
    store.move_trial(study_id, 1, "gpu:1")
    store.set_retries(study_id, 1, 2)
    store.mark_pruned(study_id, 1, 1)
    reopened = _reopened(path)
    try:
        trial = reopened.get_trial(study_id, 1)
        assert (trial.config, trial.device, trial.retries, trial.pruned_epoch) == (CONFIG, "gpu:1", 2, 1)
        assert trial.checkpoint == created.checkpoint and trial.state == TrialState.RUNNING
        assert trial.final_metrics == {"val_accuracy": 0.5} and trial.epochs_completed == 1
    finally:
        reopened.close()


def test_end_trial_stores_every_field_of_a_completed_run(store, path):
    study_id = _study(store)
    store.create_trial(study_id, 1, CONFIG, "cpu:0", "")
    end = TrialEnd(TrialState.COMPLETED, 50.0, objective_value=0.75, objective_values=[0.75, 3.0])
    returned = store.end_trial(study_id, 1, end)
    reopened = _reopened(path)
    try:
        trial = reopened.get_trial(study_id, 1)
    finally:
        reopened.close()
    assert trial == returned
    assert (trial.state, trial.end_time, trial.objective_value, trial.objective_values) == (
        TrialState.COMPLETED,
        50.0,
        0.75,
        [0.75, 3.0],
    )
    assert (trial.error, trial.failure_reason, trial.exit_code, trial.exit_signal, trial.stderr_tail) == (
        "",
        "",
        None,
        "",
        "",
    )
    assert reopened is not store and store.get_study(study_id).counts.completed == 1


def test_end_trial_stores_the_forensics_of_a_crash(store):
    study_id = _study(store)
    store.create_trial(study_id, 1, CONFIG, "cpu:0", "")
    end = TrialEnd(
        TrialState.FAILED,
        60.0,
        error="worker died",
        failure_reason="crash",
        exit_code=-9,
        exit_signal="SIGKILL",
        stderr_tail="Killed",
    )
    trial = store.end_trial(study_id, 1, end)
    assert (trial.state, trial.objective_value, trial.objective_values) == (TrialState.FAILED, None, [])
    assert (trial.error, trial.failure_reason, trial.exit_code, trial.exit_signal, trial.stderr_tail) == (
        "worker died",
        "crash",
        -9,
        "SIGKILL",
        "Killed",
    )


def test_end_trial_with_its_event_in_atomic_is_all_or_nothing(store, path):
    study_id = _study(store)
    store.create_trial(study_id, 1, CONFIG, "cpu:0", "")
    with pytest.raises(RuntimeError, match="killed mid-way"), store.atomic():
        trial = store.end_trial(study_id, 1, TrialEnd(TrialState.COMPLETED, 9.0, objective_value=1.0))
        with store.atomic():  # nested: joins the outer transaction
            store.set_best_trial(study_id, 1)
            store.append_event(study_id, "trial_finished", {"trial_id": trial.trial_id})
        raise RuntimeError("killed mid-way")
    for reader in (store, _reopened(path)):
        trial = reader.get_trial(study_id, 1)
        assert trial.state == TrialState.RUNNING and trial.end_time is None and trial.objective_value is None
        assert reader.get_study(study_id).best_trial_id is None
        assert reader.last_sequence(study_id) == (0, False) and reader.events_after(study_id, 0) == []
        if reader is not store:
            reader.close()
    with store.atomic():
        store.end_trial(study_id, 1, TrialEnd(TrialState.COMPLETED, 9.0, objective_value=1.0))
        store.append_event(study_id, "trial_finished", {"trial_id": 1})
    assert store.get_trial(study_id, 1).state == TrialState.COMPLETED
    assert [e.sequence for e in store.events_after(study_id, 0)] == [1]


def test_updates_of_unknown_rows_are_not_found_and_write_nothing(store):
    study_id = _study(store)
    with pytest.raises(NotFound, match="st-missing"):
        store.start_study("st-missing", 1.0)
    with pytest.raises(NotFound, match="st-missing"):
        store.end_study("st-missing", StudyState.CANCELLED, end_time=1.0)
    with pytest.raises(NotFound, match="trial 7"):
        store.end_trial(study_id, 7, TrialEnd(TrialState.FAILED, 1.0))
    with pytest.raises(NotFound, match="trial 7"):
        store.move_trial(study_id, 7, "cpu:0")
    with pytest.raises(NotFound), store.atomic():  # a NotFound inside atomic() undoes what came before
        store.start_study(study_id, 3.0)
        store.set_retries(study_id, 7, 1)
    assert store.get_study(study_id).state == StudyState.PENDING


def test_trial_page_tokens_continue_after_the_trial(store):
    study_id = _study(store)
    for trial_id in range(1, 6):
        store.create_trial(study_id, trial_id, CONFIG, "cpu:0", "")
    rest, token = store.list_trials(study_id, 10, store.trial_page_token(study_id, 3))
    assert [t.trial_id for t in rest] == [4, 5] and token == ""


def _protocol_methods() -> set[str]:
    return {name for name, _ in inspect.getmembers(Store) if not name.startswith("_")}


def test_storage_has_every_method_of_the_protocol_with_its_parameters():
    for name in _protocol_methods():
        assert hasattr(Storage, name) or name == "data_dir", name
        wanted = getattr(Store, name)
        if callable(wanted):
            have = inspect.signature(getattr(Storage, name)).parameters
            assert list(inspect.signature(wanted).parameters) == list(have), name


def test_storage_offers_the_server_nothing_beyond_the_protocol():
    """Storage's other public methods: the integrity check it runs at open (and tests call), and the
    untyped updates the runner still uses until it moves to the typed ones."""
    public = {name for name, _ in inspect.getmembers(Storage, callable) if not name.startswith("_")}
    assert public - _protocol_methods() <= {"check_integrity"}


def test_storage_satisfies_store_for_mypy(tmp_path):
    """mypy, not isinstance: a function typed against Store accepts a Storage. The package is linked
    under tmp_path as `make lint` links it (mypy cannot follow setuptools' package-dir mapping)."""
    pytest.importorskip("mypy")
    tree = tmp_path / "tree" / "tuneyard"
    tree.mkdir(parents=True)
    for name in ("__init__.py", "py.typed", "v1", "common"):
        (tree / name).symlink_to(REPO / "protos" / "tuneyard" / name)
    for name in ("server", "plugins", "client", "examples"):
        (tree / name).symlink_to(REPO / name)
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from pathlib import Path\n"
        "from tuneyard.server.storage.sqlite import Storage\n"
        "from tuneyard.server.storage.store import Store\n"
        "def needs_a_store(store: Store) -> None: ...\n"
        "needs_a_store(Storage(Path('.')))\n"
        "class Half:\n"
        "    def close(self) -> None: ...\n"
        "needs_a_store(Half())  # the control: a class without the rest of the methods is refused\n"
    )
    command = [sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-incremental", str(probe)]
    env_path = str(tmp_path / "tree")
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, env={"MYPYPATH": env_path, "PATH": "/usr/bin:/bin"}
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "probe.py:8:" in errors[0] and '"Half"' in errors[0], result.stdout + result.stderr

"""A damaged, foreign, full or locked store: one clear line at start, a clear status while serving.

Every file here is a real SQLite store written by `Storage`, then damaged for real (truncated, zeroed,
overwritten); `tuneyard serve` runs as a subprocess, and statuses come over real gRPC on loopback.
A full disk is real too: SQLite's `max_page_count` on the running store's connection, and a small
tmpfs where this machine lets us mount one.
"""

from __future__ import annotations

import base64
import hashlib
import random
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import ServerProcess, cap_store_pages, serve_command, tiny_spec, to_proto

from tuneyard.server.app import start_server
from tuneyard.server.storage.schema import SCHEMA
from tuneyard.server.storage.sqlite import Storage
from tuneyard.server.storage.sqlite_file import APPLICATION_ID
from tuneyard.server.storage.tokens import encode_token
from tuneyard.server.study.domain import StoreFull, StoreInvalid, StudyState, TrialEnd, TrialState
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

STUDIES = 120  # enough rows for the store to span dozens of pages


def _marker(i: int) -> str:
    return f"marker-of-study-{i:04d}"


def _write_store(data_dir: Path, studies: int = STUDIES) -> list[str]:
    """A store of finished studies (one completed trial each, its config holding `_marker(i)`), written by Storage."""
    storage = Storage(data_dir)
    ids = []
    try:
        for i in range(studies):
            study, _ = storage.create_study(tiny_spec(name=f"study-{i}"), f"request-{i}")
            storage.create_trial(study.study_id, 1, {"marker": _marker(i)}, "cpu", "")
            storage.add_epoch(study.study_id, 1, 1, {"val_accuracy": 0.5})
            storage.end_trial(study.study_id, 1, TrialEnd(TrialState.COMPLETED, time.time(), objective_value=0.5))
            storage.set_best_trial(study.study_id, 1)
            storage.end_study(study.study_id, StudyState.COMPLETED, end_time=time.time())
            storage.append_event(study.study_id, "study_state", {"state": StudyState.COMPLETED.value})
            (data_dir / "studies" / study.study_id).mkdir(parents=True)
            ids.append(study.study_id)
    finally:
        storage.close()  # the last connection checkpoints the WAL: every page is in tuneyard.db now
    return ids


def _damage_page_holding(db: Path, marker: str) -> int:
    """Overwrites the one page that holds `marker` with garbage (an invalid page type first); returns its number."""
    data = db.read_bytes()
    assert data.count(marker.encode()) == 1
    page_size = int.from_bytes(data[16:18], "big")
    page = data.index(marker.encode()) // page_size
    garbage = b"\0" + random.Random(page).randbytes(page_size - 1)
    with db.open("r+b") as f:
        f.seek(page * page_size)
        f.write(garbage)
    return page + 1


def _serve(data_dir: Path, *extra: str) -> tuple[int | None, list[str]]:
    """Runs `tuneyard serve`: (exit code, output lines), or (None, lines) when it started serving instead."""
    cmd = serve_command(data_dir, *extra)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if "serving on" in line:
            proc.terminate()
            proc.wait(60)
            return None, lines
    return proc.wait(60), lines


def _assert_refused(data_dir: Path, fragment: str, *extra: str) -> str:
    code, lines = _serve(data_dir, *extra)
    assert code == 2, f"exit {code}: " + "\n".join(lines)
    assert len(lines) == 1 and lines[0].startswith("error: "), "\n".join(lines)
    assert fragment in lines[0]
    return lines[0]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def written_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding a real store of finished studies; tests copy it before damaging it."""
    data_dir = tmp_path_factory.mktemp("written") / "data"
    _write_store(data_dir)
    return data_dir


@pytest.fixture
def store_copy(written_store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(written_store, copy)
    return copy


# ---- refused at start: one line, exit 2 ----


def test_empty_store_file_is_refused_not_taken_for_a_new_store(store_copy: Path) -> None:
    db = store_copy / "tuneyard.db"
    db.write_bytes(b"")
    line = _assert_refused(store_copy, "is empty (0 bytes)")
    assert str(db) in line
    assert db.stat().st_size == 0  # left as it was, for the operator to look at
    assert len(list((store_copy / "studies").iterdir())) == STUDIES


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        ("truncated", "database disk image is malformed"),
        ("header", "file is not a database"),
        ("not_sqlite", "file is not a database"),
    ],
)
def test_unreadable_store_is_refused_in_one_line(store_copy: Path, damage: str, fragment: str) -> None:
    db = store_copy / "tuneyard.db"
    if damage == "truncated":
        with db.open("r+b") as f:
            f.truncate(db.stat().st_size // 2)
    elif damage == "header":
        with db.open("r+b") as f:
            f.write(b"this is no SQLite header" * 4)
    else:
        db.write_text("studies: none, this is a text file\n")
    before = _digest(db)
    line = _assert_refused(store_copy, fragment)
    assert "is not a valid tuneyard store" in line
    assert _digest(db) == before


def _foreign_db(path: Path, application_id: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    db.execute("INSERT INTO notes (body) VALUES ('not a study')")
    db.execute(f"PRAGMA application_id = {application_id}")
    db.commit()
    db.close()


@pytest.mark.parametrize(
    ("application_id", "fragment"),
    [(0, "tables of another application (notes)"), (0x47504B47, "another application (application_id 0x47504b47)")],
)
def test_another_applications_sqlite_file_is_refused_and_left_untouched(
    tmp_path: Path, application_id: int, fragment: str
) -> None:
    db = tmp_path / "data" / "tuneyard.db"
    _foreign_db(db, application_id)
    before = _digest(db)
    _assert_refused(tmp_path / "data", fragment)
    assert _digest(db) == before
    with pytest.raises(StoreInvalid, match="not a valid tuneyard store"):
        start_server(data_dir=tmp_path / "data", devices="cpu", cpu_slots=1)
    assert _digest(db) == before


def test_store_of_the_release_before_application_id_opens_and_is_marked(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    old = sqlite3.connect(data_dir / "tuneyard.db")  # as the release before wrote it: our tables, no id
    old.executescript(SCHEMA)
    old.execute("INSERT INTO studies (id, spec, state, create_time) VALUES ('st-000000000001', '{}', 'COMPLETED', 1.0)")
    old.commit()
    assert old.execute("PRAGMA application_id").fetchone()[0] == 0
    old.close()
    storage = Storage(data_dir)
    try:
        assert storage.get_study("st-000000000001").state is StudyState.COMPLETED
    finally:
        storage.close()
    with sqlite3.connect(data_dir / "tuneyard.db") as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


def test_new_store_is_created_whole_and_marked(tmp_path: Path) -> None:
    Storage(tmp_path / "data").close()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["tuneyard.db"]
    with sqlite3.connect(tmp_path / "data" / "tuneyard.db") as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


# ---- a damaged page while serving, and --check-store ----


def test_damaged_page_answers_data_loss_and_check_store_refuses_to_start(store_copy: Path, written_store: Path) -> None:
    ids = [s.study_id for s in _studies_of(written_store)]
    damaged, healthy = ids[STUDIES // 2], ids[0]
    _damage_page_holding(store_copy / "tuneyard.db", _marker(STUDIES // 2))
    server = ServerProcess(store_copy)  # without --check-store the damage goes unseen at start
    try:
        stub = server.stub()
        assert stub.GetStudy(pb.GetStudyRequest(study_id=healthy), timeout=30).state == pb.STUDY_COMPLETED
        for call in (
            lambda: stub.GetTrial(pb.GetTrialRequest(study_id=damaged, trial_id=1), timeout=30),
            lambda: stub.GetStudy(pb.GetStudyRequest(study_id=damaged), timeout=30),
            lambda: stub.ListStudies(pb.ListStudiesRequest(page_size=1000), timeout=30),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.DATA_LOSS, err.value.details()
            assert "the store is damaged" in err.value.details() and "--check-store" in err.value.details()
    finally:
        assert server.stop() == 0
    line = _assert_refused(store_copy, "failed PRAGMA integrity_check", "--check-store")
    assert ".recover" in line


def test_integrity_check_passes_a_sound_store(store_copy: Path) -> None:
    storage = Storage(store_copy, check_integrity=True)
    try:
        assert storage.check_integrity() == []
        assert len(storage.list_studies(1000, "")[0]) == STUDIES
    finally:
        storage.close()


def _studies_of(data_dir: Path) -> list[Any]:
    storage = Storage(data_dir)
    try:
        return storage.list_studies(1000, "")[0]
    finally:
        storage.close()


# ---- a full disk: SQLite's max_page_count, and a real small tmpfs ----

# A spec whose stored row needs pages of its own (~6 KB of JSON): its insert cannot fit into a page's free space.
BIG_SPEC = tiny_spec(
    search_space=[
        *tiny_spec()["search_space"],
        {"name": "training.label_smoothing", "choice": {"values": [i / 1000 for i in range(900)]}},
    ]
)


@pytest.fixture(scope="module")
def served_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An in-process server on a store of finished studies (nothing trains unless a test creates a study)."""
    data_dir = tmp_path_factory.mktemp("served") / "data"
    _write_store(data_dir, studies=5)
    handle = start_server(data_dir=data_dir, devices="cpu", cpu_slots=1)
    yield handle
    handle.stop()


@pytest.fixture
def served_stub(served_store: Any) -> Iterator[service_pb2_grpc.TrainingServiceStub]:
    with grpc.insecure_channel(served_store.address) as channel:
        yield service_pb2_grpc.TrainingServiceStub(channel)


def _create_until_full(stub: service_pb2_grpc.TrainingServiceStub) -> grpc.RpcError:
    """CreateStudy until the store refuses (studies that fit are cancelled); the error it answered."""
    for _ in range(10):
        try:
            study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(BIG_SPEC)), timeout=60)
        except grpc.RpcError as exc:
            return exc
        stub.CancelStudy(pb.CancelStudyRequest(study_id=study.study_id), timeout=60)
    pytest.fail("a store capped at its size took 10 new studies")


def test_full_store_answers_resource_exhausted_until_space_is_freed(
    served_store: Any, served_stub: service_pb2_grpc.TrainingServiceStub
) -> None:
    listed = len(served_stub.ListStudies(pb.ListStudiesRequest(page_size=1000), timeout=30).studies)
    cap = cap_store_pages(served_store.storage)
    try:
        err = _create_until_full(served_stub)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
        assert "the server's store is full: free disk space" in err.details()
        assert err.details().endswith("then retry")
        # Reads go on, and the refused study left nothing behind.
        assert len(served_stub.ListStudies(pb.ListStudiesRequest(page_size=1000), timeout=30).studies) >= listed
    finally:
        cap_store_pages(served_store.storage, cap)
    study = served_stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(BIG_SPEC)), timeout=60)
    served_stub.CancelStudy(pb.CancelStudyRequest(study_id=study.study_id), timeout=60)


def test_storage_raises_store_full_and_works_again_once_space_is_freed(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "data")
    try:
        study, _ = storage.create_study(tiny_spec(), "")
        cap = cap_store_pages(storage)
        with pytest.raises(StoreFull, match="database or disk is full"):
            with storage.atomic():  # the runner journals this way
                for n in range(200):
                    storage.append_event(study.study_id, "log", {"line": f"{n:03d} " + "x" * 200})
        assert storage.last_sequence(study.study_id) == (0, False)  # the transaction was rolled back whole
        cap_store_pages(storage, cap)
        assert storage.append_event(study.study_id, "log", {"line": "space again"}).sequence == 1
    finally:
        storage.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB file system (tmpfs), so that full is really full; skipped where mounting is refused."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(disk: Path) -> Path:
    """Writes a file until the disk is full (unbuffered: the last write is a partial one); returns it."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f, suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
    return filler


def test_full_disk_at_creation_leaves_no_store_file(small_disk: Path) -> None:
    data_dir = small_disk / "data"
    data_dir.mkdir()
    filler = _fill(small_disk)
    with pytest.raises(StoreFull, match="database or disk is full"):
        Storage(data_dir)
    assert list(data_dir.iterdir()) == []  # no empty tuneyard.db that a later start would refuse
    _assert_refused(data_dir, "the server's store is full")
    filler.unlink()
    Storage(data_dir).close()
    with sqlite3.connect(data_dir / "tuneyard.db") as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


def test_full_disk_answers_resource_exhausted_until_space_is_freed(small_disk: Path) -> None:
    handle = start_server(data_dir=small_disk / "data", devices="cpu", cpu_slots=1)
    try:
        with grpc.insecure_channel(handle.address) as channel:
            stub = service_pb2_grpc.TrainingServiceStub(channel)
            filler = _fill(small_disk)
            err = _create_until_full(stub)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
            assert "the server's store is full" in err.details()
            filler.unlink()
            study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(tiny_spec())), timeout=60)
            stub.CancelStudy(pb.CancelStudyRequest(study_id=study.study_id), timeout=60)
    finally:
        handle.stop()


def test_locked_store_answers_unavailable(served_store: Any, served_stub: service_pb2_grpc.TrainingServiceStub) -> None:
    other = sqlite3.connect(served_store.storage.data_dir / "tuneyard.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock past SQLite's busy timeout
        with pytest.raises(grpc.RpcError) as err:
            served_stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(tiny_spec())), timeout=60)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        assert "database is locked" in err.value.details()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert served_stub.ListStudies(pb.ListStudiesRequest(page_size=1000), timeout=30).studies


# ---- forged page tokens and page sizes ----


def _token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


FORGED_TOKENS = {
    "row 2**63": _token(f"r{2**63}"),
    "row 2**64": _token(f"r{2**64}"),
    "row 10**30": _token(f"r{10**30}"),
    "negative row": _token("r-1"),
    "empty after the prefix": _token("r"),
    "leading zeros": _token("r007"),
    "spaces": _token("r 5"),
    "other prefix": _token("x5"),
    "not base64": "!!!not-base64!!!",
    "base64 of bytes": base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    "padding stripped": _token("r1").rstrip("="),
    "long": _token("r" + "9" * 5000),
    "non-ascii": "cjE=é",
}


def _list(stub: service_pb2_grpc.TrainingServiceStub, rpc: str, study_id: str, **fields: Any) -> Any:
    if rpc == "ListStudies":
        return stub.ListStudies(pb.ListStudiesRequest(**fields), timeout=30)
    return stub.ListTrials(pb.ListTrialsRequest(study_id=study_id, **fields), timeout=30)


@pytest.mark.parametrize("rpc", ["ListStudies", "ListTrials"])
@pytest.mark.parametrize("token", FORGED_TOKENS.values(), ids=FORGED_TOKENS.keys())
def test_forged_page_token_is_invalid_argument(
    served_store: Any, served_stub: service_pb2_grpc.TrainingServiceStub, rpc: str, token: str
) -> None:
    study_id = served_store.storage.list_studies(1, "")[0][0].study_id
    with pytest.raises(grpc.RpcError) as err:
        _list(served_stub, rpc, study_id, page_token=token)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details() == "page_token: not a token returned by this server"


def test_tokens_the_server_returns_still_page_through(
    served_store: Any, served_stub: service_pb2_grpc.TrainingServiceStub
) -> None:
    expected = [s.study_id for s in served_store.storage.list_studies(1000, "")[0]]
    seen, token = [], ""
    while True:
        page = served_stub.ListStudies(pb.ListStudiesRequest(page_size=2, page_token=token), timeout=30)
        seen += [s.study_id for s in page.studies]
        token = page.next_page_token
        if not token:
            break
    assert seen == expected
    last = served_stub.ListStudies(pb.ListStudiesRequest(page_token=encode_token(2**63 - 1)), timeout=30)
    assert list(last.studies) == [] and last.next_page_token == ""


@pytest.mark.parametrize("rpc", ["ListStudies", "ListTrials"])
def test_page_size_bounds(served_store: Any, served_stub: service_pb2_grpc.TrainingServiceStub, rpc: str) -> None:
    study_id = served_store.storage.list_studies(1, "")[0][0].study_id
    everything = _list(served_stub, rpc, study_id, page_size=2**31 - 1)
    assert len(everything.studies if rpc == "ListStudies" else everything.trials) >= 1
    assert everything.next_page_token == ""
    for size in (-1, -(2**31)):
        with pytest.raises(grpc.RpcError) as err:
            _list(served_stub, rpc, study_id, page_size=size)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("page_size: must not be negative")

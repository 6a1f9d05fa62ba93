"""DeleteStudy (issue 19, item 3): an ended study goes with its rows, epochs, events and files; a
running one is refused; `tuneyard delete` asks first; a study folder that is a link out of the
checkpoint directory is unlinked, never followed."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import tiny_spec, to_proto, watch_all

from tuneyard.client.cli import main
from tuneyard.server.study.domain import StudyState
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

EXTERNAL = {
    "name": "waits",
    "external": {},
    "search_space": [{"name": "x", "float_range": {"low": 0.0, "high": 1.0}}],
    "objective": {"metric": "value", "mode": "MINIMIZE"},
    "budget": {"max_trials": 2},
}


def rows(db: Path, study_id: str) -> dict[str, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t} WHERE study_id = ?", (study_id,)).fetchone()[0]
                  for t in ("trials", "metrics", "events")}  # fmt: skip
        counts["studies"] = conn.execute("SELECT COUNT(*) FROM studies WHERE id = ?", (study_id,)).fetchone()[0]
    return counts


def refusal(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_an_ended_study_goes_with_its_rows_events_and_checkpoints(server: Any, stub: Any) -> None:
    spec = tiny_spec(budget={"max_trials": 1}, training={**tiny_spec()["training"], "epochs": 1})
    study_id = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)), timeout=30).study_id
    assert watch_all(stub, study_id)[-1].study_state.state == pb.STUDY_COMPLETED
    folder = server.storage.data_dir / "studies" / study_id
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    db = server.storage.data_dir / "tuneyard.db"
    before = rows(db, study_id)
    assert before["trials"] == 1 and before["metrics"] == 1 and before["events"] >= 5 and size > 0

    response = stub.DeleteStudy(pb.DeleteStudyRequest(study_id=study_id), timeout=30)
    assert (response.study_id, response.trials, response.bytes_removed) == (study_id, 1, size)
    assert rows(db, study_id) == {"trials": 0, "metrics": 0, "events": 0, "studies": 0}
    assert not folder.exists()
    for call in (
        lambda: stub.GetStudy(pb.GetStudyRequest(study_id=study_id), timeout=30),
        lambda: stub.ListTrials(pb.ListTrialsRequest(study_id=study_id), timeout=30),
        lambda: watch_all(stub, study_id),
        lambda: list(stub.DownloadCheckpoint(pb.DownloadCheckpointRequest(study_id=study_id), timeout=30)),
        lambda: stub.DeleteStudy(pb.DeleteStudyRequest(study_id=study_id), timeout=30),
    ):
        assert refusal(call) == grpc.StatusCode.NOT_FOUND
    assert study_id not in {s.study_id for s in stub.ListStudies(pb.ListStudiesRequest(page_size=1000)).studies}


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tuneyard.server.app import start_server

    handle = start_server(data_dir=tmp_path_factory.mktemp("delete-data"), devices="cpu", cpu_slots=1)
    with grpc.insecure_channel(handle.address) as channel:
        yield handle, service_pb2_grpc.TrainingServiceStub(channel)
    handle.stop()


def test_a_running_study_is_refused_and_kept(own: Any) -> None:
    handle, stub = own
    study_id = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(EXTERNAL)), timeout=30).study_id
    (trial,) = stub.SuggestTrials(pb.SuggestTrialsRequest(study_id=study_id, count=1), timeout=30).trials
    with pytest.raises(grpc.RpcError) as err:
        stub.DeleteStudy(pb.DeleteStudyRequest(study_id=study_id), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "RUNNING" in err.value.details()
    assert rows(handle.storage.data_dir / "tuneyard.db", study_id)["trials"] == 1
    stub.CancelStudy(pb.CancelStudyRequest(study_id=study_id), timeout=30)
    assert stub.DeleteStudy(pb.DeleteStudyRequest(study_id=study_id), timeout=30).trials == 1
    for bad, code in (("", grpc.StatusCode.INVALID_ARGUMENT), ("st-000000000000", grpc.StatusCode.NOT_FOUND)):
        assert refusal(lambda b=bad: stub.DeleteStudy(pb.DeleteStudyRequest(study_id=b), timeout=30)) == code


def test_the_cli_asks_first_unless_told_yes(own: Any, monkeypatch: Any, capsys: Any) -> None:
    handle, stub = own
    study_id = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(EXTERNAL)), timeout=30).study_id
    stub.CancelStudy(pb.CancelStudyRequest(study_id=study_id), timeout=30)
    command = ["delete", study_id, "--server", handle.address]
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(command) == 2 and "--yes" in capsys.readouterr().err  # no prompt to ask at: refused
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda question: "n")
    assert main(command) == 1
    assert stub.GetStudy(pb.GetStudyRequest(study_id=study_id), timeout=30).study_id == study_id
    monkeypatch.setattr("builtins.input", lambda question: "y")
    assert main(command) == 0 and f"deleted study {study_id}" in capsys.readouterr().out
    assert main([*command, "--yes"]) == 2 and "NOT_FOUND" in capsys.readouterr().err


def test_a_study_folder_that_links_elsewhere_is_unlinked_not_followed(own: Any, tmp_path: Path) -> None:
    handle, stub = own
    store = handle.storage
    study_id = store.create_study({"name": "linked"}, "")[0].study_id
    store.end_study(study_id, StudyState.COMPLETED, end_time=1.0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.pt").write_bytes(b"keep me")
    store.study_folder(study_id).parent.mkdir(parents=True, exist_ok=True)
    store.study_folder(study_id).symlink_to(elsewhere)
    assert stub.DeleteStudy(pb.DeleteStudyRequest(study_id=study_id), timeout=30).bytes_removed == 0
    assert not store.study_folder(study_id).is_symlink() and (elsewhere / "keep.pt").read_bytes() == b"keep me"

"""DownloadCheckpoint (issue 19, item 3): a real trial's checkpoint comes out byte for byte with its
size and sha256, through the SDK and `tuneyard download` too; paths are shown relative to the data
directory; the token server refuses it without a token; a stored path that leads out of the
checkpoint directory (`..`, an absolute path, a link) is never served."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import tiny_spec, to_proto, watch_all

from tuneyard.client.cli import main
from tuneyard.client.sdk import Client
from tuneyard.server.api.security import Token
from tuneyard.server.study.domain import StudyState, TrialEnd, TrialState
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

TOKEN = "tok-" + "d0wnl0ad5ecret0000"


@pytest.fixture(scope="module")
def trained(server: Any) -> tuple[str, Path]:
    """A study of one real (tiny) training trial on the session's server, and its checkpoint's file."""
    with grpc.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.TrainingServiceStub(channel)
        spec = tiny_spec(budget={"max_trials": 1}, training={**tiny_spec()["training"], "epochs": 1})
        study_id = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)), timeout=30).study_id
        assert watch_all(stub, study_id)[-1].study_state.state == pb.STUDY_COMPLETED
    return study_id, server.storage.data_dir / "studies" / study_id / "trial-1" / "checkpoint.pt"


def chunks(stub: Any, study_id: str, trial_id: int = 0, **kwargs: Any) -> list[pb.CheckpointChunk]:
    request = pb.DownloadCheckpointRequest(study_id=study_id, trial_id=trial_id)
    return list(stub.DownloadCheckpoint(request, timeout=30, **kwargs))


def refusal(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_the_best_checkpoint_comes_out_byte_identical_in_chunks(stub: Any, trained: Any, monkeypatch: Any) -> None:
    study_id, file = trained
    on_disk = file.read_bytes()
    monkeypatch.setattr("tuneyard.server.api.servicer.CHECKPOINT_CHUNK_BYTES", 4096)  # many chunks of a small file
    got = chunks(stub, study_id)
    first = got[0]
    assert (first.size, first.sha256, first.trial_id) == (len(on_disk), hashlib.sha256(on_disk).hexdigest(), 1)
    assert first.path == f"studies/{study_id}/trial-1/checkpoint.pt"
    assert len(got) == -(-len(on_disk) // 4096) and all(len(c.data) <= 4096 for c in got)
    assert all(not (c.size or c.sha256 or c.path) for c in got[1:])
    assert b"".join(c.data for c in got) == on_disk
    assert [c.data for c in chunks(stub, study_id, 1)] == [c.data for c in got]  # the best trial is trial 1
    trial = stub.GetTrial(pb.GetTrialRequest(study_id=study_id, trial_id=1), timeout=30)
    assert trial.checkpoint == first.path  # shown relative to the data directory
    assert stub.GetStudy(pb.GetStudyRequest(study_id=study_id), timeout=30).best_trial.checkpoint == first.path


def test_the_sdk_and_the_cli_write_it_whole_and_verified(server: Any, trained: Any, tmp_path: Path, capsys) -> None:
    study_id, file = trained
    with Client(server.address, token="") as client:
        done = client.download_checkpoint(study_id, out=tmp_path)
    assert done.path == tmp_path / f"{study_id}-trial-1.pt" and done.path.read_bytes() == file.read_bytes()
    assert done.sha256 == hashlib.sha256(file.read_bytes()).hexdigest() and done.trial_id == 1
    target = tmp_path / "best.pt"
    assert main(["download", study_id, "1", "-o", str(target), "--server", server.address]) == 0
    assert target.read_bytes() == file.read_bytes() and "verified" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([done.path.name, "best.pt"])  # no partial files
    assert main(["download", study_id, "7", "-o", str(tmp_path / "x.pt"), "--server", server.address]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A server that wants a token, with hand-made trials in its store: one with a checkpoint file,
    one without, and ones whose stored checkpoint leads out of the checkpoint directory."""
    from tuneyard.server.app import start_server

    top = tmp_path_factory.mktemp("guarded")
    (top / "outside").mkdir()
    (top / "outside" / "secret.pt").write_bytes(b"not yours")
    handle = start_server(data_dir=top / "data", devices="cpu", cpu_slots=1, tokens=[Token("alice", TOKEN.encode())])
    store = handle.storage
    study_id = store.create_study({"name": "hand-made"}, "")[0].study_id
    folder = store.study_folder(study_id)
    stored = {
        1: f"{study_id}/trial-1/checkpoint.pt",  # a real file
        2: f"{study_id}/trial-2/checkpoint.pt",  # none was written
        3: "../../outside/secret.pt",  # up and out
        4: "/etc/passwd",  # absolute, too short to be re-rooted (see records.checkpoint_path)
        5: f"{study_id}/trial-5/checkpoint.pt",  # a link out of the directory
    }
    for trial_id, key in stored.items():
        store.create_trial(study_id, trial_id, {}, "cpu:0", key)
        store.end_trial(study_id, trial_id, TrialEnd(TrialState.COMPLETED, end_time=1.0))
    (folder / "trial-1").mkdir(parents=True)
    (folder / "trial-1" / "checkpoint.pt").write_bytes(os.urandom(3 << 20) + b"end")  # more than 1 MiB chunks
    (folder / "trial-5").mkdir()
    (folder / "trial-5" / "checkpoint.pt").symlink_to(top / "outside" / "secret.pt")
    store.end_study(study_id, StudyState.COMPLETED, end_time=2.0)
    with grpc.insecure_channel(handle.address) as channel:
        yield service_pb2_grpc.TrainingServiceStub(channel), study_id, folder
    handle.stop()


def test_a_token_server_refuses_a_download_without_the_token(guarded: Any) -> None:
    stub, study_id, folder = guarded
    for metadata in (None, [("authorization", "Bearer tok-wrong-wrong-wrong")]):
        code, details = refusal(lambda m=metadata: chunks(stub, study_id, 1, metadata=m))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in details
    got = chunks(stub, study_id, 1, metadata=[("authorization", f"Bearer {TOKEN}")])
    on_disk = (folder / "trial-1" / "checkpoint.pt").read_bytes()
    assert [len(c.data) for c in got] == [1 << 20] * 3 + [3]
    assert b"".join(c.data for c in got) == on_disk and got[0].sha256 == hashlib.sha256(on_disk).hexdigest()


def test_what_is_not_there_or_not_inside_is_never_served(guarded: Any) -> None:
    stub, study_id, _ = guarded
    auth = [("authorization", f"Bearer {TOKEN}")]
    for trial_id in (3, 4, 5):
        code, details = refusal(lambda t=trial_id: chunks(stub, study_id, t, metadata=auth))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "outside" in details, (trial_id, details)
        assert "not yours" not in details
    cases = [
        ((study_id, 2), grpc.StatusCode.NOT_FOUND),  # a trial without a checkpoint file
        ((study_id, 9), grpc.StatusCode.NOT_FOUND),  # no such trial
        ((study_id, 0), grpc.StatusCode.NOT_FOUND),  # no best trial
        (("st-000000000000", 1), grpc.StatusCode.NOT_FOUND),
        ((study_id, -1), grpc.StatusCode.INVALID_ARGUMENT),
        (("", 1), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for (sid, trial_id), want in cases:
        assert refusal(lambda s=sid, t=trial_id: chunks(stub, s, t, metadata=auth))[0] == want, (sid, trial_id)

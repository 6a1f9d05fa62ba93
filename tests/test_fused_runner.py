"""Fused trial groups through the server (issue 17): `resources.fuse` groups a study's trials into one
worker task each, and every member stays its own trial.

One real server on a loopback port with two CPU slots trains the built-in `mlp` on `iris` in real
worker processes. A fused study's members end with the per-epoch metrics of the same study run solo;
ASHA prunes a member while the others finish; a diverging member fails alone; cancel stops the whole
group; a SIGKILLed worker's group resumes from its one resume file; trials that differ outside
the fusable settings are not grouped, and a group the worker refuses runs its members solo.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from support import watch_all

from tuneyard.server.storage.sqlite import DB_NAME
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc, spec_pb2

ATOL = 1e-4
COMPARED = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")
LRS = [0.01, 0.05, 0.1, 0.2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    from tuneyard.server.app import start_server

    data_dir = tmp_path_factory.mktemp("fused-runner")
    handle = start_server(data_dir=data_dir, devices="cpu", cpu_slots=2)
    with grpc.insecure_channel(handle.address) as channel:
        yield service_pb2_grpc.TrainingServiceStub(channel), data_dir
    handle.stop()


@pytest.fixture
def stub(server: tuple[Any, Path]) -> Any:
    return server[0]


def spec(lrs: list[float], fuse: int = 4, epochs: int = 3, **overrides: Any) -> dict[str, Any]:
    """A grid over the sgd learning rate: trial i trains with lrs[i - 1], fused or solo alike."""
    out: dict[str, Any] = {
        "dataset": {"name": "iris"},
        "model": {"name": "mlp", "options": {"width": 16}},
        "training": {
            "epochs": epochs,
            "batch_size": 16,
            "precision": "fp32",
            "seed": 0,
            "optimizer": {"name": "sgd", "options": {"lr": 0.05, "momentum": 0.9}},
        },
        "search_space": [{"name": "optimizer.lr", "choice": {"values": lrs}}],
        "searcher": {"name": "grid"},
        "objective": {"metric": "val_accuracy", "mode": "MAXIMIZE"},
        "budget": {"max_trials": len(lrs), "max_concurrent_trials": len(lrs)},
        "resources": {"fuse": fuse},
    }
    out.update(overrides)
    return out


def create(stub: Any, body: dict[str, Any]) -> str:
    request = pb.CreateStudyRequest(spec=json_format.ParseDict(body, spec_pb2.StudySpec()))
    return str(stub.CreateStudy(request, timeout=30).study_id)


def finish(stub: Any, study_id: str) -> tuple[pb.Study, dict[int, pb.Trial]]:
    watch_all(stub, study_id)
    trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study_id), timeout=30).trials
    return stub.GetStudy(pb.GetStudyRequest(study_id=study_id), timeout=30), {t.trial_id: t for t in trials}


def run(stub: Any, body: dict[str, Any]) -> tuple[pb.Study, dict[int, pb.Trial]]:
    return finish(stub, create(stub, body))


def stored_groups(data_dir: Path, study_id: str) -> dict[int, str]:
    """The trials' `fused_group` column as the store holds it."""
    with sqlite3.connect(data_dir / DB_NAME) as db:
        rows = db.execute("SELECT trial_id, fused_group FROM trials WHERE study_id = ?", (study_id,)).fetchall()
    return dict(rows)


def launched(caplog: pytest.LogCaptureFixture, study_id: str) -> list[str]:
    """The runner's log lines for the fused groups it started in this study."""
    return [r.getMessage() for r in caplog.records if study_id in r.getMessage() and "train fused as" in r.getMessage()]


def epochs_of(trial: pb.Trial) -> list[dict[str, float]]:
    return [{k: m.values[k] for k in COMPARED} for m in trial.metrics]


def assert_same_epochs(trial: pb.Trial, solo: pb.Trial) -> None:
    """The trial's per-epoch metrics are its solo run's, within ATOL."""
    mine, alone = epochs_of(trial), epochs_of(solo)
    assert len(mine) == len(alone) == trial.epochs_completed
    for got, want in zip(mine, alone, strict=True):
        assert got == pytest.approx(want, abs=ATOL), trial.trial_id


def test_a_fused_study_trains_one_group_whose_members_match_their_solo_runs(stub, server, caplog):
    caplog.set_level(logging.INFO)
    fused_id = create(stub, spec(LRS))
    study, fused = finish(stub, fused_id)
    _, solo = run(stub, spec(LRS, fuse=0))
    assert study.state == pb.STUDY_COMPLETED and sorted(fused) == [1, 2, 3, 4], study.error
    assert launched(caplog, fused_id) == [f"study {fused_id}: trials [1, 2, 3, 4] train fused as group g1"]
    assert stored_groups(server[1], fused_id) == {1: "g1", 2: "g1", 3: "g1", 4: "g1"}
    assert {t.fused_group for t in fused.values()} == {"g1"} and {t.fused_group for t in solo.values()} == {""}
    got = stub.GetTrial(pb.GetTrialRequest(study_id=fused_id, trial_id=2), timeout=30)
    assert got.fused_group == "g1"
    for trial_id, trial in fused.items():
        assert trial.state == pb.TRIAL_COMPLETED and trial.epochs_completed == 3
        assert_same_epochs(trial, solo[trial_id])
    lrs = {round(fused[i].metrics[0].values["lr"], 6) for i in fused}
    assert lrs == set(LRS)  # the members really differed


def test_asha_prunes_a_member_and_the_others_finish(stub):
    body = spec([0.2, 1e-6, 0.1, 2e-6], epochs=6, early_stopping={"name": "asha"})
    body["early_stopping"]["options"] = {"grace_period": 1, "reduction_factor": 3}
    study_id = create(stub, body)
    events = watch_all(stub, study_id)
    study, trials = finish(stub, study_id)
    states = {i: t.state for i, t in trials.items()}
    assert study.state == pb.STUDY_COMPLETED, states
    pruned = [t for t in trials.values() if t.state == pb.TRIAL_PRUNED]
    completed = [t for t in trials.values() if t.state == pb.TRIAL_COMPLETED]
    assert pruned and completed, states
    assert all(t.epochs_completed == 6 for t in completed)
    assert all(t.epochs_completed < 6 for t in pruned)
    # A pruned member ends when the stopper says so, not when its group does: its trial_finished
    # event (and the searcher's news) comes before the others' last epochs.
    finished = {e.trial_finished.trial.trial_id: e.sequence for e in events if e.HasField("trial_finished")}
    last_epoch = max(e.sequence for e in events if e.HasField("trial_progress") and e.trial_progress.epoch == 6)
    assert all(finished[t.trial_id] < last_epoch for t in pruned), (finished, last_epoch)


def test_a_diverging_member_fails_alone(stub):
    study, trials = run(stub, spec([0.05, 1e9, 0.1, 0.2]))
    assert trials[2].state == pb.TRIAL_FAILED and "diverged" in trials[2].error
    assert all(trials[i].state == pb.TRIAL_COMPLETED and trials[i].epochs_completed == 3 for i in (1, 3, 4))
    assert study.state == pb.STUDY_COMPLETED


def wait_for_epoch(stub: Any, study_id: str, epoch: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study_id), timeout=30).trials
        if trials and min(t.epochs_completed for t in trials) >= epoch:
            return
        time.sleep(0.05)
    raise AssertionError(f"no epoch {epoch} within 60 s")


def _download(stub: Any, study_id: str, trial_id: int) -> bytes:
    request = pb.DownloadCheckpointRequest(study_id=study_id, trial_id=trial_id)
    return b"".join(chunk.data for chunk in stub.DownloadCheckpoint(request, timeout=30))


def test_cancel_stops_the_whole_group_and_each_member_leaves_its_checkpoint(stub):
    """While members train, the group keeps their states in one file: a download says so. As they
    leave (here: cancelled), each writes its checkpoint of its last finished epoch."""
    import io

    import torch

    study_id = create(stub, spec(LRS, epochs=1000))
    wait_for_epoch(stub, study_id, 1)
    with pytest.raises(grpc.RpcError) as training:
        _download(stub, study_id, 1)
    assert training.value.code() == grpc.StatusCode.NOT_FOUND
    assert "in fused group g" in str(training.value.details()) and "when the trial leaves" in str(
        training.value.details()
    )
    assert stub.CancelStudy(pb.CancelStudyRequest(study_id=study_id), timeout=60).state == pb.STUDY_CANCELLED
    _, trials = finish(stub, study_id)
    assert all(t.state == pb.TRIAL_CANCELLED and 1 <= t.epochs_completed < 1000 for t in trials.values())
    for trial_id, trial in trials.items():
        saved = torch.load(io.BytesIO(_download(stub, study_id, trial_id)), weights_only=True)
        # its last finished epoch: the one it reported, or one whose report the cancel overtook
        assert trial.epochs_completed <= saved["epoch"] <= trial.epochs_completed + 1 and saved["model"].keys()


def test_trials_differing_outside_the_fusable_settings_are_not_grouped(stub, server, caplog):
    caplog.set_level(logging.INFO)
    body = spec(LRS[:2], search_space=[{"name": "model.width", "choice": {"values": [8, 16]}}])
    study_id = create(stub, body)
    study, trials = finish(stub, study_id)
    assert study.state == pb.STUDY_COMPLETED and len(trials) == 2
    assert launched(caplog, study_id) == []
    assert stored_groups(server[1], study_id) == {1: "", 2: ""}


def test_a_search_over_a_models_fusable_dropout_trains_one_group(stub, server, caplog):
    """simple_cnn declares dropout fusable: trials that differ only in it share a group and complete."""
    caplog.set_level(logging.INFO)
    body = spec(
        LRS[:3],
        dataset={"name": "digits"},
        model={"name": "simple_cnn", "options": {"num_filters": 4, "num_conv_layers": 1}},
        epochs=1,
        search_space=[{"name": "model.dropout", "choice": {"values": [0.0, 0.2, 0.5]}}],
        budget={"max_trials": 3, "max_concurrent_trials": 3},
    )
    study_id = create(stub, body)
    study, trials = finish(stub, study_id)
    assert study.state == pb.STUDY_COMPLETED and len(trials) == 3, study.error
    assert launched(caplog, study_id) == [f"study {study_id}: trials [1, 2, 3] train fused as group g1"]
    assert all(t.state == pb.TRIAL_COMPLETED for t in trials.values())


def test_a_group_the_worker_refuses_runs_its_members_solo(stub, server, caplog):
    """Gradient accumulation is the same in every member (so the server groups them), but the group
    trainer does not implement it: the worker refuses and the members train solo, as solo runs do."""
    caplog.set_level(logging.INFO)
    body = spec(LRS[:2])
    body["training"]["grad_accumulation_steps"] = 2
    study_id = create(stub, body)
    study, trials = finish(stub, study_id)
    _, solo = run(stub, dict(body, resources={"fuse": 0}))
    assert study.state == pb.STUDY_COMPLETED
    refusals = [r.getMessage() for r in caplog.records if "cannot train fused" in r.getMessage()]
    assert len(refusals) == 1 and "gradient accumulation" in refusals[0]
    assert stored_groups(server[1], study_id) == {1: "", 2: ""}
    for trial_id, trial in trials.items():
        assert_same_epochs(trial, solo[trial_id])


def worker_cpu() -> dict[int, int]:
    """This process's spawned worker processes (the server runs in it), with the CPU ticks each used."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(stat[1]) == os.getpid() and b"spawn_main" in cmdline:
            found[int(entry.name)] = int(stat[11]) + int(stat[12])  # utime + stime
    return found


def busy_worker() -> int:
    """The worker that trains now: the one using the most CPU over a moment (the other is idle)."""
    before = worker_cpu()
    time.sleep(0.15)
    after = worker_cpu()
    return max(after, key=lambda pid: after[pid] - before.get(pid, after[pid]))


def test_a_group_whose_worker_is_killed_resumes_its_members_together(stub, server, caplog):
    """The members resume as one group from their checkpoints and end as the same group run unkilled."""
    caplog.set_level(logging.INFO)
    body = spec([0.01, 0.02, 0.03, 0.05], epochs=60)  # the kill after epoch 2 comes mid-study
    body["training"]["batch_size"] = 8  # slower epochs
    body["budget"]["trial_retries"] = 1
    _, unkilled = run(stub, body)
    study_id = create(stub, body)
    wait_for_epoch(stub, study_id, 2)
    os.kill(busy_worker(), signal.SIGKILL)  # the idle worker, warm, takes the resumed group
    study, trials = finish(stub, study_id)
    assert study.state == pb.STUDY_COMPLETED
    assert len(launched(caplog, study_id)) == 2  # the group, then the same group from its checkpoints
    assert stored_groups(server[1], study_id) == {1: "g1", 2: "g1", 3: "g1", 4: "g1"}
    for trial_id, trial in trials.items():
        assert trial.state == pb.TRIAL_COMPLETED and trial.retries == 1 and trial.epochs_completed == 60
        assert_same_epochs(trial, unkilled[trial_id])
    folders = [(server[1] / trial.checkpoint).parent for trial in trials.values()]
    kept = {folder.name: sorted(p.name for p in folder.iterdir()) for folder in folders}
    assert all({"checkpoint.pt", "resume.pt"} <= set(names) for names in kept.values()), kept
    left = [p.name for folder in folders for p in folder.iterdir() if "group" in p.name]
    assert left == []  # the killed run's group file and the members' names for it went with the resumed run


def test_tuneyard_trial_shows_the_fused_group() -> None:
    from rich.console import Console

    from tuneyard.client import render

    trial = pb.Trial(study_id="st-1", trial_id=3, state=pb.TRIAL_COMPLETED, device="cpu:0", fused_group="g1")
    console = Console(width=100, record=True)
    console.print(render.trial_detail(trial, spec_pb2.StudySpec()))
    assert any(line.split() == ["fused", "group", "g1"] for line in console.export_text().splitlines())
    solo = Console(width=100, record=True)
    solo.print(
        render.trial_detail(pb.Trial(study_id="st-1", trial_id=4, state=pb.TRIAL_COMPLETED), spec_pb2.StudySpec())
    )
    assert "fused" not in solo.export_text()


@pytest.mark.parametrize(
    ("resources", "why"),
    [
        ({"fuse": 65}, "spec.resources.fuse: must be between 0 and 64"),
        ({"fuse": -1}, "spec.resources.fuse: must be between 0 and 64"),
        ({"fuse": 2, "gpus_per_trial": 2}, "spec.resources.fuse: a data-parallel trial"),
    ],
)
def test_fuse_out_of_bounds_or_with_data_parallel_trials_is_refused(resources: dict[str, Any], why: str) -> None:
    from tuneyard.plugins.manager import PluginRegistry
    from tuneyard.server.study.domain import InvalidArgument
    from tuneyard.server.study.spec import SpecValidator

    with pytest.raises(InvalidArgument) as err:
        SpecValidator(PluginRegistry.load(entry_points=False)).validate(spec(LRS, resources=resources))
    assert err.value.field == "spec.resources.fuse" and str(err.value).startswith(why), str(err.value)


def test_a_trainable_refuses_fuse_and_fuse_one_is_off() -> None:
    from support import REPO

    from tuneyard.plugins.manager import PluginRegistry
    from tuneyard.server.study.domain import InvalidArgument
    from tuneyard.server.study.spec import SpecValidator

    validator = SpecValidator(PluginRegistry.load(plugins_dir=str(REPO / "tests" / "trainable_plugins")))
    trainable = {
        "trainable": {"name": "bowl"},
        "training": {"epochs": 3, "seed": 1},
        "search_space": [{"name": "trainable.x", "float_range": {"low": 0.0, "high": 6.0}}],
        "objective": {"metric": "loss", "mode": "MINIMIZE"},
        "budget": {"max_trials": 3},
    }
    with pytest.raises(InvalidArgument) as err:
        validator.validate({**trainable, "resources": {"fuse": 2}})
    assert err.value.field == "spec.resources.fuse" and "trainable" in str(err.value)
    plan = validator.validate({**trainable, "resources": {"fuse": 1}})
    assert plan.resources.fuse == 1 and not plan.resources.fused

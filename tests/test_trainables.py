"""A user's own training function (a trainable) runs as the trials of a study, with every guarantee.

The trainables live in tests/trainable_plugins/trainables.py, loaded as a user would with
`--plugins-dir`: a real server on a loopback port, real worker processes, real torch for the one
that trains. The bowl's loss is a known function of its option, so the stored results can be
checked exactly.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from support import REPO, watch_all

from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc, spec_pb2

PLUGINS = REPO / "tests" / "trainable_plugins"


def trainable_spec(name: str = "bowl", options: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "trainable",
        "trainable": {"name": name, "options": options or {}},
        "training": {"epochs": 3, "seed": 1},
        "search_space": [{"name": "trainable.x", "float_range": {"low": 0.0, "high": 6.0}}],
        "searcher": {"name": "random"},
        "objective": {"metric": "loss", "mode": "MINIMIZE"},
        "budget": {"max_trials": 3, "max_concurrent_trials": 2},
    }
    spec.update(overrides)
    return spec


def create(stub: Any, spec: dict[str, Any]) -> str:
    message = json_format.ParseDict(spec, spec_pb2.StudySpec())
    return stub.CreateStudy(pb.CreateStudyRequest(spec=message), timeout=30).study_id


def trials_of(stub: Any, study_id: str) -> list[pb.Trial]:
    return list(stub.ListTrials(pb.ListTrialsRequest(study_id=study_id, page_size=100), timeout=30).trials)


@pytest.fixture(scope="module")
def trainable_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tuneyard.server.app import start_server

    handle = start_server(
        data_dir=tmp_path_factory.mktemp("trainable-data"), devices="cpu", cpu_slots=2, plugins_dir=PLUGINS
    )
    yield handle
    handle.stop()


@pytest.fixture
def tstub(trainable_server: Any) -> Iterator[service_pb2_grpc.TrainingServiceStub]:
    with grpc.insecure_channel(trainable_server.address) as channel:
        yield service_pb2_grpc.TrainingServiceStub(channel)


def test_list_plugins_shows_trainables_and_tasks(tstub: Any) -> None:
    trainables = {p.name: p for p in tstub.ListPlugins(pb.ListPluginsRequest(kind="trainable"), timeout=30).plugins}
    assert {"bowl", "torch_regression", "silent"} <= set(trainables)
    assert [p.name for p in trainables["bowl"].parameters] == [
        "x",
        "step_sleep",
        "log",
        "hang_after",
    ]  # trial, epochs injected
    tasks = {p.name for p in tstub.ListPlugins(pb.ListPluginsRequest(kind="task"), timeout=30).plugins}
    assert {"classification", "regression", "multilabel"} <= tasks


def test_a_search_over_a_trainable_stores_exactly_what_it_reported(tstub: Any) -> None:
    study_id = create(tstub, trainable_spec())
    events = watch_all(tstub, study_id)
    assert events[-1].study_state.state == pb.STUDY_COMPLETED, events[-1]
    progress = [e.trial_progress for e in events if e.HasField("trial_progress")]
    assert sorted((p.trial_id, p.epoch) for p in progress) == [(t, s) for t in (1, 2, 3) for s in (1, 2, 3)]
    trials = trials_of(tstub, study_id)
    for trial in trials:
        x = json_format.MessageToDict(trial.config)["trainable.x"]
        assert trial.state == pb.TRIAL_COMPLETED, trial.error
        assert trial.epochs_completed == 3
        assert trial.final_metrics["loss"] == pytest.approx((x - 3.0) ** 2 + 1.0 / 3)
        assert trial.objective_value == pytest.approx(trial.final_metrics["loss"])
    study = tstub.GetStudy(pb.GetStudyRequest(study_id=study_id), timeout=30)
    best = min(trials, key=lambda t: t.objective_value)
    assert study.best_trial.trial_id == best.trial_id
    assert dict(study.test_metrics) == {}  # a trainable has no test split


def test_a_trainable_gets_its_share_of_the_machine_and_its_trials_folder(tstub: Any, trainable_server: Any) -> None:
    spec = trainable_spec("torch_regression", training={"epochs": 2, "seed": 5}, search_space=[],
                          objective={"metric": "val_mse"}, budget={"max_trials": 1})  # fmt: skip
    study_id = create(tstub, spec)
    assert watch_all(tstub, study_id)[-1].study_state.state == pb.STUDY_COMPLETED
    (trial,) = trials_of(tstub, study_id)
    folder = (trainable_server.storage.data_dir / trial.checkpoint).parent  # the checkpoint: relative to it
    runs = [json.loads(line) for line in (folder / "steps.log").read_text().splitlines()]
    assert [r["step"] for r in runs] == [1, 2]
    # Two CPU slots on this server: each trial gets its half of the cores, as the built-in trainer does.
    assert {(r["device"], r["threads"], r["resumed"], r["study"]) for r in runs} == {
        ("cpu", max(1, (os.cpu_count() or 1) // 2), False, study_id)
    }


def test_asha_prunes_trainable_trials_and_the_trainable_sees_pruned(tstub: Any, tmp_path: Path) -> None:
    log = tmp_path / "steps.log"
    spec = trainable_spec(
        options={"step_sleep": 0.2, "log": str(log)},
        training={"epochs": 4, "seed": 0},
        search_space=[{"name": "trainable.x", "choice": {"values": [3.0, 0.0, 6.0, 2.5]}}],
        searcher={"name": "grid"},
        early_stopping={"name": "asha", "options": {"grace_period": 1, "reduction_factor": 2}},
        budget={"max_trials": 4, "max_concurrent_trials": 1},
    )
    study_id = create(tstub, spec)
    assert watch_all(tstub, study_id)[-1].study_state.state == pb.STUDY_COMPLETED
    trials = {json_format.MessageToDict(t.config)["trainable.x"]: t for t in trials_of(tstub, study_id)}
    assert trials[3.0].state == pb.TRIAL_COMPLETED and trials[3.0].epochs_completed == 4
    pruned = [t for t in trials.values() if t.state == pb.TRIAL_PRUNED]
    assert pruned, {x: pb.TrialState.Name(t.state) for x, t in trials.items()}
    lines = log.read_text().split()
    for trial in pruned:
        assert trial.epochs_completed < 4
        assert f"{trial.trial_id} pruned" in log.read_text(), lines
        steps = [line for line in log.read_text().splitlines() if line.startswith(f"{trial.trial_id} ")]
        assert steps[-1] == f"{trial.trial_id} pruned"  # no step ran on after the report that raised


def test_cancel_stops_a_running_trainable_at_its_next_report(tstub: Any, tmp_path: Path) -> None:
    log = tmp_path / "steps.log"
    spec = trainable_spec(
        options={"step_sleep": 0.3, "log": str(log)},
        training={"epochs": 200, "seed": 0},
        budget={"max_trials": 1},
    )
    study_id = create(tstub, spec)
    deadline = time.monotonic() + 60
    while not (log.exists() and log.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    tstub.CancelStudy(pb.CancelStudyRequest(study_id=study_id), timeout=30)
    assert watch_all(tstub, study_id)[-1].study_state.state == pb.STUDY_CANCELLED
    (trial,) = trials_of(tstub, study_id)
    assert trial.state == pb.TRIAL_CANCELLED
    assert 1 <= trial.epochs_completed < 200
    assert log.read_text().splitlines()[-1] == "1 pruned"


def test_a_trainable_that_never_reports_again_is_killed_after_the_stop_grace(tstub: Any) -> None:
    spec = trainable_spec(options={"hang_after": 1}, training={"epochs": 5, "seed": 0}, budget={"max_trials": 1})
    study_id = create(tstub, spec)
    deadline = time.monotonic() + 60
    while not any(t.epochs_completed for t in trials_of(tstub, study_id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    asked = time.monotonic()
    tstub.CancelStudy(pb.CancelStudyRequest(study_id=study_id), timeout=30)
    assert watch_all(tstub, study_id)[-1].study_state.state == pb.STUDY_CANCELLED
    assert time.monotonic() - asked < 60  # the grace is seconds; the hang is an hour
    (trial,) = trials_of(tstub, study_id)
    assert (trial.state, trial.epochs_completed) == (pb.TRIAL_CANCELLED, 1)
    x = json_format.MessageToDict(trial.config)["trainable.x"]
    assert trial.final_metrics["loss"] == pytest.approx((x - 3.0) ** 2 + 1.0)  # what step 1 reported


def test_a_trainable_that_never_reports_the_objective_fails_saying_so(tstub: Any) -> None:
    spec = trainable_spec("silent", search_space=[], objective={"metric": "val_mse"}, budget={"max_trials": 1})
    study_id = create(tstub, spec)
    events = watch_all(tstub, study_id)
    assert events[-1].study_state.state == pb.STUDY_FAILED
    (trial,) = trials_of(tstub, study_id)
    assert trial.state == pb.TRIAL_FAILED
    assert "never reported the objective metric 'val_mse'" in trial.error
    assert "other" in trial.error  # what it did report


def _searching(param: dict[str, Any]) -> dict[str, Any]:
    return {"search_space": [param]}


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"dataset": {"name": "digits"}}, "spec.dataset"),
        ({"model": {"name": "simple_cnn"}}, "spec.model"),
        ({"training": {"epochs": 3, "batch_size": 32}}, "spec.training.batch_size"),
        ({"training": {"epochs": 3, "optimizer": {"name": "sgd"}}}, "spec.training.optimizer"),
        ({"training": {"seed": 1}}, "spec.training.epochs"),
        (_searching({"name": "optimizer.lr", "float_range": {"low": 0.1, "high": 1}}), "spec.search_space[0].name"),
        (_searching({"name": "trainable.nope", "float_range": {"low": 0.1, "high": 1}}), "spec.search_space[0].name"),
        (_searching({"name": "trainable.x", "choice": {"values": ["far"]}}), "spec.search_space[0].choice.values[0]"),
        ({"trainable": {"name": "bowl", "options": {"epochs": 3}}}, "spec.trainable.options.epochs"),
        ({"trainable": {"name": "nope"}}, "spec.trainable.name"),
        ({"objective": {}}, "spec.objective.metric"),
        ({"objective": {"metric": "score"}}, "spec.objective.mode"),
        ({"resources": {"gpus_per_trial": 2}}, "spec.resources.gpus_per_trial"),
    ],
)
def test_a_trainable_spec_that_mixes_in_the_builtin_trainer_is_refused(tstub: Any, change: dict, path: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        create(tstub, trainable_spec(**change))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(path), err.value.details()
    assert tstub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30).version  # the server lives on


def test_a_builtin_spec_cannot_search_trainable_options(tstub: Any) -> None:
    from support import tiny_spec, to_proto

    spec = tiny_spec(search_space=[{"name": "trainable.x", "float_range": {"low": 0, "high": 1}}])
    with pytest.raises(grpc.RpcError) as err:
        tstub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.search_space[0].name" in err.value.details()


def test_a_killed_worker_resumes_the_trainable_from_its_own_checkpoint(server_process: Any, tmp_path: Path) -> None:
    """SIGKILL of the worker mid-trial: with `trial_retries` the trial runs again in the same folder,
    finds its checkpoint (`trial.resumed`), and its steps go on from the last one it saved."""
    data = tmp_path / "data"
    proc = server_process(data, "--plugins-dir", str(PLUGINS))
    stub = proc.stub()
    spec = trainable_spec(
        "torch_regression",
        options={"step_sleep": 0.4},
        training={"epochs": 6, "seed": 3},
        search_space=[],
        objective={"metric": "val_mse"},
        budget={"max_trials": 1, "trial_retries": 1},
    )
    study_id = create(stub, spec)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        trials = trials_of(stub, study_id)
        if trials and trials[0].epochs_completed >= 2:
            break
        time.sleep(0.05)
    (pid,) = proc.worker_pids()
    os.kill(pid, signal.SIGKILL)
    assert watch_all(stub, study_id)[-1].study_state.state == pb.STUDY_COMPLETED
    (trial,) = trials_of(stub, study_id)
    assert trial.state == pb.TRIAL_COMPLETED, trial.error
    assert (trial.retries, trial.epochs_completed) == (1, 6)
    assert 0 < trial.final_metrics["steps_run_here"] < 6  # the retry did not start over
    (log,) = data.rglob("steps.log")
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [r["step"] for r in runs]
    resumed_at = next(i for i, r in enumerate(runs) if r["resumed"])
    assert steps[:resumed_at] == list(range(1, resumed_at + 1))
    assert steps[resumed_at:] == list(range(steps[resumed_at], 7))
    assert steps[resumed_at] in (resumed_at, resumed_at + 1)  # on from the last saved step (one may be lost)
    assert {r["device"] for r in runs} == {"cpu"} and {r["study"] for r in runs} == {study_id}
    history = [p.epoch for p in stub.GetTrial(pb.GetTrialRequest(study_id=study_id, trial_id=1), timeout=30).metrics]
    assert history == [1, 2, 3, 4, 5, 6]


def test_a_trainable_past_the_deadline_ends_at_its_next_report(tstub: Any) -> None:
    spec = trainable_spec(
        options={"step_sleep": 0.2}, training={"epochs": 500, "seed": 0}, budget={"max_trials": 1, "max_duration": "8s"}
    )
    study_id = create(tstub, spec)
    end = watch_all(tstub, study_id)[-1].study_state
    (trial,) = trials_of(tstub, study_id)
    assert end.state == pb.STUDY_COMPLETED, (end, trial.epochs_completed)  # 8 s: room for a cold worker
    assert trial.state == pb.TRIAL_COMPLETED  # the deadline keeps what it trained
    assert 1 <= trial.epochs_completed < 500


def test_a_server_killed_mid_trial_resumes_the_trainable_on_restart(server_process: Any, tmp_path: Path) -> None:
    """kill -9 of the server: the restarted server runs the interrupted trial again in its folder,
    where the trainable finds its checkpoint; no retry is spent and no step is stored twice."""
    data = tmp_path / "data"
    first = server_process(data, "--plugins-dir", str(PLUGINS))
    spec = trainable_spec(
        "torch_regression",
        options={"step_sleep": 0.4},
        training={"epochs": 6, "seed": 3},
        search_space=[],
        objective={"metric": "val_mse"},
        budget={"max_trials": 1},
    )
    study_id = create(first.stub(), spec)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        trials = trials_of(first.stub(), study_id)
        if trials and trials[0].epochs_completed >= 2:
            break
        time.sleep(0.05)
    first.kill()
    second = server_process(data, "--plugins-dir", str(PLUGINS))
    stub = second.stub()
    assert watch_all(stub, study_id)[-1].study_state.state == pb.STUDY_COMPLETED
    (trial,) = trials_of(stub, study_id)
    assert (trial.state, trial.retries, trial.epochs_completed) == (pb.TRIAL_COMPLETED, 0, 6)
    assert 0 < trial.final_metrics["steps_run_here"] < 6
    (log,) = data.rglob("steps.log")
    resumed = [json.loads(line) for line in log.read_text().splitlines() if json.loads(line)["resumed"]]
    assert resumed and resumed[0]["step"] > 1 and resumed[-1]["step"] == 6
    history = [p.epoch for p in stub.GetTrial(pb.GetTrialRequest(study_id=study_id, trial_id=1), timeout=30).metrics]
    assert history == [1, 2, 3, 4, 5, 6]


def test_pbt_hands_a_trainable_the_source_trials_files_and_its_explored_options(tstub: Any) -> None:
    """Trial 2 (lr 5e-4) is the worse at step 2 and goes on from trial 1's files of step 2 with trial 1's
    lr (a factor of 1): it runs steps 3 and 4 only, and they are trial 1's."""
    spec = trainable_spec(
        "torch_regression",
        training={"epochs": 4, "seed": 5},
        search_space=[{"name": "trainable.lr", "float_range": {"low": 1e-5, "high": 0.5, "log": True}}],
        initial_configs=[{"trainable.lr": 0.05}, {"trainable.lr": 0.0005}],
        objective={"metric": "val_mse", "mode": "MINIMIZE"},
        early_stopping={
            "name": "pbt",
            "options": {"interval": 2, "quantile": 0.5, "perturbation_factors": [1.0], "resample_probability": 0},
        },
        budget={"max_trials": 2, "max_concurrent_trials": 1},
    )
    study_id = create(tstub, spec)
    watch_all(tstub, study_id)
    source, exploiter = trials_of(tstub, study_id)
    assert [(c.epoch, c.source_trial_id, dict(c.config)) for c in exploiter.config_history] == [
        (2, 1, {"trainable.lr": 0.05})
    ]
    assert exploiter.state == pb.TRIAL_COMPLETED and exploiter.final_metrics["steps_run_here"] == 2.0
    mse = [[m.values["val_mse"] for m in t.metrics] for t in (source, exploiter)]
    assert mse[1][1] > mse[0][1] and mse[1][2:] == pytest.approx(mse[0][2:], abs=1e-6)


def test_pbt_lets_a_trial_go_on_as_it_is_when_its_sources_files_are_gone(trainable_server: Any, tstub: Any) -> None:
    """Trial 1 waits at step 2 while trial 2 runs; its kept step-2 files are deleted as trial 2
    starts. Trial 2, the worse at step 2, then has no source to go on from: it trains on with its
    own state and config."""
    import shutil

    spec = trainable_spec(
        "bowl",
        {"step_sleep": 0.5},
        training={"epochs": 4, "seed": 1},
        initial_configs=[{"trainable.x": 3.0}, {"trainable.x": 0.0}],
        early_stopping={"name": "pbt", "options": {"interval": 2, "quantile": 0.5}},
        budget={"max_trials": 2, "max_concurrent_trials": 1},
    )
    study_id = create(tstub, spec)
    folders: dict[int, Path] = {}
    for event in tstub.WatchStudy(pb.WatchStudyRequest(study_id=study_id), timeout=120):
        if event.HasField("trial_started"):
            trial = event.trial_started.trial
            folders[trial.trial_id] = Path(trainable_server.storage.data_dir) / Path(trial.checkpoint).parent
            if trial.trial_id == 2:  # it reaches step 2 a second from now
                shutil.rmtree(folders[1] / "snapshots" / "epoch-2")
                break
    watch_all(tstub, study_id)
    first, second = trials_of(tstub, study_id)
    assert first.metrics[1].values["loss"] < second.metrics[1].values["loss"]  # it was the worse
    assert second.state == pb.TRIAL_COMPLETED and list(second.config_history) == []
    assert [m.values["x"] for m in second.metrics] == [0.0] * 4

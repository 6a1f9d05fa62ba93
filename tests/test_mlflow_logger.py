"""The built-in MLflow logger: runs written to a local MLflow file store, read back with MLflow's own client."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support import to_proto

from tuneyard.plugins.builtin import mlflow_logger
from tuneyard.plugins.manager import BUILTIN_MODULES, PluginRegistry
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # as the logger does: no calls to MLflow's servers
mlflow = pytest.importorskip("mlflow")
from mlflow.entities import Run  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

pytestmark = pytest.mark.timeout(60)
ENV = mlflow_logger.MLFLOW_URI_ENV


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A file-store tracking URI (MLflow 3 asks for MLFLOW_ALLOW_FILE_STORE to use one), set for the logger."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv(ENV, uri)
    yield uri
    assert mlflow_logger.flush(10)


def runs_of(uri: str, study_id: str) -> dict[str, Run]:
    """The study's runs by name (`trial-<n>`), read with MLflow's client."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(f"tuneyard/{study_id}")
    assert experiment is not None, f"no experiment for {study_id}"
    return {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}


def history(uri: str, run: Run, metric: str) -> dict[int, float]:
    return {m.step: m.value for m in MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, metric)}


def test_is_a_builtin_plugin() -> None:
    assert "tuneyard.plugins.builtin.mlflow_logger" in BUILTIN_MODULES


def test_hooks_write_a_run_per_trial_with_params_epochs_final_metrics_and_state(store: str) -> None:
    registry = PluginRegistry.load(entry_points=False)
    registry.on_trial_start("st-ml", 1, {"optimizer.name": "adam", "optimizer.lr": 0.01, "model.widths": [8, 16]})
    registry.on_trial_start("st-ml", 2, {"optimizer.name": "sgd", "optimizer.lr": 0.1, "model.widths": [4]})
    for epoch in (1, 2, 3):
        registry.on_trial_report("st-ml", 1, epoch, {"val_accuracy": 0.5 + epoch / 10, "val_loss": 1.0 / epoch})
    registry.on_trial_report("st-ml", 2, 1, {"val_accuracy": 0.25})
    registry.on_trial_end("st-ml", 1, "COMPLETED", {"val_accuracy": 0.8, "test_accuracy": 0.75})
    registry.on_trial_end("st-ml", 2, "FAILED", {})
    registry.on_trial_report("st-ml", 3, 1, {"val_accuracy": 0.1})  # a trial resumed after a restart: no start seen
    registry.on_trial_report("st-ml", 3, 2, {"val_accuracy": 0.2})
    registry.on_trial_end("st-ml", 3, "CANCELLED", {"val_accuracy": 0.2})
    assert mlflow_logger.flush(10)

    runs = runs_of(store, "st-ml")
    assert sorted(runs) == ["trial-1", "trial-2", "trial-3"]
    first, second, third = runs["trial-1"], runs["trial-2"], runs["trial-3"]
    assert first.data.params == {"optimizer.name": "adam", "optimizer.lr": "0.01", "model.widths": "[8, 16]"}
    assert history(store, first, "val_accuracy") == pytest.approx({1: 0.6, 2: 0.7, 3: 0.8})
    assert history(store, first, "val_loss") == pytest.approx({1: 1.0, 2: 0.5, 3: 1 / 3})
    assert first.data.metrics["final/test_accuracy"] == pytest.approx(0.75)
    assert first.data.tags["tuneyard.state"] == "COMPLETED" and first.info.status == "FINISHED"
    assert first.data.tags["tuneyard.study_id"] == "st-ml" and first.data.tags["tuneyard.trial_id"] == "1"
    assert second.data.tags["tuneyard.state"] == "FAILED" and second.info.status == "FAILED"
    assert not any(name.startswith("final/") for name in second.data.metrics)
    assert history(store, third, "val_accuracy") == pytest.approx({1: 0.1, 2: 0.2})
    assert third.info.status == "KILLED" and third.data.params == {}


def test_does_nothing_without_a_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow_logger.tuneyard_on_trial_start("st-off", 0, {"a": 1})
    mlflow_logger.tuneyard_on_trial_report("st-off", 0, 1, {"val_accuracy": 0.5})
    mlflow_logger.tuneyard_on_trial_end("st-off", 0, "COMPLETED", {"val_accuracy": 0.5})
    assert mlflow_logger.flush(10)
    assert list(tmp_path.iterdir()) == []  # no ./mlruns: MLflow's default store was never touched


def test_a_failing_tracking_store_is_logged_and_never_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv(ENV, (blocker / "mlruns").as_uri())
    with caplog.at_level(logging.WARNING, logger=mlflow_logger.__name__):
        mlflow_logger.tuneyard_on_trial_start("st-bad", 0, {"a": 1})
        mlflow_logger.tuneyard_on_trial_end("st-bad", 0, "COMPLETED", {"v": 1.0})
        assert mlflow_logger.flush(10)
    assert "MLflow start of st-bad trial 0 failed" in caplog.text
    assert "MLflow end of st-bad trial 0 failed" in caplog.text


def test_a_real_external_study_logs_each_trial_as_a_run(tmp_path: Path, store: str) -> None:
    from tuneyard.server.app import start_server

    spec = {
        "name": "line",
        "external": {},
        "search_space": [{"name": "x", "float_range": {"low": 0, "high": 1}}],
        "objective": {"metric": "value", "mode": "MINIMIZE"},
        "training": {"epochs": 3},
        "budget": {"max_trials": 3, "max_concurrent_trials": 1},
    }
    handle = start_server(data_dir=tmp_path / "data", devices="cpu", cpu_slots=1, mlflow_tracking_uri=store)
    try:
        with grpc.insecure_channel(handle.address) as channel:
            stub = service_pb2_grpc.TrainingServiceStub(channel)
            study_id = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec))).study_id
            configs = {}
            for _ in range(3):
                (trial,) = stub.SuggestTrials(pb.SuggestTrialsRequest(study_id=study_id, count=1)).trials
                configs[trial.trial_id] = trial.config["x"]
                for step in (1, 2, 3):
                    metrics = {"value": trial.config["x"] / step}
                    stub.ReportTrial(
                        pb.ReportTrialRequest(study_id=study_id, trial_id=trial.trial_id, step=step, metrics=metrics)
                    )
                stub.CompleteTrial(
                    pb.CompleteTrialRequest(study_id=study_id, trial_id=trial.trial_id, state=pb.TRIAL_COMPLETED)
                )
    finally:
        handle.stop()
    assert mlflow_logger.flush(10)

    runs = runs_of(store, study_id)
    assert sorted(runs) == [f"trial-{n}" for n in sorted(configs)]
    for trial_id, x in configs.items():
        run = runs[f"trial-{trial_id}"]
        assert float(run.data.params["x"]) == pytest.approx(x)
        assert history(store, run, "value") == pytest.approx({1: x, 2: x / 2, 3: x / 3})
        assert run.data.metrics["final/value"] == pytest.approx(x / 3)
        assert run.data.tags["tuneyard.state"] == "COMPLETED" and run.info.status == "FINISHED"


def test_a_restarted_server_finds_the_run_of_a_resumed_trial(store: str) -> None:
    from tuneyard.plugins.builtin.mlflow_logger.writer import MlflowLog

    before = MlflowLog(store)  # the server that started the trial
    before.start("st-re", 7, {"x": 0.5}, 1_000.0)
    before.report("st-re", 7, 1, {"value": 0.5}, 1_001.0)
    after = MlflowLog(store)  # a restarted server: nothing cached, the run found by its tags
    after.report("st-re", 7, 2, {"value": 0.25}, 1_002.0)
    after.end("st-re", 7, "COMPLETED", {"value": 0.25}, 1_003.0)

    (run,) = runs_of(store, "st-re").values()
    assert history(store, run, "value") == {1: 0.5, 2: 0.25}
    assert run.data.params == {"x": "0.5"} and run.info.status == "FINISHED"
    assert run.info.start_time == 1_000_000 and run.info.end_time == 1_003_000

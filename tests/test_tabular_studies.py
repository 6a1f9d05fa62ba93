"""Studies on tabular data over gRPC: a regression study on `diabetes` minimising `val_mse`, and the `csv`
dataset from a real file under the data root for each task. A real server on a loopback port trains the
built-in `mlp` in real worker processes; the metrics come from the dataset's task."""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from support import watch_all

from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc, spec_pb2


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three CSV files: string class labels, a numeric target, two 0/1 label columns."""
    root = tmp_path_factory.mktemp("tabular-root")
    rng = random.Random(0)
    rows = []
    for _ in range(300):
        a, b = rng.uniform(-1, 1), rng.uniform(-1, 1)
        rows.append({"a": a, "b": b, "kind": "left" if a < -0.3 else ("right" if a > 0.3 else "middle"),
                     "y": 2 * a - b + rng.gauss(0, 0.05), "pos_a": int(a > 0), "pos_b": int(b > 0)})  # fmt: skip
    for name, columns in [
        ("kinds.csv", ["a", "b", "kind"]),
        ("line.csv", ["a", "b", "y"]),
        ("signs.csv", ["a", "b", "pos_a", "pos_b"]),
    ]:
        with open(root / name, "w", newline="") as f:
            writer = csv.DictWriter(f, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def tab_stub(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[Any]:
    from tuneyard.server.app import start_server

    handle = start_server(
        data_dir=tmp_path_factory.mktemp("tabular-data"), devices="cpu", cpu_slots=2, data_root=str(data_root)
    )
    with grpc.insecure_channel(handle.address) as channel:
        yield service_pb2_grpc.TrainingServiceStub(channel)
    handle.stop()


def study(stub: Any, spec: dict[str, Any]) -> tuple[pb.Study, list[pb.Trial]]:
    created = stub.CreateStudy(
        pb.CreateStudyRequest(spec=json_format.ParseDict(spec, spec_pb2.StudySpec())), timeout=30
    )
    watch_all(stub, created.study_id)
    trials = list(stub.ListTrials(pb.ListTrialsRequest(study_id=created.study_id), timeout=30).trials)
    return stub.GetStudy(pb.GetStudyRequest(study_id=created.study_id), timeout=30), trials


def mlp_spec(dataset: dict[str, Any], metric: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset": dataset,
        "model": {"name": "mlp", "options": {"width": 32}},
        "training": {"epochs": 8, "batch_size": 32, "optimizer": {"name": "adam", "options": {"lr": 0.01}}, "seed": 0},
        "search_space": [{"name": "model.depth", "choice": {"values": [1, 2]}}],
        "searcher": {"name": "grid"},
        "objective": {"metric": metric},
        "budget": {"max_trials": 2, "max_concurrent_trials": 2},
    }
    spec.update(overrides)
    return spec


def test_a_regression_study_on_diabetes_minimises_val_mse(tab_stub: Any) -> None:
    spec = mlp_spec({"name": "diabetes"}, "val_mse")
    done, trials = study(tab_stub, spec)
    assert done.state == pb.STUDY_COMPLETED, done.error
    for trial in trials:
        assert trial.state == pb.TRIAL_COMPLETED, trial.error
        metrics = dict(trial.final_metrics)
        assert {"train_loss", "train_mse", "val_loss", "val_mse", "val_mae", "val_r2"} <= set(metrics)
        assert "val_accuracy" not in metrics
        assert trial.objective_value == metrics["val_mse"]
        assert metrics["val_mse"] == pytest.approx(metrics["val_loss"], rel=1e-4)  # MSE is the loss
    best = min(trials, key=lambda t: t.objective_value)
    assert done.best_trial.trial_id == best.trial_id
    assert best.final_metrics["val_r2"] > 0.2  # learnt something (standardised target: r2 = 1 - mse)
    assert {"test_loss", "test_mse", "test_mae", "test_r2"} <= set(done.test_metrics)
    assert all(math.isfinite(v) for v in done.test_metrics.values())


def test_a_csv_classification_with_text_labels(tab_stub: Any) -> None:
    done, trials = study(
        tab_stub, mlp_spec({"name": "csv", "options": {"path": "kinds.csv", "target": "kind"}}, "val_accuracy")
    )
    assert done.state == pb.STUDY_COMPLETED, done.error
    assert max(t.final_metrics["val_accuracy"] for t in trials) > 0.9
    assert done.test_metrics["test_accuracy"] > 0.85


def test_a_csv_regression_with_a_huber_loss_searched(tab_stub: Any) -> None:
    dataset = {"name": "csv", "options": {"path": "line.csv", "target": "y", "task": "regression"}}
    spec = mlp_spec(dataset, "val_r2", search_space=[{"name": "task.loss", "choice": {"values": ["huber", "l1"]}}])
    done, trials = study(tab_stub, spec)
    assert done.state == pb.STUDY_COMPLETED, done.error
    assert sorted(json_format.MessageToDict(t.config)["task.loss"] for t in trials) == ["huber", "l1"]
    assert done.best_trial.final_metrics["val_r2"] > 0.9
    assert done.best_trial.objective_value == max(t.final_metrics["val_r2"] for t in trials)  # r2: higher is better


def test_a_csv_multilabel_study_reports_f1(tab_stub: Any) -> None:
    dataset = {"name": "csv", "options": {"path": "signs.csv", "target": "pos_a,pos_b", "task": "multilabel"}}
    done, trials = study(tab_stub, mlp_spec(dataset, "val_f1"))
    assert done.state == pb.STUDY_COMPLETED, done.error
    assert max(t.final_metrics["val_f1"] for t in trials) > 0.85
    assert {"test_f1", "test_accuracy", "test_loss"} <= set(done.test_metrics)


def test_a_csv_path_outside_the_data_root_is_refused(tab_stub: Any) -> None:
    spec = mlp_spec({"name": "csv", "options": {"path": "../elsewhere.csv", "target": "y"}}, "val_accuracy")
    with pytest.raises(grpc.RpcError) as err:
        tab_stub.CreateStudy(pb.CreateStudyRequest(spec=json_format.ParseDict(spec, spec_pb2.StudySpec())), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("spec.dataset.options.path")


def test_a_csv_column_that_is_not_there_fails_the_trial_naming_it(tab_stub: Any) -> None:
    dataset = {"name": "csv", "options": {"path": "kinds.csv", "target": "colour"}}
    done, trials = study(tab_stub, mlp_spec(dataset, "val_accuracy", search_space=[], budget={"max_trials": 1}))
    assert done.state == pb.STUDY_FAILED
    assert trials[0].state == pb.TRIAL_FAILED and "'colour'" in trials[0].error

"""Typed results out of a real server: `Trial`/`Study` records, the DataFrame, CSV and JSON, the full config.

The trials are real: an external study on the session's in-process server, evaluated here by
`Client.optimize` (no training, so it takes well under a second). The full configuration of a
trial is checked against the server's own `settings.resolve` on a real validated spec.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from typing import Any

import pytest
from support import tiny_spec

from tuneyard.client import Client, ExternalTrial, RunResult, render
from tuneyard.client.cli import main
from tuneyard.client.resolved import resolved_config
from tuneyard.client.results import PANDAS_MISSING, Study, Trial, trials_dataframe
from tuneyard.v1 import service_pb2 as pb

pytestmark = pytest.mark.timeout(60)

SPEC: dict[str, Any] = {
    "name": "typed",
    "external": {},
    "search_space": [
        {"name": "x", "float_range": {"low": -2, "high": 2}},
        {"name": "width", "int_range": {"low": 1, "high": 64}},
        {"name": "kind", "choice": {"values": ["a", "b"]}},
    ],
    "objectives": [{"metric": "loss", "mode": "MINIMIZE"}, {"metric": "size", "mode": "MAXIMIZE"}],
    "searcher": {"name": "random"},
    "budget": {"max_trials": 6, "max_concurrent_trials": 2},
}


def _evaluate(trial: ExternalTrial) -> dict[str, float]:
    x, width = trial.config["x"], trial.config["width"]
    trial.report(1, {"loss": x * x + 1, "size": width / 2, "extra": 1.0})
    if trial.trial_id == 3:
        raise RuntimeError("trial 3 breaks on purpose")
    return {"loss": x * x, "size": float(width), "extra": 2.0}


@pytest.fixture(scope="module")
def study(server: Any) -> tuple[Client, RunResult]:
    client = Client(server.address, token="")
    result = client.optimize(SPEC, _evaluate, n_workers=2, progress=False)
    assert result.state == "COMPLETED", result.error
    return client, result


def test_trials_are_plain_records_with_state_names_ints_and_datetimes(study: tuple[Client, RunResult]) -> None:
    client, result = study
    trials = client.trials(result.study_id)
    assert [t.trial_id for t in trials] == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(t, Trial) for t in trials)
    assert [t.state for t in trials].count("FAILED") == 1 and trials[2].state == "FAILED"
    assert "trial 3 breaks on purpose" in trials[2].error and trials[2].values == {}
    done = trials[0]
    assert done.state == "COMPLETED" and type(done.config["width"]) is int and done.config["kind"] in ("a", "b")
    assert list(done.values) == ["loss", "size"]  # every objective, by name, in the spec's order
    assert done.values["size"] == float(done.config["width"]) and done.value == pytest.approx(done.config["x"] ** 2)
    assert done.metrics["extra"] == 2.0 and done.history[0].epoch == 1 and done.history[0].values["extra"] == 1.0
    assert isinstance(done.start_time, datetime) and done.start_time.tzinfo == timezone.utc
    assert done.duration is not None and 0 <= done.duration < 30
    assert client.trial(result.study_id, 1) == done
    with pytest.raises(AttributeError):
        done.state = "FAILED"  # type: ignore[misc]  # frozen


def test_study_record_and_run_result_are_plain(study: tuple[Client, RunResult]) -> None:
    client, result = study
    record = client.study(result.study_id)
    assert isinstance(record, Study) and record.state == "COMPLETED" and record.name == "typed"
    assert [(o.metric, o.mode) for o in record.objectives] == [("loss", "MINIMIZE"), ("size", "MAXIMIZE")]
    assert record.trial_counts["completed"] == 5 and record.trial_counts["failed"] == 1
    assert record.pareto_front and all(t.state == "COMPLETED" for t in record.pareto_front)
    assert record.create_time is not None and record.end_time is not None and record.end_time >= record.create_time
    assert result.best_trial is not None and result.best_trial.config == result.best_config
    assert type(result.best_config["width"]) is int
    assert result.resolved_config == result.best_config  # an external study ran its searched values alone
    assert result.study_id in {s.study_id for s in client.studies(state="completed")}


def test_trials_dataframe_has_optunas_columns_and_the_values(study: tuple[Client, RunResult]) -> None:
    pytest.importorskip("pandas")
    client, result = study
    frame = client.trials_dataframe(result.study_id)
    assert list(frame.columns) == [
        "number",
        "state",
        "values_loss",
        "values_size",
        "params_x",
        "params_width",
        "params_kind",
        "metrics_extra",
        "metrics_loss",
        "metrics_size",
        "datetime_start",
        "datetime_complete",
        "duration",
        "device",
        "epochs",
    ]
    assert frame["number"].tolist() == [1, 2, 3, 4, 5, 6] and frame["state"].tolist().count("COMPLETED") == 5
    trials = {t.trial_id: t for t in client.trials(result.study_id)}
    for _, row in frame.iterrows():
        trial = trials[row["number"]]
        assert row["params_width"] == trial.config["width"] and row["params_x"] == pytest.approx(trial.config["x"])
        if trial.state == "COMPLETED":
            assert row["values_size"] == trial.config["width"] and row["metrics_extra"] == 2.0
    assert str(frame["datetime_start"].dtype).startswith("datetime64") and frame["duration"].min() >= 0


def test_trials_dataframe_without_pandas_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        trials_dataframe([], ())
    assert "pandas" in PANDAS_MISSING


def test_cli_trials_csv_json_and_table(
    study: tuple[Client, RunResult], server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client, result = study
    trials = {t.trial_id: t for t in client.trials(result.study_id)}
    assert main(["--server", server.address, "trials", result.study_id, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["number"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    for row in rows:
        trial = trials[int(row["number"])]
        assert row["state"] == trial.state and row["params_width"] == str(trial.config["width"])
        assert row["values_loss"] == (str(trial.values["loss"]) if trial.values else "")
        assert datetime.fromisoformat(row["datetime_start"]) == trial.start_time
    assert main(["--server", server.address, "trials", result.study_id, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["state"] == "COMPLETED" and data[0]["config"] == trials[1].config
    assert data[0]["values"] == trials[1].values and data[0]["history"][0]["epoch"] == 1
    assert main(["--server", server.address, "trials", result.study_id]) == 0
    table = capsys.readouterr().out
    assert "loss" in table and "size" in table  # a column per objective, not only the first


def test_full_configuration_is_the_servers_resolved_settings() -> None:
    """The client's resolution of a real validated spec agrees with the server's `resolve`."""
    from tuneyard.plugins.manager import PluginRegistry
    from tuneyard.server.api import convert
    from tuneyard.server.study.settings import resolve
    from tuneyard.server.study.spec import SpecValidator

    registry = PluginRegistry.load(entry_points=False)
    spec = tiny_spec(training={"epochs": 2, "optimizer": {"name": "adam", "options": {"lr": 0.01, "eps": 1e-7}}})
    plan = SpecValidator(registry).validate(spec)
    stored = convert.spec_from_dict(plan.spec)
    plugins = pb.ListPluginsResponse(plugins=[convert.plugin_to_proto(e) for e in registry.entries(None)])
    config = {"model.num_conv_layers": 2, "optimizer.name": "sgd"}
    server = resolve(plan.spec, config, registry)
    client = resolved_config(stored, config, plugins)
    model, optimizer = client["model"], client["training"]["optimizer"]
    assert model["name"] == "simple_cnn" and optimizer["name"] == "sgd"
    for ours, theirs in (
        (model["options"], server.model.options),
        (optimizer["options"], server.training.optimizer.options),
    ):
        assert {k: ours[k] for k in theirs} == theirs  # the server's options, the searched ones written in
    assert type(model["options"]["num_filters"]) is int and model["options"]["num_conv_layers"] == 2
    assert "eps" not in optimizer["options"] and optimizer["options"]["lr"] == 0.01  # sgd takes lr, not eps
    assert set(model["options"]) > set(server.model.options)  # the plugin's defaults filled in
    for name in ("epochs", "batch_size", "seed", "label_smoothing", "precision", "deterministic"):
        assert client["training"][name] == getattr(server.training, name), name
    assert client["dataset"]["name"] == server.dataset.name and client["task"]["name"] == server.task.name
    # `tuneyard best` prints it under its own heading.
    study = pb.Study(study_id="s1", spec=stored, state=pb.STUDY_COMPLETED)
    study.best_trial.trial_id, study.best_trial.objective_value = 1, 0.9
    study.best_trial.config.update(config)
    text = render.result_yaml(RunResult.from_study(study, plugins=plugins))
    assert "best_config:\n  model.num_conv_layers: 2\n" in text and "resolved_config:\n  dataset:" in text
    assert "    name: sgd\n" in text

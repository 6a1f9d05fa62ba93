"""The built-in TensorBoard logger: event files read back with tensorboard's own EventAccumulator."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from support import tiny_spec, to_proto, watch_all
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tuneyard.plugins.builtin import tensorboard_logger
from tuneyard.plugins.builtin.tensorboard_logger import tfevents as _tfevents
from tuneyard.plugins.manager import BUILTIN_MODULES, PluginRegistry
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

ENV = tensorboard_logger.TENSORBOARD_DIR_ENV


def read_run(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> dict[int, float]:
    """step -> value; fails on a repeated step."""
    events = acc.Scalars(tag)
    assert len({e.step for e in events}) == len(events), f"{tag}: a step written twice"
    return {e.step: e.value for e in events}


def text(acc: EventAccumulator, tag: str) -> str:
    return acc.Tensors(tag)[-1].tensor_proto.string_val[0].decode()


def hparams(acc: EventAccumulator, tag: str) -> plugin_data_pb2.HParamsPluginData:
    return plugin_data_pb2.HParamsPluginData.FromString(acc.PluginTagToContent("hparams")[tag])


def test_crc32c_matches_the_castagnoli_check_value():
    assert _tfevents.crc32c(b"123456789") == 0xE3069283


def test_is_a_builtin_plugin():
    assert "tuneyard.plugins.builtin.tensorboard_logger" in BUILTIN_MODULES


def test_hooks_write_one_run_per_trial_with_scalars_per_epoch_config_and_end_state(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path / "tb"))
    tb = tensorboard_logger
    tb.tuneyard_on_trial_start("st-abc", 0, {"optimizer.name": "adam", "optimizer.lr": 0.01, "model.depth": 2})
    tb.tuneyard_on_trial_start("st-abc", 1, {"optimizer.name": "sgd", "optimizer.lr": 0.1, "model.depth": 3})
    for epoch in (1, 2, 3):
        tb.tuneyard_on_trial_report("st-abc", 0, epoch, {"val_accuracy": 0.5 + epoch / 10, "val_loss": 1.0 / epoch})
        if epoch < 3:
            tb.tuneyard_on_trial_report("st-abc", 1, epoch, {"val_accuracy": 0.25 * epoch})
    tb.tuneyard_on_trial_end("st-abc", 0, "COMPLETED", {"val_accuracy": 0.8, "val_loss": 1 / 3})
    tb.tuneyard_on_trial_end("st-abc", 1, "PRUNED", {"val_accuracy": 0.5})

    study_dir = tmp_path / "tb" / "st-abc"
    assert sorted(p.name for p in study_dir.iterdir()) == ["trial-0", "trial-1"]
    first, second = read_run(study_dir / "trial-0"), read_run(study_dir / "trial-1")
    assert scalars(first, "val_accuracy") == pytest.approx({1: 0.6, 2: 0.7, 3: 0.8})
    assert scalars(first, "val_loss") == pytest.approx({1: 1.0, 2: 0.5, 3: 1 / 3})
    assert scalars(second, "val_accuracy") == pytest.approx({1: 0.25, 2: 0.5})
    assert "val_loss" not in second.Tags()["scalars"]

    assert "| optimizer.name | adam |" in text(first, "config")
    assert "| model.depth | 3 |" in text(second, "config")
    assert text(first, "state").startswith("**COMPLETED**") and "| val_accuracy | 0.8 |" in text(first, "state")
    assert text(second, "state").startswith("**PRUNED**")

    start = hparams(first, _tfevents.SESSION_START_TAG).session_start_info
    assert start.hparams["optimizer.name"].string_value == "adam"
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(0.01)
    assert start.hparams["model.depth"].number_value == 2
    end = hparams(first, _tfevents.SESSION_END_TAG).session_end_info
    assert end.status == _tfevents.STATUS_SUCCESS and end.end_time_secs > start.start_time_secs - 1


def test_does_nothing_without_a_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    tensorboard_logger.tuneyard_on_trial_start("st-off", 0, {"a": 1})
    tensorboard_logger.tuneyard_on_trial_report("st-off", 0, 1, {"val_accuracy": 0.5})
    tensorboard_logger.tuneyard_on_trial_end("st-off", 0, "COMPLETED", {"val_accuracy": 0.5})
    assert list(tmp_path.iterdir()) == []


def test_a_study_id_cannot_leave_the_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path / "tb"))
    tensorboard_logger.tuneyard_on_trial_report("../../evil", 4, 1, {"val_accuracy": 0.5})
    tensorboard_logger.tuneyard_on_trial_end("../../evil", 4, "FAILED", {})
    (study,) = (tmp_path / "tb").iterdir()
    assert [p.name for p in study.iterdir()] == ["trial-4"]
    assert scalars(read_run(study / "trial-4"), "val_accuracy") == {1: 0.5}


def test_a_write_failure_is_logged_by_the_registry_not_raised(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv(ENV, str(blocker))
    registry = PluginRegistry.load(entry_points=False)
    registry.on_trial_start("st-x", 0, {"a": 1})
    registry.on_trial_report("st-x", 0, 1, {"val_accuracy": 0.5})
    registry.on_trial_end("st-x", 0, "COMPLETED", {"val_accuracy": 0.5})
    assert "tensorboard_logger" in caplog.text and "ignored" in caplog.text


def test_a_real_study_writes_val_accuracy_for_every_epoch_of_both_trials(tmp_path, monkeypatch):
    from tuneyard.server.app import start_server

    tb_dir = tmp_path / "tb"
    monkeypatch.setenv(ENV, str(tb_dir))  # what `tuneyard serve --tensorboard-dir` does before start_server
    handle = start_server(data_dir=tmp_path / "data", devices="cpu", cpu_slots=1)
    try:
        with grpc.insecure_channel(handle.address) as channel:
            stub = service_pb2_grpc.TrainingServiceStub(channel)
            spec = tiny_spec(budget={"max_trials": 2, "max_concurrent_trials": 1})
            study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)), timeout=60)
            assert watch_all(stub, study.study_id)[-1].study_state.state == pb.STUDY_COMPLETED
            listed = stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id), timeout=60).trials
            trials = [stub.GetTrial(pb.GetTrialRequest(study_id=study.study_id, trial_id=t.trial_id)) for t in listed]
    finally:
        handle.stop()
    study_dir = tb_dir / study.study_id
    assert len(trials) == 2
    assert sorted(p.name for p in study_dir.iterdir()) == sorted(f"trial-{t.trial_id}" for t in trials)
    for trial in trials:
        acc = read_run(study_dir / f"trial-{trial.trial_id}")
        stored = {m.epoch: m.values["val_accuracy"] for m in trial.metrics}
        assert sorted(stored) == [1, 2]
        assert scalars(acc, "val_accuracy") == pytest.approx(stored, rel=1e-6)
        assert text(acc, "state").startswith("**COMPLETED**")

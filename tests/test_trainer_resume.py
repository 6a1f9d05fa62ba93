"""A trial interrupted after an epoch and resumed from its checkpoint ends exactly where an
uninterrupted run ends: weights, optimizer, schedule, EMA, random generators all restored."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from tuneyard.plugins.api import Objective
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.execution.messages import TrainTask
from tuneyard.server.study.settings import Component, TrainingSettings, TrialSettings
from tuneyard.server.worker.checkpoints import resume_path, resume_states
from tuneyard.server.worker.trainer import Trainer

TIMING = ("epoch_seconds", "train_seconds", "inference_latency_ms")
SETTINGS = TrialSettings(
    dataset=Component("digits"),
    model=Component("simple_cnn", {"num_filters": 6, "num_conv_layers": 1, "dropout": 0.2}),
    training=TrainingSettings(
        epochs=3,
        batch_size=64,
        optimizer=Component("sgd", {"lr": 0.05, "momentum": 0.9}),
        lr_scheduler=Component("cosine"),
        augmentations=(Component("random_crop", {"padding": 1}),),
        label_smoothing=0.1,
        precision="auto",
        seed=3,
        grad_clip_norm=1.0,
        grad_accumulation_steps=1,
        ema_decay=0.5,
        early_stop_patience=0,
        deterministic=True,
    ),
)


@pytest.fixture(scope="module")
def trainer() -> Trainer:
    return Trainer(PluginRegistry.load(entry_points=False), "cpu")


def train(trainer: Trainer, checkpoint: Path, stop_after_epoch: int = 0, resume: bool = False) -> tuple[Any, list]:
    reports: list[tuple[int, dict[str, float]]] = []
    task = TrainTask(1, copy.deepcopy(SETTINGS), str(checkpoint), Objective("val_accuracy", "max"), resume=resume)
    result = trainer.train(
        task, lambda e, m: reports.append((e, m)), lambda: bool(reports) and reports[-1][0] >= stop_after_epoch > 0
    )
    return result, reports


def strip(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k not in TIMING}


def test_resumed_run_matches_an_uninterrupted_one(trainer, tmp_path):
    whole, whole_reports = train(trainer, tmp_path / "whole" / "checkpoint.pt")
    cut = tmp_path / "cut" / "checkpoint.pt"
    stopped, first_part = train(trainer, cut, stop_after_epoch=2)
    assert stopped["stopped"] and [e for e, _ in first_part] == [1, 2]
    assert resume_path(cut).exists()
    resumed, second_part = train(trainer, cut, resume=True)
    assert [e for e, _ in second_part] == [2, 3]  # the checkpoint's epoch again, then the rest
    assert resumed["epochs"] == whole["epochs"] == 3
    assert strip(resumed["final_metrics"]) == strip(whole["final_metrics"])
    assert strip(second_part[0][1]) == strip(whole_reports[1][1])
    a = torch.load(cut, weights_only=True)["model"]
    b = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_new_run_ignores_state_left_at_its_path(trainer, tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    train(trainer, checkpoint, stop_after_epoch=1)
    _, reports = train(trainer, checkpoint)
    assert [e for e, _ in reports] == [1, 2, 3]


def test_a_resume_state_of_the_older_format_resumes_alike(trainer, tmp_path):
    """Resume states hold Python's generator state packed as bytes; one from before (the tuple
    itself) still resumes to the same run."""
    whole, _ = train(trainer, tmp_path / "whole" / "checkpoint.pt")
    cut = tmp_path / "cut" / "checkpoint.pt"
    train(trainer, cut, stop_after_epoch=2)
    state = resume_states(cut)[0]
    assert isinstance(state["rng"]["python"], bytes)
    state["rng"]["python"] = pickle.loads(state["rng"]["python"])  # as an older trainer wrote it
    torch.save(state, resume_path(cut))
    resumed, _ = train(trainer, cut, resume=True)
    assert strip(resumed["final_metrics"]) == strip(whole["final_metrics"])

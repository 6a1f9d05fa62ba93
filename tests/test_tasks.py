"""Tasks: the built-in heads' metrics against independent computations, and the real trainer
training regression and multilabel datasets (registered by an in-test plugin) on their task's loss."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, r2_score
from torch import nn
from torch.utils.data import TensorDataset

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import DatasetSplits, Objective
from tuneyard.plugins.builtin.tasks.heads import Classification, Multilabel, Regression
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.execution.messages import EvaluateTask, TrainTask
from tuneyard.server.study.settings import Component, TrainingSettings, TrialSettings
from tuneyard.server.worker.task_totals import TaskTotals
from tuneyard.server.worker.trainer import Trainer

COMMON = {"inference_latency_ms", "lr", "epoch_seconds", "train_seconds", "params", "trainable_params"}


def _totals(head, outputs, targets, batch=37):
    """The head's loss and metrics summed batch by batch, as the trainer sums them."""
    totals = TaskTotals(head, torch.device("cpu"))
    for start in range(0, len(targets), batch):
        out, y = outputs[start : start + batch], targets[start : start + batch]
        totals.add(head.loss(out, y), out, y)
    return totals.read()


def test_classification_accuracy_and_loss_match_a_hand_computation():
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(200, 5, generator=gen), torch.randint(0, 5, (200,), generator=gen)
    got = _totals(Classification(num_classes=5), logits, labels)
    z = logits.numpy().astype(np.float64)
    log_p = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    assert set(got) == {"loss", "accuracy"}
    assert got["accuracy"] == pytest.approx(np.mean(z.argmax(1) == labels.numpy()))
    assert got["loss"] == pytest.approx(-log_p[np.arange(200), labels.numpy()].mean(), rel=1e-5)
    smoothed = Classification(num_classes=5, label_smoothing=0.2).loss(logits, labels).item()
    assert smoothed == pytest.approx((0.8 * -log_p[np.arange(200), labels.numpy()] - 0.2 * log_p.mean(1)).mean())


def test_regression_metrics_match_numpy_and_sklearn_far_from_zero():
    gen = torch.Generator().manual_seed(1)
    targets = 10_000.0 + torch.randn(300, generator=gen)  # a large mean: r2 must not cancel away
    outputs = (targets + 0.5 * torch.randn(300, generator=gen)).unsqueeze(1)  # one output per sample
    got = _totals(Regression(), outputs, targets)
    t, o = targets.numpy().astype(np.float64), outputs[:, 0].numpy().astype(np.float64)
    assert set(got) == {"loss", "mse", "mae", "r2"}
    assert got["mse"] == pytest.approx(np.mean((o - t) ** 2), rel=1e-6)
    assert got["mae"] == pytest.approx(np.mean(np.abs(o - t)), rel=1e-6)
    assert got["r2"] == pytest.approx(r2_score(t, o), abs=1e-6)
    assert got["loss"] == pytest.approx(got["mse"], rel=1e-4)


def test_regression_pools_targets_and_its_losses_are_the_textbook_ones():
    gen = torch.Generator().manual_seed(2)
    targets, outputs = torch.randn(120, 3, generator=gen), 2 * torch.randn(120, 3, generator=gen)
    error = (outputs - targets).numpy().astype(np.float64)
    got = _totals(Regression(), outputs, targets)
    flat = targets.numpy().astype(np.float64).ravel()
    assert got["mse"] == pytest.approx(np.mean(error**2), rel=1e-6)
    assert got["r2"] == pytest.approx(1 - np.sum(error**2) / np.sum((flat - flat.mean()) ** 2), rel=1e-6)
    a = np.abs(error)
    huber = np.where(a < 0.7, 0.5 * a**2, 0.7 * (a - 0.35)).mean()
    assert Regression(loss="huber", huber_delta=0.7).loss(outputs, targets).item() == pytest.approx(huber, rel=1e-5)
    assert Regression(loss="l1").loss(outputs, targets).item() == pytest.approx(a.mean(), rel=1e-5)
    with pytest.raises(ValueError, match="one output per target"):
        Regression().sums(outputs[:, :2], targets)


def test_multilabel_f1_and_accuracy_match_sklearn():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(250, 6, generator=gen)
    targets = (torch.rand(250, 6, generator=gen) < 0.4).float()
    got = _totals(Multilabel(threshold=0.3), logits, targets)
    predicted = (1 / (1 + np.exp(-logits.numpy().astype(np.float64)))) > 0.3
    assert set(got) == {"loss", "f1", "accuracy"}
    assert got["f1"] == pytest.approx(f1_score(targets.numpy(), predicted, average="micro"))
    assert got["accuracy"] == pytest.approx(np.mean(predicted == (targets.numpy() > 0.5)))
    p = 1 / (1 + np.exp(-logits.numpy().astype(np.float64)))
    bce = -(targets.numpy() * np.log(p) + (1 - targets.numpy()) * np.log(1 - p)).mean()
    assert got["loss"] == pytest.approx(bce, rel=1e-5)


def _splits(x, y, task, num_classes):
    n = len(x)
    cut = [0, n * 6 // 10, n * 8 // 10, n]
    parts = [TensorDataset(x[a:b], y[a:b]) for a, b in zip(cut, cut[1:], strict=False)]
    return DatasetSplits(*parts, num_classes=num_classes, input_shape=tuple(x.shape[1:]), task=task)


class TaskPlugins:
    @hookimpl
    def tuneyard_register_datasets(self, register):
        def tiny_regression(*, targets: int = 2):
            """Noisy linear targets far from zero; targets=1 gives (N,) targets, more give (N, T)."""
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(400, 6, generator=gen)
            y = 2.0 + x @ torch.randn(6, targets, generator=gen) + 0.05 * torch.randn(400, targets, generator=gen)
            return _splits(x, y[:, 0] if targets == 1 else y, "regression", targets)

        def tiny_multilabel():
            """Four labels, each a linear threshold of the inputs, as 0/1 floats."""
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(400, 6, generator=gen)
            return _splits(x, (x @ torch.randn(6, 4, generator=gen) > 0).float(), "multilabel", 4)

        def mislabelled():
            """Registered as regression, but its splits say classification."""
            x = torch.randn(50, 6)
            return _splits(x, torch.randint(0, 2, (50,)), "classification", 2)

        register("tiny_regression", tiny_regression, task="regression")
        register("tiny_multilabel", tiny_multilabel, task="multilabel")
        register("mislabelled", mislabelled, task="regression")

    @hookimpl
    def tuneyard_register_models(self, register):
        def tiny_linear(*, input_shape, num_classes):
            """One linear layer: an output per class or target."""
            return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes))

        register("tiny_linear", tiny_linear)


@pytest.fixture(scope="module")
def trainer():
    registry = PluginRegistry.load(entry_points=False)
    registry.add_plugin(TaskPlugins(), name="task-tests")
    return Trainer(registry, "cpu")


def _train(trainer, tmp_path, dataset, task, metric, epochs=8, **training):
    settings = TrialSettings(
        dataset=dataset,
        model=Component("tiny_linear"),
        training=TrainingSettings(epochs=epochs, batch_size=32, optimizer=Component("adam", {"lr": 0.1}), **training),
        task=task,
    )
    reports = []
    checkpoint = str(tmp_path / "ckpt.pt")
    train_task = TrainTask(1, settings, checkpoint, Objective(metric, "min"))
    trainer.train(train_task, lambda e, m: reports.append(m), lambda: False)
    return [m for m in reports], trainer.evaluate(EvaluateTask(settings, checkpoint))


@pytest.mark.parametrize(
    ("targets", "pipeline", "loss"), [(2, "device", "mse"), (1, "loader", "huber"), (3, "loader", "l1")]
)
def test_trainer_fits_a_regression_dataset_on_its_task(trainer, tmp_path, targets, pipeline, loss):
    dataset = Component("tiny_regression", {"targets": targets})
    reports, test = _train(
        trainer, tmp_path, dataset, Component("regression", {"loss": loss}), "val_mse", data_pipeline=pipeline
    )
    expected = {f"{split}_{m}" for split in ("train", "val") for m in ("loss", "mse", "mae", "r2")} | COMMON
    assert all(set(m) == expected for m in reports)
    mse = [m["val_mse"] for m in reports]
    assert mse[-1] < mse[0] / 4 and reports[-1]["val_r2"] > 0.8
    assert set(test) == {"test_loss", "test_mse", "test_mae", "test_r2"} and test["test_r2"] > 0.8


def test_trainer_fits_a_multilabel_dataset_on_its_task(trainer, tmp_path):
    reports, test = _train(trainer, tmp_path, Component("tiny_multilabel"), Component("multilabel"), "val_loss")
    expected = {f"{split}_{m}" for split in ("train", "val") for m in ("loss", "f1", "accuracy")} | COMMON
    assert all(set(m) == expected for m in reports)
    assert reports[-1]["val_loss"] < reports[0]["val_loss"] and reports[-1]["val_f1"] > 0.85
    assert set(test) == {"test_loss", "test_f1", "test_accuracy"} and test["test_accuracy"] > 0.85


def test_splits_of_another_task_than_the_registered_one_fail_clearly(trainer, tmp_path):
    with pytest.raises(ValueError, match="dataset 'mislabelled' returned classification targets but declares task"):
        _train(trainer, tmp_path, Component("mislabelled"), Component("regression"), "val_mse", epochs=1)


def test_classification_reports_todays_names_and_an_unsmoothed_val_loss(trainer, tmp_path):
    settings = TrialSettings(
        dataset=Component("digits"),
        model=Component("tiny_linear"),
        training=TrainingSettings(epochs=2, batch_size=64, optimizer=Component("adam", {"lr": 0.01})),
    )
    settings = replace(settings, training=replace(settings.training, label_smoothing=0.2))
    reports = []
    checkpoint = str(tmp_path / "ckpt.pt")
    trainer.train(
        TrainTask(1, settings, checkpoint, Objective("val_accuracy", "max")),
        lambda e, m: reports.append(m),
        lambda: False,
    )
    names = {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} | COMMON
    assert all(set(m) == names for m in reports)
    # The val metrics again, by hand, from the checkpoint's weights: plain cross-entropy, no smoothing.
    splits = trainer._dataset(settings.dataset)
    model = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(splits.input_shape)), splits.num_classes))
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    x, y = (torch.stack(t) for t in zip(*(splits.val[i] for i in range(len(splits.val))), strict=True))
    shape = (1, -1) + (1,) * (x.dim() - 2)
    x = (x - torch.tensor(splits.mean).view(shape)) / torch.tensor(splits.std).view(shape)
    with torch.no_grad():
        logits = model(x)
    assert reports[-1]["val_loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert reports[-1]["val_accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    test = trainer.evaluate(EvaluateTask(settings, checkpoint))
    assert set(test) == {"test_loss", "test_accuracy"}

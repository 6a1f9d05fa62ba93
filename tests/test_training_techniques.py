"""Training techniques as `training` settings, exercised by the real trainer on real (tiny) data."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import Objective
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.execution.messages import EvaluateTask, TrainTask
from tuneyard.server.study.settings import Component, TrainingSettings, TrialSettings
from tuneyard.server.worker.trainer import Trainer, optimizer_step

ACCURACY = Objective("val_accuracy", "max")

STEPS: list[int] = []
EPOCHS_SEEN: list[int] = []


class CountingSGD(torch.optim.SGD):
    def step(self, closure=None):
        STEPS.append(1)
        return super().step(closure)


class EpochAwareNet(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), num_classes))

    def forward(self, x):
        return self.net(x)

    def on_epoch_start(self, epoch: int) -> None:
        EPOCHS_SEEN.append(epoch)


class TestPlugins:
    @hookimpl
    def tuneyard_register_optimizers(self, register):
        def counting_sgd(params, *, lr: float = 0.1):
            """SGD that counts its steps."""
            return CountingSGD(params, lr=lr)

        register("counting_sgd", counting_sgd)

    @hookimpl
    def tuneyard_register_models(self, register):
        def epoch_aware(*, input_shape, num_classes):
            """A linear model that records on_epoch_start calls."""
            return EpochAwareNet(input_shape, num_classes)

        register("epoch_aware", epoch_aware)


@pytest.fixture(scope="module")
def trainer():
    registry = PluginRegistry.load(entry_points=False)
    registry.add_plugin(TestPlugins(), name="technique-tests")
    return Trainer(registry, "cpu")


BASE = TrialSettings(
    dataset=Component("digits"),
    model=Component("simple_cnn", {"num_filters": 8, "num_conv_layers": 1}),
    training=TrainingSettings(epochs=2, batch_size=64, optimizer=Component("adam", {"lr": 0.01})),
)


def run(trainer, tmp_path, **training):
    settings = replace(BASE, training=replace(BASE.training, **training))
    reports = []
    task = TrainTask(1, settings, str(tmp_path / "ckpt.pt"), ACCURACY)
    result = trainer.train(task, lambda e, m: reports.append((e, m)), lambda: False)
    return result, reports


def test_gradient_clipping_bounds_the_update():
    model = nn.Linear(4, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = model.weight.detach().clone()
    model.weight.grad = torch.full_like(model.weight, 100.0)
    optimizer_step(model, optimizer, None, clip=1.0)
    assert torch.linalg.vector_norm(model.weight.detach() - before).item() == pytest.approx(1.0, rel=1e-5)


def test_gradient_accumulation_takes_one_step_per_group_of_batches(trainer, tmp_path):
    optimizer = Component("counting_sgd", {"lr": 0.05})
    STEPS.clear()
    run(trainer, tmp_path, optimizer=optimizer, epochs=1, batch_size=100)
    plain = len(STEPS)
    STEPS.clear()
    run(trainer, tmp_path, optimizer=optimizer, epochs=1, batch_size=100, grad_accumulation_steps=4)
    assert plain == 13  # 1257 training samples / 100 per batch
    assert len(STEPS) == 4  # ceil(13 / 4)


def test_early_stop_on_plateau_ends_the_trial(trainer, tmp_path):
    frozen = Component("sgd", {"lr": 0.0})
    result, reports = run(trainer, tmp_path, optimizer=frozen, epochs=10, early_stop_patience=2)
    assert result["epochs"] == 3 and len(reports) == 3 and not result["stopped"]


def test_same_seed_with_deterministic_algorithms_repeats_exactly(trainer, tmp_path):
    _, first = run(trainer, tmp_path, deterministic=True, seed=7)
    _, second = run(trainer, tmp_path, deterministic=True, seed=7)
    timing = ("epoch_seconds", "train_seconds", "inference_latency_ms")
    strip = [{k: v for k, v in m.items() if k not in timing} for _, m in first]
    assert strip == [{k: v for k, v in m.items() if k not in timing} for _, m in second]


def test_ema_checkpoint_holds_the_averaged_weights(trainer, tmp_path):
    result, reports = run(trainer, tmp_path, ema_decay=0.9, epochs=2)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"]
    assert not any(k.startswith("module.") or k == "n_averaged" for k in state)
    metrics = trainer.evaluate(
        EvaluateTask(replace(BASE, training=replace(BASE.training, ema_decay=0.9)), str(tmp_path / "ckpt.pt"))
    )
    assert 0.0 < metrics["test_accuracy"] <= 1.0
    assert result["epochs"] == 2 and reports[-1][1]["val_accuracy"] > 0.3


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "auto"])
def test_every_precision_trains_on_cpu_in_fp32(trainer, tmp_path, precision):
    _, reports = run(trainer, tmp_path, precision=precision, epochs=1, label_smoothing=0.1)
    assert reports and reports[0][1]["train_loss"] > 0


def test_parameter_counts_are_reported_and_epoch_hook_is_called(trainer, tmp_path):
    EPOCHS_SEEN.clear()
    settings = replace(BASE, model=Component("epoch_aware"))
    reports = []
    trainer.train(
        TrainTask(1, settings, str(tmp_path / "c.pt"), ACCURACY), lambda e, m: reports.append(m), lambda: False
    )
    assert EPOCHS_SEEN == [1, 2]
    assert reports[0]["params"] == 64 * 10 + 10 == reports[0]["trainable_params"]


@pytest.mark.parametrize("pipeline", ["device", "loader"])
def test_both_data_pipelines_train_with_augmentations(trainer, tmp_path, pipeline):
    augmentations = (Component("random_crop", {"padding": 1}), Component("rotation"))
    _, reports = run(trainer, tmp_path, data_pipeline=pipeline, augmentations=augmentations, epochs=2)
    assert reports[-1][1]["val_accuracy"] > 0.5


def test_auto_pipeline_keeps_tensor_splits_on_the_device():
    from tuneyard.server.worker.batches import Batches

    data = torch.utils.data.TensorDataset(torch.rand(10, 1, 4, 4), torch.arange(10))
    auto = Batches(data, 4, device=torch.device("cpu"), shuffle=True, seed=0)
    assert auto.pipeline == "device" and [len(y) for _, y in auto] == [4, 4, 2]
    halves = [Batches(data, 4, device=torch.device("cpu"), shuffle=True, seed=0, shard=(r, 2)) for r in (0, 1)]
    seen = sorted(int(v) for b in halves for _, y in b for v in y)
    assert seen == list(range(10))  # the two ranks' shards cover the data once

    class NotTensors(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.zeros(1, 4, 4), i

    assert Batches(NotTensors(), 2, device=torch.device("cpu"), shuffle=False, seed=0).pipeline == "loader"
    with pytest.raises(ValueError, match="needs an in-memory"):
        Batches(NotTensors(), 2, device=torch.device("cpu"), shuffle=False, seed=0, pipeline="device")

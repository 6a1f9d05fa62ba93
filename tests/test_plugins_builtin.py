"""The built-in optimizers, schedulers, augmentations, model and dataset, built through the registry."""

from __future__ import annotations

import inspect
from collections import Counter

import pytest
import torch

from tuneyard.plugins import hookspecs
from tuneyard.plugins.api import DatasetSplits
from tuneyard.plugins.manager import REGISTER_HOOKS, PluginRegistry


@pytest.fixture(scope="module")
def reg() -> PluginRegistry:
    return PluginRegistry.load(entry_points=False)


@pytest.fixture(scope="module")
def digits(reg: PluginRegistry) -> DatasetSplits:
    return reg.create("dataset", "digits", {}, root="/nonexistent")


def test_every_hook_is_documented_and_every_kind_has_one() -> None:
    hooks = [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("tuneyard_")]
    assert len(hooks) == 12  # seven plugin kinds, trainables and tasks, three trial observers
    for name in hooks:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc.splitlines()) >= 3, f"{name} needs a docstring saying when it is called"
    assert set(REGISTER_HOOKS.values()) <= set(hooks)


@pytest.mark.parametrize("name", ["sgd", "adagrad", "rmsprop", "adam"])
def test_each_optimizer_takes_a_step(reg: PluginRegistry, name: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    before = [p.detach().clone() for p in model.parameters()]
    options = {"lr": 0.1, "momentum": 0.9, "nesterov": True} if name == "sgd" else {"lr": 0.1}
    optimizer = reg.create("optimizer", name, options, args=(model.parameters(),))
    assert optimizer.param_groups[0]["lr"] == 0.1
    model(torch.randn(8, 4)).pow(2).sum().backward()
    optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_adam_betas_and_option_docs(reg: PluginRegistry) -> None:
    model = torch.nn.Linear(2, 1)
    optimizer = reg.create("optimizer", "adam", {"beta1": 0.8, "beta2": 0.99}, args=(model.parameters(),))
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.99)
    for entry in reg.entries("optimizer"):
        assert all(p.doc for p in entry.parameters), entry.name


def _lrs(reg: PluginRegistry, name: str, options: dict, epochs: int) -> list[float]:
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    scheduler = reg.create("lr_scheduler", name, options, args=(optimizer,), epochs=epochs, steps_per_epoch=7)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs + [optimizer.param_groups[0]["lr"]]


def test_lr_schedulers(reg: PluginRegistry) -> None:
    assert reg.get("lr_scheduler", "constant").parameters == ()
    assert _lrs(reg, "constant", {}, 4) == [1.0] * 5
    cosine = _lrs(reg, "cosine", {"min_lr": 0.1}, 4)
    assert cosine[0] == 1.0 and cosine[-1] == pytest.approx(0.1)
    assert cosine == sorted(cosine, reverse=True)


def test_random_crop_keeps_the_shape_and_shifts_content(reg: PluginRegistry) -> None:
    crop = reg.create("augmentation", "random_crop", {"padding": 2}, input_shape=(3, 6, 5))
    image = torch.rand(3, 6, 5) + 1.0  # no zeros, so padding is visible
    torch.manual_seed(0)
    outputs = [crop(image) for _ in range(20)]
    assert all(o.shape == (3, 6, 5) and o.dtype == torch.float32 for o in outputs)
    assert any(not torch.equal(o, image) for o in outputs)
    identity = reg.create("augmentation", "random_crop", {"padding": 0}, input_shape=(3, 6, 5))
    assert torch.equal(identity(image), image)


def test_horizontal_flip(reg: PluginRegistry) -> None:
    image = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4)
    assert torch.equal(reg.create("augmentation", "horizontal_flip", {"p": 1})(image), image.flip(-1))
    assert torch.equal(reg.create("augmentation", "horizontal_flip", {"p": 0.0})(image), image)
    with pytest.raises(ValueError):
        reg.create("augmentation", "horizontal_flip", {"p": 2.0})


@pytest.mark.parametrize("layers", [1, 2, 3, 4])
@pytest.mark.parametrize("filter_size", [3, 5])
def test_simple_cnn_output_shape(reg: PluginRegistry, layers: int, filter_size: int) -> None:
    options = {"num_conv_layers": layers, "filter_size": filter_size, "num_filters": 8, "dropout": 0.2}
    model = reg.create("model", "simple_cnn", options, input_shape=(1, 8, 8), num_classes=10)
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    model.train()
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 10)  # a batch of one trains too


def test_simple_cnn_on_larger_inputs_keeps_a_small_head(reg: PluginRegistry) -> None:
    model = reg.create("model", "simple_cnn", {"num_conv_layers": 1}, input_shape=(3, 32, 32), num_classes=4)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert head.in_features == 32 * 4 * 4
    with pytest.raises(ValueError):
        reg.create("model", "simple_cnn", {"num_conv_layers": 0}, input_shape=(1, 8, 8), num_classes=10)


def _rows(dataset: torch.utils.data.TensorDataset) -> Counter:
    images, labels = dataset.tensors
    return Counter((img.numpy().tobytes(), int(label)) for img, label in zip(images, labels, strict=True))


def test_digits_splits(digits: DatasetSplits) -> None:
    sizes = [len(digits.train), len(digits.val), len(digits.test)]
    assert sum(sizes) == 1797
    assert sizes[1] == pytest.approx(0.15 * 1797, abs=2) and sizes[2] == pytest.approx(0.15 * 1797, abs=2)
    assert (digits.num_classes, digits.input_shape) == (10, (1, 8, 8))
    image, label = digits.train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32 and label.dtype == torch.int64
    train_images = digits.train.tensors[0]
    assert 0.0 <= float(train_images.min()) and float(train_images.max()) <= 1.0
    assert digits.mean[0] == pytest.approx(float(train_images.mean()), rel=1e-4)
    assert digits.std[0] == pytest.approx(float(train_images.std()), rel=1e-3)
    for split in (digits.train, digits.val, digits.test):  # stratified: every class in every split
        assert set(split.tensors[1].tolist()) == set(range(10))


def test_digits_splits_are_a_partition(reg: PluginRegistry, digits: DatasetSplits) -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    full = Counter(
        ((img / 16.0).astype("float32")[None].tobytes(), int(y))
        for img, y in zip(bunch.images, bunch.target, strict=True)
    )
    assert _rows(digits.train) + _rows(digits.val) + _rows(digits.test) == full


def test_digits_split_is_seeded(reg: PluginRegistry, digits: DatasetSplits) -> None:
    again = reg.create("dataset", "digits", {}, root="/tmp")
    other = reg.create("dataset", "digits", {"split_seed": 1, "val_fraction": 0.2}, root="/tmp")
    assert torch.equal(again.val.tensors[0], digits.val.tensors[0])
    assert not torch.equal(other.test.tensors[0], digits.test.tensors[0])
    assert len(other.val) == pytest.approx(0.2 * 1797, abs=2)
    with pytest.raises(ValueError):
        reg.create("dataset", "digits", {"val_fraction": 0.5, "test_fraction": 0.5}, root="/tmp")

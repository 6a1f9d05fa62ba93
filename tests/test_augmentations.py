"""The built-in augmentations, built through the registry the way the trainer builds them."""

from __future__ import annotations

import pickle

import pytest
import torch
from support import BATCH_AUGMENTATIONS, PER_SAMPLE_AUGMENTATIONS
from torch import nn

from tuneyard.plugins.manager import PluginRegistry

SHAPES = [(1, 8, 8), (3, 32, 32)]


@pytest.fixture(scope="module")
def reg() -> PluginRegistry:
    return PluginRegistry.load(entry_points=False)


def _make(reg: PluginRegistry, name: str, options: dict | None = None, shape=(3, 32, 32), num_classes: int = 10):
    return reg.create("augmentation", name, options or {}, input_shape=shape, num_classes=num_classes)


def test_everything_is_registered_and_documented(reg: PluginRegistry) -> None:
    assert set(PER_SAMPLE_AUGMENTATIONS + BATCH_AUGMENTATIONS) <= set(reg.names("augmentation"))
    for name in PER_SAMPLE_AUGMENTATIONS + BATCH_AUGMENTATIONS:
        entry = reg.get("augmentation", name)
        assert entry.batch_level == (name in BATCH_AUGMENTATIONS), name
        assert entry.description, name
        assert all(p.doc for p in entry.parameters), name
        assert not {"input_shape", "num_classes"} & {p.name for p in entry.parameters}, name
    assert reg.get("augmentation", "randaugment").param("magnitude").type == "int"
    assert reg.get("augmentation", "autoaugment").param("policy").default == "cifar10"


@pytest.mark.parametrize("shape", SHAPES, ids=["1x8x8", "3x32x32"])
@pytest.mark.parametrize("name", PER_SAMPLE_AUGMENTATIONS)
def test_per_sample_keeps_shape_range_and_changes_something(reg: PluginRegistry, name: str, shape) -> None:
    options = {"p": 1.0} if name == "random_erasing" else {}
    aug = _make(reg, name, options, shape)
    pickle.loads(pickle.dumps(aug))  # data loader workers
    torch.manual_seed(0)
    image = torch.rand(shape) * 0.8 + 0.1
    outputs = [aug(image) for _ in range(20)]
    for out in outputs:
        assert out.shape == shape and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert any(not torch.equal(out, image) for out in outputs)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("autoaugment", {"policy": "imagenet"}),
        ("autoaugment", {"policy": "svhn"}),
        ("randaugment", {"num_ops": 3, "magnitude": 30}),
        ("randaugment", {"num_ops": 0}),
        ("trivialaugment", {"num_magnitude_bins": 5}),
        ("random_resized_crop", {"scale_low": 0.1, "scale_high": 0.3, "ratio_low": 0.5, "ratio_high": 2.0}),
        ("rotation", {"degrees": 180}),
        ("color_jitter", {"brightness": 0.9, "contrast": 0.9, "saturation": 0.9, "hue": 0.5}),
        ("random_erasing", {"p": 1.0, "scale_low": 0.5, "scale_high": 0.9, "value": 1.0}),
        ("random_crop", {"padding": 4}),
    ],
)
@pytest.mark.parametrize("shape", SHAPES, ids=["1x8x8", "3x32x32"])
def test_options(reg: PluginRegistry, name: str, options: dict, shape) -> None:
    aug = _make(reg, name, options, shape)
    torch.manual_seed(1)
    for _ in range(10):
        out = aug(torch.rand(shape))
        assert out.shape == shape and torch.isfinite(out).all()


def test_color_jitter_ignores_colour_on_one_channel(reg: PluginRegistry) -> None:
    colour_only = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.9, "hue": 0.5}
    image = torch.rand(1, 8, 8)
    assert torch.equal(_make(reg, "color_jitter", colour_only, (1, 8, 8))(image), image)
    rgb = torch.rand(3, 8, 8)
    torch.manual_seed(0)
    assert not torch.equal(_make(reg, "color_jitter", colour_only, (3, 8, 8))(rgb), rgb)


def test_flip_and_erasing_exact_behaviour(reg: PluginRegistry) -> None:
    image = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4) / 12
    assert torch.equal(_make(reg, "horizontal_flip", {"p": 1.0})(image), image.flip(-1))
    assert torch.equal(_make(reg, "random_erasing", {"p": 0.0})(image), image)
    erased = _make(reg, "random_erasing", {"p": 1.0, "scale_low": 0.3, "scale_high": 0.3, "value": 1.0}, (1, 8, 8))
    torch.manual_seed(0)
    out = erased(torch.zeros(1, 8, 8))
    assert 0 < int((out == 1.0).sum()) < 64


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("horizontal_flip", {"p": 1.5}),
        ("random_crop", {"padding": -1}),
        ("random_resized_crop", {"scale_low": 0.9, "scale_high": 0.5}),
        ("random_resized_crop", {"scale_high": 1.5}),
        ("rotation", {"degrees": -5}),
        ("color_jitter", {"hue": 0.7}),
        ("color_jitter", {"brightness": -0.1}),
        ("autoaugment", {"policy": "mnist"}),
        ("randaugment", {"magnitude": 31}),
        ("trivialaugment", {"num_magnitude_bins": 1}),
        ("random_erasing", {"scale_low": 0.0}),
        ("mixup", {"alpha": 0.0}),
        ("cutmix", {"p": -0.1}),
    ],
)
def test_bad_options_are_refused(reg: PluginRegistry, name: str, options: dict) -> None:
    with pytest.raises(ValueError):
        _make(reg, name, options)


@pytest.mark.parametrize("shape", SHAPES, ids=["1x8x8", "3x32x32"])
@pytest.mark.parametrize("name", BATCH_AUGMENTATIONS)
def test_batch_level_gives_soft_labels(reg: PluginRegistry, name: str, shape) -> None:
    mix = _make(reg, name, {"alpha": 1.0}, shape, num_classes=5)
    pickle.loads(pickle.dumps(mix))
    torch.manual_seed(0)
    inputs, labels = torch.rand(6, *shape), torch.tensor([0, 1, 2, 3, 4, 0])
    out, soft = mix(inputs, labels)
    assert out.shape == inputs.shape and torch.isfinite(out).all()
    assert soft.shape == (6, 5) and soft.dtype == torch.float32
    assert torch.allclose(soft.sum(1), torch.ones(6))
    assert not torch.equal(soft, nn.functional.one_hot(labels, 5).float())  # really mixed
    # chained (mixup then cutmix): soft labels in, soft labels out
    other = _make(reg, "cutmix" if name == "mixup" else "mixup", {}, shape, num_classes=5)
    out2, soft2 = other(out, soft)
    assert out2.shape == inputs.shape and soft2.shape == (6, 5)
    assert torch.allclose(soft2.sum(1), torch.ones(6))


@pytest.mark.parametrize("name", BATCH_AUGMENTATIONS)
def test_batch_level_with_p_zero_only_one_hot_encodes(reg: PluginRegistry, name: str) -> None:
    mix = _make(reg, name, {"p": 0.0}, num_classes=4)
    inputs, labels = torch.rand(3, 3, 32, 32), torch.tensor([3, 0, 1])
    out, soft = mix(inputs, labels)
    assert torch.equal(out, inputs)
    assert torch.equal(soft, nn.functional.one_hot(labels, 4).float())


def _tiny_model(shape, num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(shape[0], 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


@pytest.mark.parametrize("name", PER_SAMPLE_AUGMENTATIONS + BATCH_AUGMENTATIONS)
def test_each_augmentation_in_a_training_step(reg: PluginRegistry, name: str) -> None:
    """Like the trainer: per-sample ones before normalisation, batch-level ones after, soft-target loss."""
    shape, num_classes = (3, 16, 16), 3
    torch.manual_seed(0)
    aug = _make(reg, name, {}, shape, num_classes=num_classes)
    batch_level = reg.get("augmentation", name).batch_level
    model = _tiny_model(shape, num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    inputs, labels = torch.rand(8, *shape), torch.arange(8) % num_classes
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        x = inputs.clone()
        if not batch_level:
            x = torch.stack([aug(sample) for sample in x])
        x = (x - 0.5) / 0.25
        targets = labels
        if batch_level:
            x, targets = aug(x, labels)
            assert targets.shape == (8, num_classes)
        loss = loss_fn(model(x), targets)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_mixup_training_lowers_the_loss_on_a_fixed_batch(reg: PluginRegistry) -> None:
    torch.manual_seed(0)
    mix = _make(reg, "mixup", {"alpha": 0.2}, (1, 8, 8), num_classes=2)
    inputs = torch.cat([torch.zeros(16, 1, 8, 8), torch.ones(16, 1, 8, 8)]) + 0.1 * torch.randn(32, 1, 8, 8)
    labels = torch.cat([torch.zeros(16), torch.ones(16)]).long()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        start = float(loss_fn(model(inputs), labels))
    for _ in range(30):
        x, soft = mix(inputs, labels)
        loss = loss_fn(model(x), soft)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert float(loss_fn(model(inputs), labels)) < start

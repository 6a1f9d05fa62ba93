"""The built-in models: convnet's search space, torchvision families by name, finetune."""

from __future__ import annotations

import inspect
import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from tuneyard.plugins.manager import PluginRegistry

TORCHVISION = [
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "vit_b_16",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reg() -> PluginRegistry:
    return PluginRegistry.load(entry_points=False)


def train_step(model: nn.Module, shape: tuple[int, ...], batch: int = 4, classes: int = 10) -> float:
    """One real step: forward, cross-entropy, backward, SGD; returns the loss."""
    torch.manual_seed(0)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, *shape), torch.arange(batch) % classes
    logits = model(x)
    assert logits.shape == (batch, classes)
    loss = nn.functional.cross_entropy(logits, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert math.isfinite(loss.item())
    return loss.item()


def test_every_model_option_is_typed_documented_and_scalar(reg: PluginRegistry) -> None:
    names = reg.names("model")
    assert {"simple_cnn", "convnet", "finetune", *TORCHVISION} <= set(names)
    for entry in reg.entries("model"):
        assert entry.description, entry.name
        for param in entry.parameters:
            assert param.type in ("int", "float", "bool", "str", "path"), (entry.name, param.name)
            assert not param.required and param.doc, (entry.name, param.name)
    options = {p.name: p.default for p in reg.get("model", "convnet").parameters}
    assert options == {
        "depth": 3,
        "width": 32,
        "width_multiplier": 2.0,
        "blocks_per_stage": 1,
        "kernel_size": 3,
        "block": "plain",
        "connection": "serial",
        "batch_norm": True,
        "dropout": 0.0,
        "pooling": "max",
    }


# ---- convnet ----


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
@pytest.mark.parametrize("connection", ["serial", "parallel"])
@pytest.mark.parametrize("block", ["plain", "residual", "inception"])
def test_convnet_every_block_and_connection_trains(
    reg: PluginRegistry, block: str, connection: str, shape: tuple[int, ...]
) -> None:
    # Numbers arrive from a protobuf Struct as floats, as a searcher's suggestion would.
    options = {"block": block, "connection": connection, "depth": 3.0, "width": 8.0, "blocks_per_stage": 2.0}
    model = reg.create("model", "convnet", options, input_shape=shape, num_classes=10)
    before = [p.detach().clone() for p in model.parameters()]
    train_step(model, shape)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(3, *shape)).shape == (3, 10)
    towers = len(model.towers)
    assert towers == (2 if connection == "parallel" else 1)
    assert model.head[-1].in_features == towers * 32  # 8 -> 16 -> 32 channels


def _final_map(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    model.eval()
    with torch.no_grad():
        return tuple(model.towers[0](torch.randn(1, *shape)).shape[1:])


@pytest.mark.parametrize("pooling", ["max", "avg", "none"])
def test_convnet_depth_4_on_8x8_does_not_collapse(reg: PluginRegistry, pooling: str) -> None:
    options = {"depth": 4, "width": 4, "pooling": pooling, "block": "residual"}
    model = reg.create("model", "convnet", options, input_shape=(1, 8, 8), num_classes=3)
    assert _final_map(model, (1, 8, 8)) == ((32, 8, 8) if pooling == "none" else (32, 1, 1))
    train_step(model, (1, 8, 8), batch=1, classes=3)  # a batch of one trains even at 1x1


def test_convnet_pooling_stops_at_one_pixel(reg: PluginRegistry) -> None:
    for shape, expected in (((2, 1, 1), (6, 1, 1)), ((1, 3, 2), (6, 1, 1)), ((1, 1, 16), (6, 1, 2))):
        model = reg.create(
            "model", "convnet", {"depth": 4, "width": 6, "width_multiplier": 1.0}, input_shape=shape, num_classes=2
        )
        assert _final_map(model, shape) == expected
        train_step(model, shape, batch=2, classes=2)


def test_convnet_widths_kernels_and_dropout(reg: PluginRegistry) -> None:
    options = {"depth": 3, "width": 10, "width_multiplier": 1.5, "kernel_size": 7, "dropout": 0.5, "batch_norm": False}
    model = reg.create("model", "convnet", options, input_shape=(3, 16, 16), num_classes=5)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [10, 15, 22]
    assert all(c.kernel_size == (7, 7) for c in convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.head[0].p == 0.5
    train_step(model, (3, 16, 16), classes=5)
    inception = reg.create(
        "model", "convnet", {"block": "inception", "width": 1, "depth": 1}, input_shape=(1, 8, 8), num_classes=2
    )
    assert inception.head[-1].in_features == 4  # inception blocks have at least 4 channels


@pytest.mark.parametrize(
    "options",
    [
        {"depth": 0},
        {"depth": 5},
        {"width": 0},
        {"width_multiplier": 0.0},
        {"blocks_per_stage": 0},
        {"kernel_size": 4},
        {"block": "dense"},
        {"connection": "mixed"},
        {"pooling": "stride"},
        {"dropout": 1.0},
    ],
)
def test_convnet_rejects_bad_options(reg: PluginRegistry, options: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        reg.create("model", "convnet", options, input_shape=(1, 8, 8), num_classes=2)


# ---- torchvision families ----


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_family_with_small_input_stem(reg: PluginRegistry, name: str, shape: tuple[int, ...]) -> None:
    model = reg.create("model", name, {}, input_shape=shape, num_classes=7)
    stem = _first_conv(model)
    assert stem.in_channels == shape[0]
    if name.startswith("resnet"):
        assert stem.kernel_size == (3, 3) and stem.stride == (1, 1) and isinstance(model.maxpool, nn.Identity)
    elif name.startswith("vit"):
        assert stem.kernel_size == (4, 4) and model.image_size == shape[-1]
    else:
        assert stem.stride == (1, 1)
    train_step(model, shape, batch=2, classes=7)  # ViT-B included: about a second with 4 px patches
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, *shape)).shape == (1, 7)


def test_torchvision_stems_without_small_input(reg: PluginRegistry) -> None:
    resnet = reg.create("model", "resnet18", {"small_input": False}, input_shape=(1, 28, 28), num_classes=3)
    assert (resnet.conv1.in_channels, resnet.conv1.kernel_size, resnet.conv1.stride) == (1, (7, 7), (2, 2))
    assert isinstance(resnet.maxpool, nn.MaxPool2d)
    mobile = reg.create("model", "mobilenet_v3_small", {"small_input": False}, input_shape=(3, 32, 32), num_classes=3)
    assert mobile.features[0][0].stride == (2, 2)
    big = reg.create("model", "efficientnet_b0", {}, input_shape=(3, 64, 64), num_classes=3)  # > 32 px: untouched
    assert big.features[0][0].stride == (2, 2)
    vit = reg.create("model", "vit_b_16", {"patch_size": 8}, input_shape=(1, 16, 16), num_classes=3)
    assert vit.patch_size == 8 and vit.conv_proj.in_channels == 1
    vit.eval()
    with torch.no_grad():
        assert vit(torch.randn(1, 1, 16, 16)).shape == (1, 3)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        reg.create("model", "vit_b_16", {"patch_size": 5}, input_shape=(3, 32, 32), num_classes=3)
    with pytest.raises(ValueError, match="square"):
        reg.create("model", "vit_b_16", {}, input_shape=(3, 32, 16), num_classes=3)


# ---- finetune ----


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """An ImageNet-shaped resnet18 state dict (7x7 stem, 1000 classes), saved with torch.save."""
    import torchvision

    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(state, path)
    return path, state


def _frozen(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def test_finetune_loads_a_state_dict_file(
    reg: PluginRegistry, resnet18_file: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, state = resnet18_file
    monkeypatch.delenv("TUNEYARD_DATA_ROOT", raising=False)
    model = reg.create("model", "finetune", {"weights_file": str(path)}, input_shape=(3, 32, 32), num_classes=10)
    loaded = model.backbone.state_dict()
    for key, value in state.items():
        if key.startswith("fc."):
            assert loaded[key].shape[0] == 10  # another class count: the classifier stays fresh
        else:
            assert torch.equal(loaded[key], value), key
    conv1 = model.backbone.conv1  # the weights' 7x7 kernel, the small-input stride
    assert (conv1.kernel_size, conv1.stride) == ((7, 7), (1, 1))
    assert isinstance(model.backbone.maxpool, nn.Identity)
    assert _frozen(model) == set()
    train_step(model, (3, 32, 32), batch=2)

    grey = reg.create("model", "finetune", {"weights_file": str(path)}, input_shape=(1, 28, 28), num_classes=10)
    assert torch.allclose(grey.backbone.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(grey.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_finetune_weights_file_stays_inside_the_data_root(
    reg: PluginRegistry, resnet18_file: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path, state = resnet18_file
    create = lambda f: reg.create("model", "finetune", {"weights_file": f}, input_shape=(3, 8, 8), num_classes=1000)  # noqa: E731
    monkeypatch.setenv("TUNEYARD_DATA_ROOT", str(path.parent))
    model = create(path.name)  # relative to the root; 1000 classes: the classifier loads too
    assert torch.equal(model.backbone.fc.weight, state["fc.weight"])
    create(str(path))  # absolute, inside the root
    with pytest.raises(ValueError, match=r"'\.\.'"):
        create(f"../{path.parent.name}/{path.name}")
    outside = tmp_path / "elsewhere.pt"
    outside.write_bytes(b"refused before it is read")
    with pytest.raises(ValueError, match="outside the data root"):
        create(str(outside))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        create("missing.pt")


def test_finetune_rejects_weights_that_do_not_fit(
    reg: PluginRegistry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torchvision

    monkeypatch.setenv("TUNEYARD_DATA_ROOT", str(tmp_path))
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), tmp_path / "mobile.pt")
    with pytest.raises(ValueError, match="do not fit resnet18"):
        reg.create("model", "finetune", {"weights_file": "mobile.pt"}, input_shape=(3, 32, 32), num_classes=10)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read weights"):
        reg.create("model", "finetune", {"weights_file": "junk.pt"}, input_shape=(3, 32, 32), num_classes=10)
    # A state dict saved from tuneyard's own small-input resnet18 (3x3 stem) loads as it is.
    own = reg.create("model", "resnet18", {}, input_shape=(1, 28, 28), num_classes=10)
    torch.save({"state_dict": own.state_dict()}, tmp_path / "own.pt")
    model = reg.create("model", "finetune", {"weights_file": "own.pt"}, input_shape=(1, 28, 28), num_classes=10)
    assert all(
        torch.equal(a, b) for a, b in zip(model.backbone.state_dict().values(), own.state_dict().values(), strict=True)
    )


def test_finetune_freeze_head_and_unfreeze(
    reg: PluginRegistry, resnet18_file: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, state = resnet18_file
    monkeypatch.setenv("TUNEYARD_DATA_ROOT", str(path.parent))
    options = {"weights_file": path.name, "freeze": 2, "head_layers": 2, "head_width": 32, "unfreeze_at_epoch": 3}
    model = reg.create("model", "finetune", options, input_shape=(3, 16, 16), num_classes=5)
    stem_and_layer1 = {
        f"backbone.{k}" for k, _ in model.backbone.named_parameters() if k.split(".")[0] in ("conv1", "bn1", "layer1")
    }
    assert stem_and_layer1 and _frozen(model) == stem_and_layer1
    head = model.backbone.fc
    assert [m.out_features for m in head if isinstance(m, nn.Linear)] == [32, 32, 5]

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    running_mean = model.backbone.bn1.running_mean.clone()
    train_step(model, (3, 16, 16), batch=4, classes=5)
    assert not model.backbone.bn1.training and model.backbone.layer2.training
    assert torch.equal(model.backbone.bn1.running_mean, running_mean)  # frozen batch norm keeps its statistics
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) == (name in stem_and_layer1), name

    for epoch in (1, 2):
        model.on_epoch_start(epoch)
        assert _frozen(model) == stem_and_layer1
    model.on_epoch_start(3)
    assert _frozen(model) == set()
    model.train()
    assert model.backbone.bn1.training
    train_step(model, (3, 16, 16), batch=4, classes=5)
    assert not torch.equal(model.backbone.conv1.weight, before["backbone.conv1.weight"])

    everything = reg.create("model", "finetune", {"freeze": 99}, input_shape=(3, 16, 16), num_classes=5)
    assert {n.split(".")[1] for n in _frozen(everything)} == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}
    with pytest.raises(ValueError, match="freeze"):
        reg.create("model", "finetune", {"freeze": -1}, input_shape=(3, 16, 16), num_classes=5)


def test_finetune_other_backbones_freeze_feature_blocks(reg: PluginRegistry) -> None:
    options = {"backbone": "mobilenet_v3_small", "freeze": 3, "head_layers": 1, "head_width": 16}
    model = reg.create("model", "finetune", options, input_shape=(1, 28, 28), num_classes=4)
    frozen = {n.split(".")[2] for n in _frozen(model)}
    assert {n.split(".")[1] for n in _frozen(model)} == {"features"} and frozen == {"0", "1", "2"}
    assert [m.out_features for m in model.backbone.classifier[3] if isinstance(m, nn.Linear)] == [16, 4]
    train_step(model, (1, 28, 28), batch=2, classes=4)
    with pytest.raises(ValueError, match="unknown torchvision backbone"):
        reg.create("model", "finetune", {"backbone": "alexnet"}, input_shape=(3, 32, 32), num_classes=4)


def test_finetune_named_weights_come_only_from_the_local_cache(
    reg: PluginRegistry, resnet18_file: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path, state = resnet18_file
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="not in the local torch hub cache.*no download is attempted"):
        reg.create("model", "finetune", {"weights": "IMAGENET1K_V1"}, input_shape=(3, 32, 32), num_classes=10)
    assert time.monotonic() - start < 5
    with pytest.raises(ValueError, match="unknown weights 'IMAGENET9K'"):
        reg.create("model", "finetune", {"weights": "IMAGENET9K"}, input_shape=(3, 32, 32), num_classes=10)
    with pytest.raises(ValueError, match="not both"):
        options = {"weights": "DEFAULT", "weights_file": str(path)}
        reg.create("model", "finetune", options, input_shape=(3, 32, 32), num_classes=10)

    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet18-f37072fd.pth").write_bytes(path.read_bytes())  # as torch hub would have stored it
    model = reg.create("model", "finetune", {"weights": "DEFAULT"}, input_shape=(3, 32, 32), num_classes=10)
    assert torch.equal(model.backbone.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])


def test_building_models_leaves_the_catalogue_whole(reg: PluginRegistry) -> None:
    """Factories import their implementation modules when called; none of those may replace a factory.

    (A submodule named like its factory, e.g. `models/convnet.py`, would: importing it sets the package
    attribute `convnet` to the module, and the next registry would fail to register "convnet".)
    """
    for name in ("simple_cnn", "convnet", "finetune", "resnet18"):
        reg.create("model", name, {}, input_shape=(3, 8, 8), num_classes=4)
    again = PluginRegistry.load(entry_points=False)
    assert again.errors == []
    assert again.names("model") == reg.names("model")
    assert all(inspect.isfunction(entry.factory) for entry in again.entries("model"))


def test_model_registration_checks_fusable_options() -> None:
    from tuneyard.plugins import hookimpl

    def factory(*, input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.0) -> nn.Module:
        """A test model."""
        return nn.Linear(1, num_classes)

    class Plugin:
        def __init__(self, **extra: object) -> None:
            self.extra = extra

        @hookimpl
        def tuneyard_register_models(self, register: object) -> None:
            register("custom", factory, **self.extra)  # type: ignore[operator]

    cases: list[tuple[dict[str, object], str]] = [
        ({"fusable_options": "dropout"}, "fusable_options must be a list of option names"),
        ({"fusable_options": ["width"]}, "'width', which is not an option of the factory"),
    ]
    for extra, problem in cases:
        reg = PluginRegistry.load(entry_points=False)
        reg.add_plugin(Plugin(**extra), name="bad", distribution="t", version="1")
        assert "custom" not in reg.names("model")
        assert any(problem in e.message for e in reg.errors), (extra, reg.errors)
    reg = PluginRegistry.load(entry_points=False)
    assert reg.add_plugin(Plugin(fusable_options=["dropout"]), name="good")
    assert reg.get("model", "custom").fusable_options == ("dropout",)
    assert reg.get("model", "simple_cnn").fusable_options == ("dropout",)
    assert reg.get("model", "mlp").fusable_options == ()  # no dropout layers at 0: its layers would differ

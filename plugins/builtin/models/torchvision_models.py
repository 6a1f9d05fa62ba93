"""Torchvision classification families by name (private helper of `tuneyard.plugins.builtin.models`).

Every model is built with ``weights=None`` and the dataset's ``num_classes``; its stem is adapted
to the input: any channel count (the first convolution takes C input channels), and with
``small_input`` a small-image stem for inputs of at most 32 px (ResNet: 3x3 stride-1 convolution
and no max-pool; MobileNet / EfficientNet: a stride-1 first convolution; ViT: 4 px patches).
ViT always takes ``image_size`` from the input (it must be square).

torch and torchvision are imported inside the functions that build, so that the server reads the
factories' schemas (and starts up fast) without importing either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from torch import nn

SMALL_INPUT_MAX = 32  # inputs up to this many pixels per side get the small-image stem


@dataclass(frozen=True)
class Family:
    """Where a torchvision model keeps the parts tuneyard adapts."""

    kind: str  # "resnet", "mobile" (MobileNet / EfficientNet: features + classifier) or "vit"
    stem: str  # module path of the first convolution
    head: str  # module path of the final nn.Linear (the classifier)


FAMILIES: dict[str, Family] = {
    "resnet18": Family("resnet", "conv1", "fc"),
    "resnet34": Family("resnet", "conv1", "fc"),
    "resnet50": Family("resnet", "conv1", "fc"),
    "mobilenet_v2": Family("mobile", "features.0.0", "classifier.1"),
    "mobilenet_v3_small": Family("mobile", "features.0.0", "classifier.3"),
    "mobilenet_v3_large": Family("mobile", "features.0.0", "classifier.3"),
    "efficientnet_b0": Family("mobile", "features.0.0", "classifier.1"),
    "vit_b_16": Family("vit", "conv_proj", "heads.head"),
}

# ViT-B: the torchvision vit_b_16 configuration, with the patch size left open.
_VIT_B = {"num_layers": 12, "num_heads": 12, "hidden_dim": 768, "mlp_dim": 3072}


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown torchvision backbone {name!r} (known: {', '.join(FAMILIES)})") from None


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` (e.g. ``features.0.0``)."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, module)


def _conv_like(old: nn.Conv2d, in_channels: int, kernel: int, stride: int, padding: int, kind: str) -> nn.Conv2d:
    from torch import nn

    conv = nn.Conv2d(in_channels, old.out_channels, kernel, stride=stride, padding=padding, bias=old.bias is not None)
    if kind == "vit":  # torchvision's ViT initialisation of conv_proj
        nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / (in_channels * kernel * kernel)))
    else:  # ResNet / MobileNet / EfficientNet initialise convolutions this way
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def replace_stem_conv(model: nn.Module, name: str, in_channels: int, kernel: int, stride: int) -> None:
    """Swap the first convolution for a fresh one with these input channels, kernel and stride."""
    fam = family(name)
    old = cast("nn.Conv2d", model.get_submodule(fam.stem))  # every family's stem is a convolution
    padding = 0 if fam.kind == "vit" else kernel // 2
    set_module(model, fam.stem, _conv_like(old, in_channels, kernel, stride, padding, fam.kind))


def is_small(input_shape: tuple[int, ...], small_input: bool) -> bool:
    return small_input and max(int(d) for d in input_shape[-2:]) <= SMALL_INPUT_MAX


def build(
    name: str, input_shape: tuple[int, ...], num_classes: int, *, small_input: bool = True, patch_size: int = 0
) -> nn.Module:
    """A torchvision ``name`` with ``weights=None, num_classes``, its stem adapted to ``input_shape``.

    ``patch_size`` (ViT only): 0 picks 4 for small inputs (with ``small_input``) and 16 otherwise.
    """
    import torchvision.models as tvm
    from torch import nn

    fam = family(name)
    if len(input_shape) != 3:
        raise ValueError(f"{name} needs (C, H, W) inputs, got input_shape {tuple(input_shape)}")
    channels, height, width = (int(d) for d in input_shape)
    small = is_small(input_shape, small_input)
    if fam.kind == "vit":
        return _build_vit(name, channels, height, width, num_classes, small, patch_size)
    if patch_size:
        raise ValueError("patch_size applies to ViT models only")
    model = tvm.get_model(name, weights=None, num_classes=num_classes)
    if fam.kind == "resnet":
        if small:
            replace_stem_conv(model, name, channels, kernel=3, stride=1)
            model.maxpool = nn.Identity()
        elif channels != 3:
            replace_stem_conv(model, name, channels, kernel=7, stride=2)
    elif small or channels != 3:
        replace_stem_conv(model, name, channels, kernel=3, stride=1 if small else 2)
    return model


def _build_vit(
    name: str, channels: int, height: int, width: int, num_classes: int, small: bool, patch_size: int
) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    if height != width:
        raise ValueError(f"{name} needs square inputs, got {height}x{width}")
    patch = patch_size or (4 if small else 16)
    if patch < 1 or height % patch:
        raise ValueError(f"{name}: the input side ({height} px) must be a multiple of the patch size ({patch})")
    model = VisionTransformer(image_size=height, patch_size=patch, num_classes=num_classes, **_VIT_B)
    if channels != 3:
        replace_stem_conv(model, name, channels, kernel=patch, stride=patch)
    return model


def stages(model: nn.Module, name: str) -> list[list[str]]:
    """The backbone's stages in forward order, each a list of parameter-name prefixes.

    ResNet: the stem (conv1, bn1), then layer1..layer4. MobileNet / EfficientNet: the children
    of ``features`` (the first is the stem). ViT: the patch embedding (conv_proj, class token,
    position embedding), then each encoder layer. The classifier is never a stage.
    """
    kind = family(name).kind
    if kind == "resnet":
        return [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    if kind == "mobile":
        return [[f"features.{i}"] for i in range(len(cast("nn.Sequential", model.features)))]
    layers = model.get_submodule("encoder.layers")
    return [["conv_proj", "class_token", "encoder.pos_embedding"]] + [
        [f"encoder.layers.{child}"] for child, _ in layers.named_children()
    ]


# ---- the registered factories ----


def resnet18(*, input_shape: tuple[int, ...], num_classes: int, small_input: bool = True) -> nn.Module:
    """ResNet-18 (torchvision, untrained); the first convolution takes the input's channels.

    Args:
        small_input: for inputs of at most 32 px, use a small-image stem
            (3x3 stride-1 first convolution and no max-pool).
    """
    return build("resnet18", input_shape, num_classes, small_input=small_input)


def resnet34(*, input_shape: tuple[int, ...], num_classes: int, small_input: bool = True) -> nn.Module:
    """ResNet-34 (torchvision, untrained); the first convolution takes the input's channels.

    Args:
        small_input: for inputs of at most 32 px, use a small-image stem
            (3x3 stride-1 first convolution and no max-pool).
    """
    return build("resnet34", input_shape, num_classes, small_input=small_input)


def resnet50(*, input_shape: tuple[int, ...], num_classes: int, small_input: bool = True) -> nn.Module:
    """ResNet-50 (torchvision, untrained); the first convolution takes the input's channels.

    Args:
        small_input: for inputs of at most 32 px, use a small-image stem
            (3x3 stride-1 first convolution and no max-pool).
    """
    return build("resnet50", input_shape, num_classes, small_input=small_input)


def mobilenet_v2(*, input_shape: tuple[int, ...], num_classes: int, small_input: bool = True) -> nn.Module:
    """MobileNetV2 (torchvision, untrained); the first convolution takes the input's channels.

    Args:
        small_input: for inputs of at most 32 px, use a small-image stem (a stride-1 first convolution).
    """
    return build("mobilenet_v2", input_shape, num_classes, small_input=small_input)


def mobilenet_v3_small(*, input_shape: tuple[int, ...], num_classes: int, small_input: bool = True) -> nn.Module:
    """MobileNetV3-Small (torchvision, untrained); the first convolution takes the input's channels.

    Args:
        small_input: for inputs of at most 32 px, use a small-image stem (a stride-1 first convolution).
    """
    return build("mobilenet_v3_small", input_shape, num_classes, small_input=small_input)


def mobilenet_v3_large(*, input_shape: tuple[int, ...], num_classes: int, small_input: bool = True) -> nn.Module:
    """MobileNetV3-Large (torchvision, untrained); the first convolution takes the input's channels.

    Args:
        small_input: for inputs of at most 32 px, use a small-image stem (a stride-1 first convolution).
    """
    return build("mobilenet_v3_large", input_shape, num_classes, small_input=small_input)


def efficientnet_b0(*, input_shape: tuple[int, ...], num_classes: int, small_input: bool = True) -> nn.Module:
    """EfficientNet-B0 (torchvision, untrained); the first convolution takes the input's channels.

    Args:
        small_input: for inputs of at most 32 px, use a small-image stem (a stride-1 first convolution).
    """
    return build("efficientnet_b0", input_shape, num_classes, small_input=small_input)


def vit_b_16(
    *, input_shape: tuple[int, ...], num_classes: int, small_input: bool = True, patch_size: int = 0
) -> nn.Module:
    """ViT-B/16 (torchvision, untrained, 86M parameters) with image_size taken from the (square) input.

    ViT-B is large: on CPU even a 32 px batch takes seconds per step; prefer a GPU.

    Args:
        small_input: for inputs of at most 32 px, default to 4 px patches instead of 16.
        patch_size: patch side in pixels; 0 picks 4 for small inputs (with small_input), else 16.
            The input side must be a multiple of it.
    """
    return build("vit_b_16", input_shape, num_classes, small_input=small_input, patch_size=patch_size)


FACTORIES: tuple[Any, ...] = (
    resnet18,
    resnet34,
    resnet50,
    mobilenet_v2,
    mobilenet_v3_small,
    mobilenet_v3_large,
    efficientnet_b0,
    vit_b_16,
)

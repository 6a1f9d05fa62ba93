"""Built-in models: a small CNN whose depth and width are searchable."""

from __future__ import annotations

from typing import Any

from torch import nn

from tuneyard.plugins import hookimpl

# The head sees at most this many positions per side, so large inputs keep a small head.
_HEAD_SIDE = 4


def simple_cnn(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    num_conv_layers: int = 2,
    num_filters: int = 32,
    filter_size: int = 3,
    dropout: float = 0.0,
    batch_norm: bool = True,
) -> nn.Module:
    """A small CNN: (conv + batch norm + ReLU + 2x2 max-pool) per layer, then a linear head.

    Pooling is skipped once the feature map is smaller than 2x2, so any depth works on
    tiny inputs such as 8x8 digits. Batch norm makes training converge within a few epochs
    across a wide range of learning rates; it is left out on 1x1 maps (it cannot work there
    with a batch of one).

    Args:
        num_conv_layers: number of convolution blocks.
        num_filters: output channels of every convolution.
        filter_size: convolution kernel size (odd sizes keep the map centred).
        dropout: dropout probability before the linear head.
        batch_norm: normalise each convolution's output over the batch.
    """
    if num_conv_layers < 1:
        raise ValueError(f"num_conv_layers must be >= 1, got {num_conv_layers}")
    if num_filters < 1 or filter_size < 1:
        raise ValueError("num_filters and filter_size must be >= 1")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    channels, height, width = (int(d) for d in input_shape[-3:])
    layers: list[nn.Module] = []
    for _ in range(num_conv_layers):
        layers.append(nn.Conv2d(channels, num_filters, filter_size, padding="same"))
        if batch_norm and height * width > 1:
            layers.append(nn.BatchNorm2d(num_filters))
        layers.append(nn.ReLU())
        channels = num_filters
        if height >= 2 and width >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
    side_h, side_w = min(height, _HEAD_SIDE), min(width, _HEAD_SIDE)
    if (side_h, side_w) != (height, width):
        layers.append(nn.AdaptiveAvgPool2d((side_h, side_w)))
    layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * side_h * side_w, num_classes)]
    return nn.Sequential(*layers)


@hookimpl
def tuneyard_register_models(register: Any) -> None:
    register("simple_cnn", simple_cnn)

"""The `mlp` model: a multilayer perceptron for feature vectors (the tabular datasets), or any input,
flattened. torch is imported inside the factory, so the server can read its schema without it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

ACTIVATIONS = ("relu", "gelu", "tanh", "silu")
MAX_DEPTH = 16
MAX_WIDTH = 4096


def mlp(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    depth: int = 2,
    width: int = 64,
    dropout: float = 0.0,
    activation: str = "relu",
) -> nn.Module:
    """A multilayer perceptron: the flattened input, `depth` hidden layers of `width` units, a linear output.

    Each hidden layer is Linear, the activation, then Dropout when `dropout` > 0; the output layer
    maps to `num_classes` values (logits, or the regression targets). Depth 0 is a linear model.

    Args:
        depth: number of hidden layers, 0 to 16 (0: one Linear layer from input to output).
        width: units of every hidden layer.
        dropout: dropout probability after every hidden layer's activation.
        activation: "relu", "gelu", "tanh" or "silu".
    """
    from torch import nn

    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if not 0 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be in [0, {MAX_DEPTH}], got {depth}")
    if not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"width must be in [1, {MAX_WIDTH}], got {width}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    layer = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}[activation]
    features = 1
    for size in input_shape:
        features *= int(size)
    layers: list[nn.Module] = [nn.Flatten()]
    for _ in range(depth):
        layers += [nn.Linear(features, width), layer()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        features = width
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)

"""The searchable `convnet` architecture (private helper of `tuneyard.plugins.builtin.models`).

A network is one tower ("serial") or two towers side by side ("parallel") of `depth` stages.
Stage ``i`` has ``round(width * width_multiplier**i)`` channels and ``blocks_per_stage`` blocks
of one type; stages after the first start with a 2x2 max/avg pool along every side that is
still at least 2 long, so no depth shrinks a map below 1x1. Each tower ends in global average
pooling; the pooled features (concatenated for two towers) go through dropout to a linear head.
"""

from __future__ import annotations

import torch
from torch import nn

from tuneyard.plugins.api import Infeasible
from tuneyard.plugins.builtin.models.convnet_space import BLOCKS, CONNECTIONS, KERNEL_SIZES, MAX_DEPTH, POOLINGS


def _norm(channels: int, enabled: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if enabled else nn.Identity()


def _conv_bn_relu(cin: int, cout: int, kernel: int, norm: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=not norm), _norm(cout, norm), nn.ReLU(inplace=True)
    )


class PlainBlock(nn.Sequential):
    """conv -> batch norm -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, norm: bool) -> None:
        super().__init__(*_conv_bn_relu(cin, cout, kernel, norm))


class ResidualBlock(nn.Module):
    """ResNet basic block: two convolutions plus a shortcut (1x1 projection when channels change)."""

    def __init__(self, cin: int, cout: int, kernel: int, norm: bool) -> None:
        super().__init__()
        pad = kernel // 2
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, padding=pad, bias=not norm),
            _norm(cout, norm),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, kernel, padding=pad, bias=not norm),
            _norm(cout, norm),
        )
        if cin == cout:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=not norm), _norm(cout, norm))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class InceptionBlock(nn.Module):
    """GoogLeNet-style block: 1x1, 1x1->3x3, 1x1->5x5 and 3x3-max-pool->1x1 branches, concatenated.

    The output channels are split over the four branches (the 1x1 branch takes the remainder);
    the 3x3 and 5x5 branches reduce to half their output width first.
    """

    def __init__(self, cin: int, cout: int, norm: bool) -> None:
        super().__init__()
        if cout < 4:
            raise Infeasible(f"an inception block needs at least 4 output channels, got {cout}")
        quarter = cout // 4
        self.branch1 = _conv_bn_relu(cin, cout - 3 * quarter, 1, norm)
        self.branch3 = nn.Sequential(
            _conv_bn_relu(cin, max(1, quarter // 2), 1, norm), _conv_bn_relu(max(1, quarter // 2), quarter, 3, norm)
        )
        self.branch5 = nn.Sequential(
            _conv_bn_relu(cin, max(1, quarter // 2), 1, norm), _conv_bn_relu(max(1, quarter // 2), quarter, 5, norm)
        )
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), _conv_bn_relu(cin, quarter, 1, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


def _block(kind: str, cin: int, cout: int, kernel: int, norm: bool) -> nn.Module:
    if kind == "plain":
        return PlainBlock(cin, cout, kernel, norm)
    if kind == "residual":
        return ResidualBlock(cin, cout, kernel, norm)
    return InceptionBlock(cin, cout, norm)


def stage_channels(depth: int, width: int, width_multiplier: float, block: str) -> list[int]:
    """Channels of each stage: ``round(width * width_multiplier**i)``, at least 1 (4 for inception)."""
    least = 4 if block == "inception" else 1
    return [max(least, int(round(width * width_multiplier**i))) for i in range(depth)]


def _tower(
    in_channels: int,
    height: int,
    width: int,
    channels: list[int],
    blocks_per_stage: int,
    kernel_size: int,
    block: str,
    batch_norm: bool,
    pooling: str,
) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = in_channels
    for index, cout in enumerate(channels):
        stage: list[nn.Module] = []
        if index > 0 and pooling != "none" and (height > 1 or width > 1):
            window = (2 if height > 1 else 1, 2 if width > 1 else 1)
            stage.append(nn.MaxPool2d(window) if pooling == "max" else nn.AvgPool2d(window))
            height, width = height // window[0], width // window[1]
        # Batch norm cannot normalise a 1x1 map over a batch of one (a possible last batch).
        norm = batch_norm and height * width > 1
        for _ in range(blocks_per_stage):
            stage.append(_block(block, cin, cout, kernel_size, norm))
            cin = cout
        layers.append(nn.Sequential(*stage))
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """Stages of blocks in one or two towers, global average pooling and a linear head."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        depth: int,
        width: int,
        width_multiplier: float,
        blocks_per_stage: int,
        kernel_size: int,
        block: str,
        connection: str,
        batch_norm: bool,
        dropout: float,
        pooling: str,
    ) -> None:
        super().__init__()
        _check(depth, width, width_multiplier, blocks_per_stage, kernel_size, block, connection, dropout, pooling)
        if len(input_shape) != 3:
            raise ValueError(f"convnet needs (C, H, W) inputs, got input_shape {tuple(input_shape)}")
        in_channels, height, side = (int(d) for d in input_shape)
        channels = stage_channels(depth, width, width_multiplier, block)
        towers = 2 if connection == "parallel" else 1
        self.towers = nn.ModuleList(
            _tower(in_channels, height, side, channels, blocks_per_stage, kernel_size, block, batch_norm, pooling)
            for _ in range(towers)
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(towers * channels[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.pool(tower(x)) for tower in self.towers]
        return self.head(features[0] if len(features) == 1 else torch.cat(features, dim=1))


def _check(
    depth: int,
    width: int,
    width_multiplier: float,
    blocks_per_stage: int,
    kernel_size: int,
    block: str,
    connection: str,
    dropout: float,
    pooling: str,
) -> None:
    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be 1 to {MAX_DEPTH}, got {depth}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if width_multiplier <= 0:
        raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}")
    if blocks_per_stage < 1:
        raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
    for name, value, allowed in (
        ("kernel_size", kernel_size, KERNEL_SIZES),
        ("block", block, BLOCKS),
        ("connection", connection, CONNECTIONS),
        ("pooling", pooling, POOLINGS),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")

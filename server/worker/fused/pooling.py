"""Max pooling of a channel-stacked CPU tensor in the channels-last kernel, with the same results.

On CPU torch's max-pool kernel for contiguous (N, C, H, W) tensors walks each channel's small map
with scalar code, while its channels-last kernel vectorises over the channels. A fused group's
maps have K times a member's channels: measured here (torch 2.14, one thread, (64, 256, 8, 8),
2x2), 5.6 ms contiguous against 0.20 ms channels-last; a K=16 step of digits' `simple_cnn` on
contiguous inputs went from 27 to 17 ms. (Digits' own batches are laid out channels-last already,
and so pooled as they are.) Max pooling picks values and its backward places
each output's gradient at its argmax, so the kernel's layout changes no result: this step's outputs
and gradients are bitwise the contiguous kernel's (tests/test_fused_pooling.py).

The input is converted to channels-last for the kernel and the output back to the input's layout,
and likewise the gradients: the layers around it (batch norm, ReLU, the next convolution) then see
the layout they would have seen, which matters because an elementwise backward whose gradient and
saved input differ in layout runs some 40x slower than one whose layouts agree.

Imported only in worker processes (it imports torch).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.utils import _pair

_CHANNELS_LAST = torch.channels_last


class _ChannelsLastMaxPool(torch.autograd.Function):
    """`max_pool2d` of a contiguous tensor computed channels-last; outputs and gradients contiguous."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, window: tuple[tuple[int, int], ...], ceil_mode: bool) -> torch.Tensor:
        x = h.contiguous(memory_format=_CHANNELS_LAST)
        out, indices = torch.ops.aten.max_pool2d_with_indices(x, *window, ceil_mode)
        ctx.save_for_backward(x, indices)
        ctx.window, ctx.ceil_mode = window, ceil_mode
        return out.contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        x, indices = ctx.saved_tensors
        grad_input = torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(memory_format=_CHANNELS_LAST), x, *ctx.window, ctx.ceil_mode, indices
        )
        return grad_input.contiguous(), None, None


def max_pool(module: nn.MaxPool2d, h: torch.Tensor) -> torch.Tensor:
    """`module(h)`, through the channels-last kernel where `h` is a contiguous 4-d CPU tensor."""
    if h.device.type != "cpu" or h.dim() != 4 or not h.is_contiguous() or h.is_contiguous(memory_format=_CHANNELS_LAST):
        return module(h)  # a GPU, or already channels-last (a one-channel or one-pixel map is both)
    kernel = _pair(module.kernel_size)
    window = (kernel, _pair(module.stride or kernel), _pair(module.padding), _pair(module.dilation))
    return _ChannelsLastMaxPool.apply(h, window, module.ceil_mode)  # without gradients: no graph kept

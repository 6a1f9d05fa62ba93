"""The channel-stacked max pooling (`fused.pooling`): the channels-last kernel gives the contiguous kernel's results."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tuneyard.server.worker.fused.pooling import max_pool

WINDOWS = [
    nn.MaxPool2d(2),
    nn.MaxPool2d(3, stride=1, padding=1),  # overlapping windows: the backward sums into shared inputs
    nn.MaxPool2d(3, stride=2, ceil_mode=True),
    nn.MaxPool2d((2, 3), stride=(1, 2), dilation=(2, 1)),
]


@pytest.mark.parametrize("pool", WINDOWS, ids=repr)
def test_outputs_and_gradients_are_bitwise_the_contiguous_kernels(pool: nn.MaxPool2d) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 48, 9, 9)
    grad_out = None
    results = []
    for fn in (pool, lambda h: max_pool(pool, h)):
        h = x.clone().requires_grad_(True)
        out = fn(torch.relu(h))  # ReLU's zeros make ties, as in a real network
        if grad_out is None:
            grad_out = torch.randn_like(out)
        out.backward(grad_out)
        assert h.grad is not None
        results.append((out.detach(), h.grad, out.is_contiguous(), h.grad.is_contiguous()))
    (want, want_grad, _, _), (got, got_grad, out_contiguous, grad_contiguous) = results
    assert torch.equal(got, want)
    assert torch.equal(got_grad, want_grad)
    assert out_contiguous and grad_contiguous  # the layers around it keep their layout


def test_without_gradients_it_pools_alike() -> None:
    x = torch.randn(4, 32, 8, 8)
    with torch.no_grad():
        assert torch.equal(max_pool(WINDOWS[0], x), WINDOWS[0](x))
    assert max_pool(WINDOWS[0], x).is_contiguous()


def test_a_channels_last_input_goes_to_the_module_as_it_is() -> None:
    x = torch.randn(4, 32, 8, 8).contiguous(memory_format=torch.channels_last)
    out = max_pool(WINDOWS[0], x)
    assert torch.equal(out, WINDOWS[0](x.contiguous()))
    assert out.is_contiguous(memory_format=torch.channels_last)

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


def _members(between: list[nn.Module]) -> list[nn.Module]:
    """Three members: conv, batch norm, ReLU, `between`, 2x2 max pool, linear head (same seeds whatever `between`)."""
    made = []
    for seed in range(3):
        torch.manual_seed(seed)
        layers = [nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), *between, nn.MaxPool2d(2)]
        made.append(nn.Sequential(*layers, nn.Flatten(), nn.Linear(4 * 16, 5)))
    return made


def test_a_relu_before_a_max_pool_runs_after_it_with_bitwise_the_same_training() -> None:
    from tuneyard.server.worker.fused import channels
    from tuneyard.server.worker.fused.stack import FusedModel

    moved = channels._pool_before_relu(list(_members([])[0].named_children()))
    assert [name for name, _ in moved][:4] == ["0", "1", "3", "2"]  # the pool, then the ReLU
    kept = channels._pool_before_relu(list(_members([nn.Identity()])[0].named_children()))
    assert [name for name, _ in kept][:5] == ["0", "1", "2", "3", "4"]  # a layer between: as it is
    runs = []
    for between in ([], [nn.Identity()]):
        fused = FusedModel(_members(between))
        generator = torch.Generator().manual_seed(7)
        outputs = []
        for _ in range(5):  # SGD steps at a large lr, so any difference would grow
            x = torch.randn(16, 3, 8, 8, generator=generator)
            y = torch.randint(0, 5, (16,), generator=generator)
            fused.zero_grad()
            out = fused(x)
            torch.nn.functional.cross_entropy(out.reshape(-1, 5), y.repeat(3)).backward()
            with torch.no_grad():
                for param in fused.parameters():
                    param -= 0.5 * param.grad
            outputs.append(out.detach())
        runs.append((outputs, [p.detach().clone() for p in fused.parameters()]))
    (outs, params), (other_outs, other_params) = runs
    assert all(torch.equal(a, b) for a, b in zip(outs, other_outs, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(params, other_params, strict=True))

"""The shared-batch convolution and its batch norm as one product (`fused.conv_norm`) against the two layers.

The product rounds otherwise than torch's kernels, so each check compares both with a float64
run of the two layers: the product must be as close to it as the solo kernels are, or closer.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tuneyard.plugins.builtin.models import simple_cnn
from tuneyard.server.worker.fused import conv_norm
from tuneyard.server.worker.fused.stack import FusedModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def layers(in_channels: int = 1, out: int = 24, **conv: object) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    torch.manual_seed(3)
    options = {"kernel_size": 3, "padding": "same", **conv}
    norm = nn.BatchNorm2d(out)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return nn.Conv2d(in_channels, out, **options), norm  # type: ignore[arg-type]


def digits_like(n: int = 64, channels: int = 1, side: int = 8) -> torch.Tensor:
    """A batch with digits' layout (strides oneDNN reads as channels-last) and its many zero pixels."""
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(n, side, side, channels, generator=gen) * 16
    return (x * (x > 6)).permute(0, 3, 1, 2)


def float64_layers(conv: nn.Conv2d, norm: nn.BatchNorm2d, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The two layers in float64 (training mode): outputs, and the parameters' gradients of a fixed loss."""
    params = [t.detach().double().requires_grad_() for t in (conv.weight, conv.bias, norm.weight, norm.bias)]
    weight, bias, gamma, beta = params
    z = F.conv2d(x.double(), weight, bias, conv.stride, conv.padding, conv.dilation)
    y = F.batch_norm(z, None, None, gamma, beta, True, 0.0, norm.eps)
    return y, list(torch.autograd.grad((y * probe(y)).sum(), params))


def probe(y: torch.Tensor) -> torch.Tensor:
    """A fixed, varied upstream gradient for outputs shaped like `y`."""
    gen = torch.Generator().manual_seed(5)
    return torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype)


def fused(
    conv: nn.Conv2d, norm: nn.BatchNorm2d, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor
) -> torch.Tensor:
    batch_norm = conv_norm.Norm(norm.weight, norm.bias, mean, var, 0.1, norm.eps)
    return conv_norm.conv_norm(conv_norm.PatchCache(conv).of(x), conv.weight, conv.bias, batch_norm)


@pytest.mark.parametrize(
    "shape", [{}, {"in_channels": 3, "stride": 2, "padding": 1}, {"in_channels": 2, "dilation": 2, "kernel_size": 3}]
)
def test_training_outputs_and_gradients_are_as_close_to_float64_as_the_two_layers(shape: dict[str, object]) -> None:
    conv, norm = layers(**shape)  # type: ignore[arg-type]
    x = digits_like(channels=conv.in_channels)
    exact, exact_grads = float64_layers(conv, norm, x)

    solo = norm(conv(x))
    solo_grads = torch.autograd.grad((solo * probe(solo)).sum(), [conv.weight, conv.bias, norm.weight, norm.bias])
    mean, var = torch.zeros(conv.out_channels), torch.ones(conv.out_channels)
    mine = fused(conv, norm, x, mean, var)
    assert mine.shape == solo.shape and mine.is_contiguous(memory_format=torch.channels_last)
    mine_grads = torch.autograd.grad((mine * probe(mine)).sum(), [conv.weight, conv.bias, norm.weight, norm.bias])

    def error(a: torch.Tensor, b: torch.Tensor) -> float:
        return (a.double() - b).abs().max().item()

    assert error(mine, exact) <= max(error(solo, exact), 1e-6)
    assert error(mine, exact) < 1e-5 * exact.abs().max().item()
    for name, ours, theirs, truth in zip(
        ("weight", "bias", "gamma", "beta"), mine_grads, solo_grads, exact_grads, strict=True
    ):
        scale = max(truth.abs().max().item(), 1.0)
        assert error(ours, truth) <= max(2 * error(theirs, truth), 1e-5 * scale), name
    assert not mine_grads[1].any()  # batch norm removes the conv bias: its exact gradient is zero

    with torch.no_grad():  # running statistics as F.batch_norm keeps them (unbiased variance)
        solo_mean, solo_var = torch.zeros_like(mean), torch.ones_like(var)
        F.batch_norm(conv(x), solo_mean, solo_var, norm.weight, norm.bias, True, 0.1, norm.eps)
    assert torch.allclose(mean, solo_mean, atol=1e-6) and torch.allclose(var, solo_var, rtol=1e-5)


def test_one_value_per_channel_is_refused_in_training_as_batch_norm_refuses_it() -> None:
    conv, norm = layers(padding="valid", kernel_size=8)
    one = digits_like(n=1)  # one row, one output position
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        norm(conv(one))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fused(conv, norm, one, torch.zeros(conv.out_channels), torch.ones(conv.out_channels))


def test_eval_folds_batch_norm_into_the_convolution() -> None:
    conv, norm = layers()
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    norm.eval()
    x = digits_like()
    batch_norm = conv_norm.Norm(norm.weight, norm.bias, norm.running_mean, norm.running_var, 0.1, norm.eps)
    before = norm.running_mean.clone()
    mine = conv_norm.conv_norm_eval(conv_norm.PatchCache(conv), x, conv.weight, conv.bias, batch_norm)
    with torch.no_grad():
        solo = norm(conv(x))
    assert mine.shape == solo.shape
    assert (mine - solo).abs().max().item() < 1e-5
    assert torch.equal(norm.running_mean, before)  # eval reads the statistics, never moves them


def test_patches_are_computed_once_per_batch() -> None:
    conv, _ = layers()
    cache = conv_norm.PatchCache(conv)
    x = digits_like()
    first = cache.of(x)
    assert cache.of(x) is first  # the stack's second part reads the same batch
    x.mul_(2)  # changed in place: its patches are stale
    again = cache.of(x)
    assert again is not first and torch.allclose(again.mean, first.mean * 2)
    assert cache.of(digits_like()) is not again  # another batch
    assert torch.equal(again.with_ones[:, -1], torch.ones(len(again.with_ones)))


def test_only_layers_the_product_covers_take_it() -> None:
    assert conv_norm.applies(*layers())
    assert not conv_norm.applies(*layers(in_channels=2, groups=2))
    assert not conv_norm.applies(*layers(kernel_size=2))  # 'same' with an even kernel pads one side more
    assert not conv_norm.applies(*layers(padding_mode="reflect", padding=1))
    conv, _ = layers()
    assert not conv_norm.applies(conv, nn.BatchNorm2d(conv.out_channels, affine=False))
    assert not conv_norm.applies(conv, nn.BatchNorm2d(conv.out_channels, momentum=None))  # cumulative average
    assert not conv_norm.applies(conv, nn.BatchNorm2d(conv.out_channels + 1))
    x = digits_like()
    assert conv_norm.fits(x)
    assert not conv_norm.fits(x.double())
    assert not conv_norm.fits(x.clone().requires_grad_())  # not the batch: its gradient is not computed
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not conv_norm.fits(x)


def test_simple_cnn_stacks_train_through_the_product_and_fall_back_where_it_does_not_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    train, evaluate = conv_norm.conv_norm, conv_norm.conv_norm_eval
    monkeypatch.setattr(conv_norm, "conv_norm", lambda *a: calls.append("train") or train(*a))
    monkeypatch.setattr(conv_norm, "conv_norm_eval", lambda *a: calls.append("eval") or evaluate(*a))
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(simple_cnn(input_shape=(1, 8, 8), num_classes=10, num_filters=8))
    stack = FusedModel(members)
    x = digits_like()
    out = stack(x)
    assert calls == ["train"]
    for k, member in enumerate(members):
        assert (out[k] - member(x)).abs().max().item() < 1e-4
    out = stack(x.clone().requires_grad_())  # an input that needs its gradient: the two layers
    assert calls == ["train"]
    for k, member in enumerate(members):  # (and a second batch for the running statistics)
        assert (out[k] - member(x)).abs().max().item() < 1e-4
    stack.eval()
    for member in members:
        member.eval()
    with torch.no_grad():
        out = stack(x)
        assert calls == ["train", "eval"]
        for k, member in enumerate(members):
            assert (out[k] - member(x)).abs().max().item() < 1e-4

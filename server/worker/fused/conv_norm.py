"""A convolution on the shared batch followed by batch norm, as one matrix product (CPU).

The first convolution of a channel-stacked model reads the batch every member shares, and its
output channels (K times a member's) go straight into batch norm. On CPU the two layers cost a
third of a fused digits `simple_cnn` step: the convolution has one input channel (oneDNN runs it
at a fraction of its speed on wider layers) and batch norm walks its K*C-channel output four times
forward and five times backward. Both are linear up to the normalisation, so with the batch's
patches X (one row per output position, `F.unfold`), centred as Xc, and their covariance
S = Xc^T Xc / M (D x D, D = in_channels * kh * kw: 9 for digits, shared by every member):

* in training, the convolution's per-channel mean is mean(X) W^T + b and its biased variance
  diag(W S W^T), so batch norm's output is the one product Y = Xc (W^T diag(gamma * invstd)) + beta;
  the running statistics move as `F.batch_norm` moves them (unbiased variance);
* backward, from one product [Xc, 1]^T gY: its first D rows are G^T, G = gY^T Xc (P x D), its last
  gY's column sums (this side, as MKL runs the skinny product 6x faster so): d beta = sum gY,
  d gamma = invstd * rowsum(G * W), d W = gamma * invstd * (G - d gamma * invstd * W S), and
  d b = 0 (batch norm subtracts the mean, so the conv bias has no effect on the output; the solo
  run's bias gradient is rounding noise about zero);
* in eval mode, batch norm's running statistics fold into the weights: one product of X.

The small matrices are float64: neighbouring pixels correlate, so W S W^T cancels (in float32 the
variances were 2e-6 off, relative). The outputs are then about 1e-6 from the two layers' and closer
to a float64 run than the two layers are (their float32 batch norm is 5e-6 off on exact inputs;
tests/test_fused_conv_norm.py), a difference that training amplifies where a run is chaotic, as
any reordering would (bench/README.md). Measured (torch 2.14, one thread, 64 rows, forward and
backward, isolated): digits into 128 channels 5.6 -> 1.1 ms, (3, 32, 32) into 128 channels 231 -> 43 ms.

Only on CPU in fp32 without autocast, on an input that needs no gradient (the batch), and in eval
mode only without gradients; anything else runs the two layers as they are (`channels`).

Imported only in worker processes (it imports torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair


@dataclass(frozen=True)
class Patches:
    """The shared batch's convolution patches: centred rows (M, D), their mean (D) and covariance (D, D, float64).

    `centred` is a view of `with_ones` (M, D + 1), whose last column is ones: one product of a
    gradient with it gives both the weights' product and the gradient's column sums."""

    with_ones: torch.Tensor
    centred: torch.Tensor
    mean: torch.Tensor
    covariance: torch.Tensor
    out_shape: tuple[int, int, int]  # (N, H_out, W_out)


def _padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """The conv's padding per side as `F.unfold` takes it; None for an asymmetric 'same'."""
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        kernel, dilation = _pair(conv.kernel_size), _pair(conv.dilation)
        total = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        if any(t % 2 for t in total):
            return None
        return (total[0] // 2, total[1] // 2)
    return _pair(conv.padding)


def applies(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> bool:
    """Whether this pair of layers can run as one product (on an input that `fits`)."""
    return (
        conv.padding_mode == "zeros"
        and conv.groups == 1
        and _padding(conv) is not None
        and norm.affine
        and norm.num_features == conv.out_channels
        and not (norm.track_running_stats and norm.momentum is None)
    )


def fits(h: torch.Tensor) -> bool:
    """Whether the input is the CPU fp32 batch this path is measured for."""
    return (
        h.device.type == "cpu"
        and h.dtype == torch.float32
        and h.dim() == 4
        and not h.requires_grad
        and not torch.is_autocast_enabled("cpu")
    )


class PatchCache:
    """The last batch's patches: a step's parts of the stack read the same batch."""

    def __init__(self, conv: nn.Conv2d) -> None:
        padding = _padding(conv)
        assert padding is not None, "applies() refuses an asymmetric padding"
        self.kernel, self.padding = _pair(conv.kernel_size), padding
        self.stride, self.dilation = _pair(conv.stride), _pair(conv.dilation)
        self._key: tuple[torch.Tensor, int] | None = None
        self._patches: Patches | None = None

    def of(self, x: torch.Tensor) -> Patches:
        """The patches of `x`, computed once while `x` is the batch (same tensor, unchanged)."""
        if self._key is not None and self._key[0] is x and self._key[1] == x._version and self._patches is not None:
            return self._patches
        rows = self.rows(x)
        mean = rows.mean(0)
        with_ones = torch.ones(rows.shape[0], rows.shape[1] + 1, dtype=rows.dtype, device=rows.device)
        centred = with_ones[:, :-1]
        torch.sub(rows, mean, out=centred)
        wide = centred.double()
        covariance = wide.t() @ wide / rows.shape[0]
        self._key, self._patches = (x, x._version), Patches(with_ones, centred, mean, covariance, self.out_shape(x))
        return self._patches

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The patches of `x` as rows (M, D), one per output position in (n, h, w) order."""
        cols = F.unfold(x, self.kernel, self.dilation, self.padding, self.stride)  # (N, D, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])

    def out_shape(self, x: torch.Tensor) -> tuple[int, int, int]:
        """(N, H_out, W_out) of the convolution of `x`."""
        height, width = (
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip(x.shape[2:], self.padding, self.dilation, self.kernel, self.stride, strict=True)
        )
        return (x.shape[0], height, width)


@dataclass(frozen=True)
class Norm:
    """Batch norm's tensors for the stacked channels (flat views of the stack's; weight and bias
    are None without affine, the running statistics None when it keeps none)."""

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None
    momentum: float
    eps: float


class _ConvNorm(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        patches: Patches,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        gamma: torch.Tensor,
        beta: torch.Tensor,
        norm: Norm,
    ) -> torch.Tensor:
        if patches.centred.shape[0] < 2:  # as `F.batch_norm` refuses it in training
            raise ValueError(f"Expected more than 1 value per channel when training, got {patches.out_shape}")
        w = weight.reshape(weight.shape[0], -1)
        w64 = w.double()
        ws = w64 @ patches.covariance  # float64: neighbouring pixels correlate, so W S W^T cancels
        var = (ws * w64).sum(1)
        invstd = torch.rsqrt(var + norm.eps)
        scale = (gamma.double() * invstd).to(w.dtype)
        y = torch.addmm(beta, patches.centred, (w * scale.unsqueeze(1)).t())
        if norm.running_mean is not None and norm.running_var is not None:
            rows = patches.centred.shape[0]
            mean = torch.mv(w, patches.mean) if bias is None else torch.addmv(bias, w, patches.mean)
            unbiased = (var * (rows / (rows - 1))).to(w.dtype)
            norm.running_mean.mul_(1 - norm.momentum).add_(mean, alpha=norm.momentum)
            norm.running_var.mul_(1 - norm.momentum).add_(unbiased, alpha=norm.momentum)
        ctx.save_for_backward(patches.with_ones, w64, ws, invstd, gamma)
        ctx.weight_shape, ctx.has_bias = weight.shape, bias is not None
        n, height, width = patches.out_shape
        return y.view(n, height, width, -1).permute(0, 3, 1, 2)  # (N, P, H, W), channels-last

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        with_ones, w64, ws, invstd, gamma = ctx.saved_tensors
        gy = grad.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(-1, w64.shape[0])
        # (D + 1, P): Xc^T gY, then gY's column sums. This orientation, not gY^T [Xc, 1], because MKL's
        # kernel for the skinny result runs 6x faster on this side (AVX2, 4096 rows: 0.27 vs 1.8 ms).
        both = with_ones.t() @ gy
        g, dbeta = both[:-1].t().double(), both[-1]
        dgamma = invstd * (g * w64).sum(1)
        dw = (gamma.double() * invstd).unsqueeze(1) * (g - (dgamma * invstd).unsqueeze(1) * ws)
        dgamma, dw = dgamma.to(gy.dtype), dw.to(gy.dtype)
        dbias = torch.zeros_like(dbeta) if ctx.has_bias else None
        return None, dw.view(ctx.weight_shape), dbias, dgamma, dbeta, None


def conv_norm(patches: Patches, weight: torch.Tensor, bias: torch.Tensor | None, norm: Norm) -> torch.Tensor:
    """Training-mode `batch_norm(conv2d(x, weight, bias))` of the batch whose patches these are, channels-last."""
    assert norm.weight is not None and norm.bias is not None, "applies() refuses a batch norm without affine"
    return _ConvNorm.apply(patches, weight, bias, norm.weight, norm.bias, norm)


@torch.no_grad()
def conv_norm_eval(
    cache: PatchCache, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, norm: Norm
) -> torch.Tensor:
    """Eval-mode `batch_norm(conv2d(x, weight, bias))` with running statistics: the convolution with
    batch norm folded into its weights, X (W^T diag(s)) + (b - mean) s + beta, s = gamma / sqrt(var + eps)."""
    assert norm.running_mean is not None and norm.running_var is not None
    assert norm.weight is not None and norm.bias is not None, "applies() refuses a batch norm without affine"
    w = weight.reshape(weight.shape[0], -1)
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    centre = -norm.running_mean if bias is None else bias - norm.running_mean
    y = torch.addmm(torch.addcmul(norm.bias, centre, scale), cache.rows(x), (w * scale.unsqueeze(1)).t())
    n, height, width = cache.out_shape(x)
    return y.view(n, height, width, -1).permute(0, 3, 1, 2)

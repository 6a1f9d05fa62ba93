"""A fused forward without vmap for `nn.Sequential` models of common layers: members side by side in channels.

`vmap` runs any architecture, but its batching rules pay for that generality: batch norm's affine
becomes a broadcast multiply and add, activations land in strided layouts, and the conv biases'
and batch norm's gradients are reduced in another order than the solo kernels (a few ulps, which
training amplifies). HFTA's own construction avoids all of it for the layers it knows: member k's
C channels are channels ``k*C .. k*C + C - 1`` of one (N, K*C, H, W) tensor, so

* a convolution is one grouped convolution (groups K times the member's), its weights the stacked
  (K, O, C/g, kh, kw) viewed as (K*O, ...); on the shared input (the batch, before any layer with
  weights) it is an ungrouped one with K*O output channels, and with the batch norm after it one
  matrix product of the batch's patches on CPU (`fused.conv_norm`: a third of a digits step);
* batch norm is one batch norm over K*C channels (the stacked running statistics viewed flat,
  updated in place), every channel normalised over (N, H, W) exactly as in its solo run;
* activations, dropout and pooling act on each channel alone, so they run as they are (max
  pooling on CPU in the channels-last kernel, many times faster on K times the channels, and
  before a ReLU that precedes it, on a quarter of the elements; both with the same results:
  `fused.pooling`, `_pool_before_relu`);
* `Flatten` turns (N, K*C, H, W) into the members' (K, N, C*H*W), in the solo flattening order;
  a linear layer is then one batched matrix product (`baddbmm`), or on the shared input one
  linear layer with K*O outputs.

Rounding: the layers after the first convolution and its batch norm run the solo kernels on K
times the channels, which agree with the solo runs to a few ulps (the convolutions' backward picks
its reduction order by the channel count; on some CPUs the head's `baddbmm` differs from the solo
`addmm` by an ulp). The first pair, as one product, rounds otherwise: about 1e-6 relative, closer
to a float64 run than the solo kernels are (`fused.conv_norm`), which a long run at a large lr
amplifies as it would any reordering (`bench/README.md`: digits members). Digits' batches are
(N, 1, 8, 8) with strides that oneDNN reads as channels-last, and are kept so (a K=16 step is about
1.8x faster than contiguous). `mlp` members agree to float rounding.
A model with any other layer (or a layer in a layout this table does not cover) returns None from
`plan` and runs under vmap (`stack.FusedModel`).

Imported only in worker processes (it imports torch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from tuneyard.server.worker.fused import conv_norm, pooling


class Layout(Enum):
    """Where the members are in a tensor between two layers."""

    SHARED = "shared"  # one tensor for all members: the batch, before any layer with weights
    CHANNELS = "channels"  # (N, K*C, ...): member k's channels are the k-th block of C
    MEMBERS = "members"  # (K, N, F): member k's rows are slice k


# Layers without state that act on every element or every channel alone: any layout.
_CHANNELWISE = (
    nn.ReLU,
    nn.GELU,
    nn.Tanh,
    nn.SiLU,
    nn.Sigmoid,
    nn.LeakyReLU,
    nn.ELU,
    nn.Identity,
)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class State:
    """The stacked tensors a forward reads: parameters and buffers by their solo names, and their
    member count; `first` is the stack index of their first member (a part of the stack: `FusedModel`)."""

    params: Tensors
    buffers: Tensors
    size: int
    first: int = 0


Step = Callable[[torch.Tensor, State], torch.Tensor]


def _conv(name: str, module: nn.Conv2d, layout: Layout) -> Step | None:
    if module.padding_mode != "zeros" or layout is Layout.MEMBERS:
        return None
    shared = layout is Layout.SHARED and module.groups == 1

    def step(h: torch.Tensor, s: State) -> torch.Tensor:
        weight = s.params[f"{name}.weight"]
        bias = s.params.get(f"{name}.bias")
        flat_bias = None if bias is None else bias.reshape(-1)
        if layout is Layout.SHARED and not shared:  # a grouped conv on the shared batch: one copy per member
            h = h.repeat(1, s.size, *([1] * (h.dim() - 2)))
        groups = module.groups if shared else module.groups * s.size
        flat = weight.reshape(-1, *weight.shape[2:])
        return F.conv2d(h, flat, flat_bias, module.stride, module.padding, module.dilation, groups)

    return step


def _batch_norm(name: str, module: nn.BatchNorm2d, layout: Layout) -> Step | None:
    if layout is not Layout.CHANNELS or (module.track_running_stats and module.momentum is None):
        return None

    def step(h: torch.Tensor, s: State) -> torch.Tensor:
        n = _stacked_norm(name, module, s)
        batch_stats = module.training or n.running_mean is None
        return F.batch_norm(h, n.running_mean, n.running_var, n.weight, n.bias, batch_stats, n.momentum, n.eps)

    return step


def _stacked_norm(name: str, module: nn.BatchNorm2d, s: State) -> conv_norm.Norm:
    """A batch norm's stacked tensors viewed flat over the K*C channels; in training its batch count
    steps, as `_BatchNorm.forward` steps it, for every member."""
    tracked = s.buffers.get(f"{name}.num_batches_tracked")
    if module.training and module.track_running_stats and tracked is not None:
        tracked.add_(1)
    weight, bias = _flat(s.params.get(f"{name}.weight")), _flat(s.params.get(f"{name}.bias"))
    mean, var = _flat(s.buffers.get(f"{name}.running_mean")), _flat(s.buffers.get(f"{name}.running_var"))
    return conv_norm.Norm(weight, bias, mean, var, module.momentum or 0.0, module.eps)


def _flat(stacked: torch.Tensor | None) -> torch.Tensor | None:
    """A stacked (K, C) tensor as the K*C channels' (a view: in-place updates reach the stack)."""
    return None if stacked is None else stacked.view(-1)


def _conv_batch_norm(layout: Layout, layer: tuple[str, nn.Module], after: tuple[str, nn.Module] | None) -> Step | None:
    """A convolution on the shared batch and the batch norm right after it as one step: one product
    (`fused.conv_norm`: training, and eval with running statistics, without gradients), the two
    layers' own steps otherwise; None when these layers are not such a pair."""
    if layout is not Layout.SHARED or after is None:
        return None
    (conv_name, conv_module), (norm_name, norm_module) = layer, after
    if type(conv_module) is not nn.Conv2d or type(norm_module) is not nn.BatchNorm2d:
        return None
    conv, norm = cast(nn.Conv2d, conv_module), cast(nn.BatchNorm2d, norm_module)
    alone, then = _conv(conv_name, conv, Layout.SHARED), _batch_norm(norm_name, norm, Layout.CHANNELS)
    if alone is None or then is None or not conv_norm.applies(conv, norm):
        return None
    cache = conv_norm.PatchCache(conv)

    def step(h: torch.Tensor, s: State) -> torch.Tensor:
        batch_stats = norm.training or f"{norm_name}.running_mean" not in s.buffers
        if not conv_norm.fits(h) or (not batch_stats and torch.is_grad_enabled()):
            return then(alone(h, s), s)
        stacked = _stacked_norm(norm_name, norm, s)
        weight, bias = s.params[f"{conv_name}.weight"], s.params.get(f"{conv_name}.bias")
        flat, flat_bias = weight.reshape(-1, *weight.shape[2:]), None if bias is None else bias.reshape(-1)
        if batch_stats:
            return conv_norm.conv_norm(cache.of(h), flat, flat_bias, stacked)
        return conv_norm.conv_norm_eval(cache, h, flat, flat_bias, stacked)

    return step


def _linear(name: str, layout: Layout) -> Step | None:
    if layout is Layout.CHANNELS:
        return None

    def step(h: torch.Tensor, s: State) -> torch.Tensor:
        weight, bias = s.params[f"{name}.weight"], s.params.get(f"{name}.bias")
        if layout is Layout.SHARED:
            if h.dim() != 2:
                raise ValueError("a fused linear layer on the shared input takes (N, F)")
            out = F.linear(h, weight.reshape(-1, weight.shape[-1]), None if bias is None else bias.reshape(-1))
            return out.view(h.shape[0], s.size, -1).transpose(0, 1)
        if bias is None:
            return torch.bmm(h, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))

    return step


def _flatten(module: nn.Flatten, layout: Layout) -> tuple[Step, Layout] | None:
    if module.start_dim != 1 or module.end_dim != -1:
        return None
    if layout is Layout.SHARED:
        return (lambda h, s: h.flatten(1)), Layout.SHARED
    if layout is Layout.MEMBERS:
        return (lambda h, s: h.flatten(2)), Layout.MEMBERS
    return (lambda h, s: h.reshape(h.shape[0], s.size, -1).transpose(0, 1)), Layout.MEMBERS


def _module(module: nn.Module) -> Step:
    return lambda h, s: module(h)


def _dropout(module: nn.Dropout, ps: tuple[float, ...], layout: Layout) -> Step | None:
    """Member k's dropout with its own probability ps[k]: its elements kept with 1 - ps[k], scaled by
    1 / (1 - ps[k]), the masks drawn for all members at once (a member at 0 is left exactly as it is)."""
    if not any(ps):
        return lambda h, s: h
    if layout is Layout.SHARED:
        return None  # one mask for all members, where their solo runs draw their own
    if len(set(ps)) == 1:
        return _module(module)
    keep = torch.tensor([1.0 - p for p in ps])

    def step(h: torch.Tensor, s: State) -> torch.Tensor:
        if not module.training:
            return h
        mine = keep[s.first : s.first + s.size].to(h.device, h.dtype)
        if layout is Layout.MEMBERS:
            per = mine.view(-1, *([1] * (h.dim() - 1)))
        else:  # (N, K*C, ...): member k's channels share its probability
            per = mine.repeat_interleave(h.shape[1] // s.size).view(1, -1, *([1] * (h.dim() - 2)))
        mask = torch.bernoulli(per.expand_as(h))
        return h * mask / per

    return step


def _one(name: str, module: nn.Module, layout: Layout, ps: tuple[float, ...]) -> tuple[Step, Layout] | None:
    """One layer's fused step and the layout after it; None when this table does not cover it here.
    `ps` are the members' dropout probabilities when the layer is a dropout."""
    if type(module) in _CHANNELWISE:
        return _module(module), layout
    if type(module) is nn.Dropout:
        dropout = cast(nn.Dropout, module)
        dropping = _dropout(dropout, ps or (float(dropout.p),), layout)
        return None if dropping is None else (dropping, layout)
    if type(module) in _POOLS:
        if layout is Layout.MEMBERS or getattr(module, "return_indices", False):
            return None
        if type(module) is nn.MaxPool2d:
            pool = cast(nn.MaxPool2d, module)
            return (lambda h, s: pooling.max_pool(pool, h)), layout
        return _module(module), layout
    if type(module) is nn.Flatten:
        return _flatten(module, layout)
    step: Step | None = None
    if type(module) is nn.Conv2d:
        step, after = _conv(name, module, layout), Layout.CHANNELS
    elif type(module) is nn.BatchNorm2d:
        step, after = _batch_norm(name, module, layout), Layout.CHANNELS
    elif type(module) is nn.Linear:
        step, after = _linear(name, layout), Layout.MEMBERS
    return None if step is None else (step, after)


@dataclass(frozen=True)
class ChannelStacked:
    """A Sequential architecture's fused forward, layer by layer (see the module docstring)."""

    steps: tuple[Step, ...]
    last: Layout
    samplewise_eval: bool  # in eval mode each sample's outputs depend on that sample alone

    def __call__(self, x: torch.Tensor, state: State) -> torch.Tensor:
        """Every member on the same batch `x`: outputs (K, N, ...), as vmap's."""
        h = x
        for step in self.steps:
            h = step(h, state)
        if self.last is Layout.SHARED:
            return h.expand(state.size, *h.shape)
        if self.last is Layout.CHANNELS:
            return h.reshape(h.shape[0], state.size, -1, *h.shape[2:]).transpose(0, 1)
        return h


def _pool_before_relu(layers: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """The layers with every ReLU that a max pool follows moved after that pool.

    ReLU is monotone, so ``max(relu(a), relu(b)) == relu(max(a, b))`` exactly, and the gradients
    agree too: where a window's maximum is positive both orders pass its gradient to that maximum,
    and where it is not, neither passes any. ReLU and its backward then touch a quarter of the
    elements (2x2 pooling): about 10% of a K=16 digits step, with bitwise the same results."""
    ordered = list(layers)
    for i in range(len(ordered) - 1):
        (_, first), (_, then) = ordered[i], ordered[i + 1]
        if type(first) is nn.ReLU and type(then) is nn.MaxPool2d:
            ordered[i], ordered[i + 1] = ordered[i + 1], ordered[i]
    return ordered


def plan(base: nn.Module, dropouts: Mapping[str, tuple[float, ...]]) -> ChannelStacked | None:
    """The channel-stacked forward of this architecture, or None when it needs vmap.

    `base` is the members' weightless copy; its stateless children are called as they are.
    `dropouts` holds each dropout layer's probability per member (they may differ).
    """
    if type(base) is not nn.Sequential:
        return None
    steps: list[Step] = []
    layout = Layout.SHARED
    layers = _pool_before_relu(list(base.named_children()))
    i = 0
    while i < len(layers):
        name, module = layers[i]
        if any(True for _ in module.children()):
            return None  # a nested container: vmap
        paired = _conv_batch_norm(layout, layers[i], layers[i + 1] if i + 1 < len(layers) else None)
        if paired is not None:  # the convolution and the batch norm after it: one step
            steps.append(paired)
            layout, i = Layout.CHANNELS, i + 2
            continue
        found = _one(name, module, layout, tuple(dropouts.get(name, ())))
        if found is None:
            return None
        step, layout = found
        steps.append(step)
        i += 1
    # Batch norm without running statistics normalises over the batch in eval mode too.
    samplewise = all(m.track_running_stats for m in base.children() if isinstance(m, nn.BatchNorm2d))
    return ChannelStacked(tuple(steps), layout, samplewise)

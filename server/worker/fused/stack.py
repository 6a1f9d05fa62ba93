"""K members of one architecture trained as one fused model: one forward and one backward per batch.

HFTA-style horizontal fusion with `torch.func`: the members' parameters and buffers are stacked (as
`stack_module_state` does) along a new leading dim K, and `vmap` runs `functional_call` of one weightless ("meta")
copy of the architecture over that dim, every member on the same batch: outputs are (K, N, ...).
The stacked parameters are leaf tensors; summing the members' losses gives each member's slice
exactly the gradient its solo run would get, so any optimizer that treats elements (or slices)
independently trains each member as its solo run would (`fused.optimizers`).

What holds, found by experiment (tests/test_fused_stack.py checks it):

* Members without dropout match their solo runs (outputs, gradients, SGD steps, batch norm's
  running statistics) to float rounding. Where the rounding differs, measured on `simple_cnn`
  (torch 2.14, CPU, fp32, one step): the forward outputs of every layer are bitwise the solo ones,
  and so are the gradients of the conv and linear weights and the linear bias; the gradients of
  the conv biases and of batch norm's weight and bias differ by about 1e-8 (a few ulps), because
  the vmap batching rules reduce them over the batch and the spatial dims in another order than
  the solo kernels do (the grouped convolution's backward for the conv biases; for batch norm's
  affine, a broadcast multiply whose gradient is reduced apart: `aten::mul` shows in the fused
  profile and not in the solo one). That is float non-associativity in kernels this
  module does not choose; a long run with a large lr and momentum amplifies it (on digits, a few
  members of 32 end past 1e-4 in val metrics after 6 epochs), and `mlp` members (linear layers
  only) stay within 1e-7. Batch norm works under vmap because its running
  statistics are stacked (batched) buffers, which it updates in place; an unbatched running
  buffer fails, and so does ``momentum=None`` (its cumulative average calls ``float()`` on the
  batched ``num_batches_tracked``), which `fusable` refuses.
* Dropout draws its masks with ``randomness="different"``: each member gets its own masks,
  independent across members and with the solo run's distribution (Bernoulli(1 - p), scaled by
  1 / (1 - p)), but not the solo run's masks, which come from the global generator in another
  order. A member with dropout > 0 is thus a statistically equivalent run, never a bitwise replay
  of its solo run; in eval mode (no dropout) it matches exactly.
* Only what the base copy's non-tensor attributes say is run: members must agree on them (dropout
  p, activation, pooling, batch norm's eps and momentum, ...), not only on their tensors' shapes;
  only the channel-stacked forward (below) lets each member keep its own dropout p.

A flat `nn.Sequential` of common layers (convolutions, batch norm, linear layers, activations,
pooling, dropout, flatten: `simple_cnn` and `mlp`) skips vmap: `fused.channels` runs its members
side by side in the channel dim, HFTA's own construction, which is faster; on CPU its first
convolution and batch norm are one matrix product (`fused.conv_norm`), about 1e-6 from the solo
layers and closer to float64, and its other layers agree with the solo kernels to a few ulps (on
some CPUs the head's batched matrix product differs by an ulp). Everything else runs under vmap.

Of the built-in models, `simple_cnn`, `convnet` (every block, connection, pooling, with or
without batch norm) and `mlp` fuse, dropout with the caveat above; `finetune` does not (its
model changes between epochs).

Imported only in worker processes (it imports torch).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.func import functional_call, vmap

from tuneyard.server.worker.fused import channels

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Module attributes that are state or bookkeeping, not architecture.
_SKIPPED_ATTRIBUTES = {"training"}


def _attributes(module: nn.Module) -> dict[str, Any]:
    """A module's public plain attributes (dropout p, kernel size, eps, ...): what its forward reads."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and k not in _SKIPPED_ATTRIBUTES}


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    try:
        return bool(a == b)
    except Exception:  # an attribute whose == is not a plain truth value
        return repr(a) == repr(b)


def _tensor_layout(module: nn.Module) -> dict[str, tuple[Any, ...]]:
    """Name -> (kind, shape, dtype, device, requires_grad) of every parameter and buffer."""
    layout: dict[str, tuple[Any, ...]] = {}
    for name, p in module.named_parameters():
        layout[name] = ("parameter", tuple(p.shape), p.dtype, p.device, p.requires_grad)
    for name, b in module.named_buffers():
        layout[name] = ("buffer", tuple(b.shape), b.dtype, b.device, False)
    return layout


def _own_problem(module: nn.Module) -> str | None:
    """Why this one module cannot run fused, whatever the other members are."""
    if hasattr(module, "on_epoch_start"):
        return f"{type(module).__name__} changes between epochs (on_epoch_start), which a fused model cannot follow"
    if not any(True for _ in module.parameters()):
        return "the model has no parameters"
    layout = _tensor_layout(module)
    extra = [key for key in module.state_dict() if key not in layout]
    if extra:
        return f"state the fused model cannot stack (tied weights or extra state): {', '.join(extra[:3])}"
    for name, sub in module.named_modules():
        if sub._forward_hooks or sub._forward_pre_hooks or sub._backward_hooks:
            return f"module {name or '(root)'} has hooks, which the fused model would not run"
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.track_running_stats and sub.momentum is None:
            return f"batch norm {name} averages cumulatively (momentum=None), which vmap cannot trace"
    return None


def _difference(first: nn.Module, other: nn.Module) -> str | None:
    """How `other` differs from `first` in architecture, None when it does not. Dropout layers may
    differ in their probability (`FusedModel` refuses that where vmap would run them)."""
    layout, other_layout = _tensor_layout(first), _tensor_layout(other)
    if list(layout) != list(other_layout):
        return "different parameter or buffer names"
    for name, entry in layout.items():
        if entry != other_layout[name]:
            return f"{name} differs: {entry[1:]} in one member, {other_layout[name][1:]} in another"
    mods, other_mods = dict(first.named_modules()), dict(other.named_modules())
    if list(mods) != list(other_mods):
        return "different submodules"
    for name, module in mods.items():
        theirs = other_mods[name]
        where = name or "(root)"
        if type(module) is not type(theirs):
            return f"module {where} is a {type(module).__name__} in one member, a {type(theirs).__name__} in another"
        ours, other_attrs = _attributes(module), _attributes(theirs)
        if ours.keys() != other_attrs.keys():
            return f"module {where} has different attributes"
        for key, value in ours.items():
            if key == "p" and type(module) is nn.Dropout:
                continue
            if not _same_value(value, other_attrs[key]):
                return f"module {where} has {key}={value!r} in one member, {other_attrs[key]!r} in another"
    return None


def structure_problem(modules: Sequence[nn.Module]) -> str | None:
    """Why these members cannot be stacked, from their structure alone; None when they can."""
    if not modules:
        return "no members"
    problem = _own_problem(modules[0])
    if problem is not None:
        return problem
    for index, module in enumerate(modules[1:], start=1):
        difference = _difference(modules[0], module)
        if difference is not None:
            return f"member {index} differs from member 0: {difference}"
    return None


def fusable(modules: Sequence[nn.Module], sample: torch.Tensor | None = None) -> str | None:
    """Why these members cannot be trained as one fused model; None when they can.

    Checks their structure (same modules, attributes, parameter names and shapes); with a `sample`
    batch (a couple of rows suffice) also runs a fused training forward and backward and an eval
    forward on copies, so a module vmap cannot trace is refused with vmap's reason. The members
    themselves are left untouched.
    """
    problem = structure_problem(modules)
    if problem is not None:
        return problem
    try:
        fused = FusedModel(modules)
    except ValueError as error:  # dropout that differs, in a model that needs vmap
        return str(error)
    if sample is None:
        return None
    try:
        fused.train()
        fused(sample).float().sum().backward()
        fused.eval()
        with torch.no_grad():
            fused(sample)
    except Exception as error:  # whatever vmap or the model raised is the reason
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"the model cannot run under vmap: {type(error).__name__}: {first_line}"
    return None


def _stack_state(members: Sequence[nn.Module]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Stacked copies of the members' parameters (leaves, requiring grad as the members' do) and buffers.

    `torch.func.stack_module_state` does the same but refuses members in different train/eval modes.
    """
    named = [dict(m.named_parameters()) for m in members]
    params = {
        name: torch.stack([n[name].detach() for n in named]).requires_grad_(first.requires_grad)
        for name, first in named[0].items()
    }
    named_buffers = [dict(m.named_buffers()) for m in members]
    buffers = {name: torch.stack([n[name] for n in named_buffers]) for name in named_buffers[0]}
    return params, buffers


class FusedModel:
    """K members' stacked parameters and buffers, run in one fused forward (channel-stacked or vmapped).

    `params` are leaf tensors of shape (K, ...) that require grad (hand them to an optimizer);
    `buffers` are stacked alike and updated in place (batch norm's running statistics). The
    members are copied: training the fused model never changes them.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        problem = structure_problem(members)
        if problem is not None:
            raise ValueError(f"cannot fuse these members: {problem}")
        self.size = len(members)
        self.params, self.buffers = _stack_state(members)
        self._keys = list(members[0].state_dict().keys())
        self._base = copy.deepcopy(members[0]).to("meta")
        self._base.train(members[0].training)
        self._probe: nn.Module | None = None  # `probe`'s module, built on first use
        self.device = next(iter(self.params.values())).device
        self._run = vmap(self._member_forward, in_dims=(0, 0, None), randomness="different")
        dropouts = {
            name: tuple(float(cast(nn.Dropout, m.get_submodule(name)).p) for m in members)
            for name, sub in self._base.named_modules()
            if type(sub) is nn.Dropout
        }
        self._channels = channels.plan(self._base, dropouts)  # None: the architecture needs vmap
        self._channel_state = channels.State(self.params, self.buffers, self.size)
        self._activation_bytes: dict[tuple[int, ...], int] = {}  # by one input row's shape
        varied = [name for name, ps in dropouts.items() if len(set(ps)) > 1]
        if self._channels is None and varied:
            raise ValueError(
                f"cannot fuse these members: their dropout differs (layer {varied[0]}), which only a flat "
                "Sequential of common layers can vary per member; this model runs under vmap"
            )

    def _member_forward(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: Any) -> Any:
        return functional_call(self._base, (params, buffers), (x,))

    def forward(self, x: torch.Tensor, members: slice | None = None) -> Any:
        """Every member on the same batch `x`: outputs with a leading member dim, (K, N, ...).

        With `members` (a slice of the stack) only those members run; each member's outputs
        and gradients are its own whichever part it runs in, as every layer keeps members apart."""
        if members is None:
            params, buffers, state = self.params, self.buffers, self._channel_state
        else:
            first, stop, step = members.indices(self.size)
            if step != 1 or stop <= first:
                raise ValueError(f"members must be a run of the stack's members, not {members}")
            params = {name: p[first:stop] for name, p in self.params.items()}
            buffers = {name: b[first:stop] for name, b in self.buffers.items()}
            state = channels.State(params, buffers, stop - first, first)
        if self._channels is not None:
            return self._channels(x, state)
        return self._run(params, buffers, x)

    def activation_bytes(self, sample: torch.Tensor) -> int:
        """The largest activation one member's forward makes per input row (its Sequential's layers
        on a one-row meta tensor shaped like `sample`'s rows); 0 for a model that is not a Sequential."""
        shape = (1, *sample.shape[1:])
        if shape not in self._activation_bytes:
            largest, h = 0, torch.empty(shape, dtype=sample.dtype, device="meta")
            if type(self._base) is nn.Sequential:
                with torch.no_grad():
                    for layer in self._base.children():
                        h = layer(h)
                        largest = max(largest, h.numel() * h.element_size())
            self._activation_bytes[shape] = largest
        return self._activation_bytes[shape]

    @property
    def uses_vmap(self) -> bool:
        """Whether the forward runs under vmap (False: the channel-stacked layers of `fused.channels`)."""
        return self._channels is None

    @property
    def samplewise_eval(self) -> bool:
        """Whether, in eval mode, a sample's outputs depend on that sample alone (so a batch may be split).

        Known only for the channel-stacked layers; a model run under vmap is taken to need its batch whole."""
        return self._channels is not None and self._channels.samplewise_eval

    __call__ = forward

    @property
    def training(self) -> bool:
        return self._base.training

    def train(self, mode: bool = True) -> FusedModel:
        """Train mode (batch statistics, dropout) or eval mode for every member at once."""
        self._base.train(mode)
        return self

    def eval(self) -> FusedModel:
        return self.train(False)

    def parameters(self) -> list[torch.Tensor]:
        """The stacked parameters (leading dim K), in the members' parameter order."""
        return list(self.params.values())

    def zero_grad(self) -> None:
        for param in self.params.values():
            param.grad = None

    def _stacked(self, name: str) -> torch.Tensor:
        return self.params[name] if name in self.params else self.buffers[name]

    def _check_member(self, index: int) -> None:
        if not 0 <= index < self.size:
            raise IndexError(f"member {index} out of range for {self.size} members")

    def member_state_dict(self, index: int) -> dict[str, torch.Tensor]:
        """Member `index`'s state dict, keys and order as its solo module's (checkpoints interchange).

        The tensors are copies: saving a slice of a stacked tensor would save all K members.
        """
        self._check_member(index)
        return {key: self._stacked(key)[index].detach().clone() for key in self._keys}

    @torch.no_grad()
    def load_member_state_dict(self, index: int, state: dict[str, torch.Tensor]) -> None:
        """Loads a solo module's (or `member_state_dict`'s) state into member `index`; strict on keys."""
        self._check_member(index)
        if set(state) != set(self._keys):
            missing = sorted(set(self._keys) - set(state))
            unexpected = sorted(set(state) - set(self._keys))
            raise KeyError(f"state dict does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
        for key in self._keys:
            target = self._stacked(key)[index]
            if tuple(state[key].shape) != tuple(target.shape):
                raise ValueError(f"{key}: shape {tuple(state[key].shape)} does not fit {tuple(target.shape)}")
            target.copy_(state[key])

    @torch.no_grad()
    def unstack(self, index: int) -> nn.Module:
        """A real module with member `index`'s weights and buffers (for validation, latency, a test run)."""
        self._check_member(index)
        return self._fill(copy.deepcopy(self._base).to_empty(device=self.device), index)

    @torch.no_grad()
    def probe(self, index: int) -> nn.Module:
        """`unstack(index)` into one module kept for this stack's life: timing it each epoch then costs
        a copy of the weights, not a deep copy of the architecture (about 7 ms for `simple_cnn`)."""
        self._check_member(index)
        if self._probe is None:
            self._probe = copy.deepcopy(self._base).to_empty(device=self.device)
        return self._fill(self._probe, index)

    def _fill(self, module: nn.Module, index: int) -> nn.Module:
        for name, param in module.named_parameters():
            param.copy_(self.params[name][index])
            param.requires_grad_(self.params[name].requires_grad)
        for name, buffer in module.named_buffers():
            buffer.copy_(self.buffers[name][index])
        return module.train(self.training)


@dataclass(frozen=True)
class FusedStep:
    """One fused training step's per-member results, detached, for the members' metrics."""

    losses: torch.Tensor  # (K,): each member's loss on the batch
    outputs: torch.Tensor  # (K, N, ...): each member's outputs


def member_losses(outputs: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn | Sequence[LossFn]) -> torch.Tensor:
    """(K,) losses: member k's loss function (one for all, or one per member) on its outputs."""
    size = outputs.shape[0]
    fns = [loss_fn] * size if callable(loss_fn) else list(loss_fn)
    if len(fns) != size:
        raise ValueError(f"{len(fns)} loss functions for {size} members")
    return torch.stack([fn(outputs[k], targets) for k, fn in enumerate(fns)])


def fused_step(
    model: FusedModel,
    x: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: LossFn | Sequence[LossFn],
    scale: float = 1.0,
) -> FusedStep:
    """One forward of all members and one backward of their summed losses (times `scale`).

    A member's loss depends only on its own slice of the stacked parameters, so the sum's gradient
    in that slice is exactly the member's solo gradient. `scale` is e.g. 1 / grad_accumulation_steps;
    gradients accumulate into the stacked parameters' `.grad` as in a solo run.
    """
    outputs = model(x)
    losses = member_losses(outputs, targets, loss_fn)
    (losses.sum() * scale).backward()
    return FusedStep(losses.detach(), outputs.detach())

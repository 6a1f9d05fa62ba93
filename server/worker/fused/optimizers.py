"""Optimizers over stacked parameters: K trials of one architecture trained as one fused model.

The members' parameters are stacked (``torch.func.stack_module_state``: every tensor gains a
leading member dimension K), and each member keeps its own optimizer options. A fused optimizer
applies torch.optim's update rule (see ``optimizer_rules``) to all K members at once, with each
member's hyperparameters as (K,) tensors, so the fused run matches K solo runs to rounding.

Each member's param groups come from the built-in plugin's own factory, called on meta tensors
of the member's parameter shapes: the weight-decay split (``no_decay_norm_and_bias``) and every
key torch writes into a param group are then exactly what a solo trial's optimizer would have,
which is what lets ``member_state_dict`` / ``load_member_state_dict`` trade checkpoints with
solo runs in both directions.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any, Protocol

import torch
from torch import Tensor

from tuneyard.plugins.builtin import optimizers as builtin
from tuneyard.server.worker.fused.flat import FlatLayout
from tuneyard.server.worker.fused.optimizer_rules import FLAGS, RULES, Hyper, Rule

FACTORIES: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": builtin.sgd,
    "adagrad": builtin.adagrad,
    "rmsprop": builtin.rmsprop,
    "adam": builtin.adam,
    "adamw": builtin.adamw,
    "nadam": builtin.nadam,
    "radam": builtin.radam,
}
# Group options whose other values torch.optim would honour but these rules do not implement.
UNSUPPORTED_GROUP_VALUES = {"maximize": True, "differentiable": True}


@dataclass(frozen=True)
class Unfusable:
    """Why these members cannot share one fused optimizer (they then train solo)."""

    why: str


class FusedOptimizer(Protocol):
    """The optimizer of a fused model: one step updates every member's slice of ``params``."""

    params: dict[str, Tensor]

    @property
    def lr(self) -> Tensor:
        """Each member's learning rate, (K,); assign (or write into) it to drive per-member schedules."""
        ...

    @lr.setter
    def lr(self, value: Tensor) -> None: ...

    def step(self, grads: Mapping[str, Tensor]) -> None:
        """Update ``params`` in place from stacked gradients (a name left out is skipped, like a None grad)."""
        ...

    def member_state_dict(self, i: int) -> dict[str, Any]:
        """Member ``i``'s state, exactly as its solo ``torch.optim`` optimizer's ``state_dict()``."""
        ...

    def load_member_state_dict(self, i: int, state: Mapping[str, Any]) -> None:
        """Resume member ``i`` from a solo optimizer's ``state_dict()`` (hyperparameters included)."""
        ...


@dataclass(frozen=True)
class _Template:
    """A member's param groups as the plugin builds them: option dicts, and which parameters each holds."""

    groups: tuple[dict[str, Any], ...]  # torch's group options, without "params", in torch's key order
    layout: tuple[tuple[int, ...], ...]  # per group, the indices (into the named parameters) it holds


def _template(
    factory: Callable[..., torch.optim.Optimizer], shapes: list[torch.Size], options: dict[str, Any]
) -> _Template:
    metas = [torch.empty(shape, device="meta") for shape in shapes]
    optimizer = factory(metas, **options)
    index = {id(t): j for j, t in enumerate(metas)}
    layout = tuple(tuple(index[id(p)] for p in group["params"]) for group in optimizer.param_groups)
    groups = tuple({k: v for k, v in g.items() if k != "params"} for g in optimizer.state_dict()["param_groups"])
    return _Template(groups, layout)


def _check_options(name: str, member_options: list[dict[str, Any]]) -> Unfusable | None:
    """The options every member passes must be the plugin's own, as plain numbers and booleans."""
    accepted = {p.name for p in inspect.signature(FACTORIES[name]).parameters.values() if p.kind is p.KEYWORD_ONLY}
    for i, options in enumerate(member_options):
        for key, value in options.items():
            if key not in accepted:
                return Unfusable(f"member {i}: {name} has no option {key!r}")
            if not isinstance(value, Real):
                return Unfusable(f"member {i}: option {key}={value!r} is not a number or boolean")
    return None


def _check_params(params: Mapping[str, Tensor], k: int) -> Unfusable | None:
    if not params:
        return Unfusable("no parameters")
    for pname, tensor in params.items():
        if tensor.dim() == 0 or tensor.shape[0] != k:
            return Unfusable(f"parameter {pname} has shape {tuple(tensor.shape)}, not a leading dimension of {k}")
        if not tensor.is_floating_point():
            return Unfusable(f"parameter {pname} is {tensor.dtype}, not a real floating-point tensor")
    return None


def fuse_optimizer(
    name: str, params: dict[str, Tensor], member_options: list[dict[str, Any]]
) -> StackedOptimizer | Unfusable:
    """The fused optimizer for these members, or why they cannot share one."""
    if name not in FACTORIES:
        return Unfusable(f"optimizer {name!r} has no fused implementation (fused: {', '.join(FACTORIES)})")
    if not member_options:
        return Unfusable("no members")
    unfit = _check_options(name, member_options) or _check_params(params, len(member_options))
    if unfit is not None:
        return unfit
    shapes = [t.shape[1:] for t in params.values()]
    templates = []
    for i, options in enumerate(member_options):
        try:
            templates.append(_template(FACTORIES[name], shapes, options))
        except (TypeError, ValueError) as exc:
            return Unfusable(f"member {i}: {name}({options}) is refused: {exc}")
    return StackedOptimizer(name, RULES[name], params, templates)


def make_fused_optimizer(
    name: str, params: dict[str, Tensor], member_options: list[dict[str, Any]]
) -> FusedOptimizer | None:
    """The fused optimizer, or None when the members cannot share one (``fuse_optimizer`` says why)."""
    result = fuse_optimizer(name, params, member_options)
    return None if isinstance(result, Unfusable) else result


class StackedOptimizer:
    """A built-in optimizer's update over stacked parameters, with each member's own hyperparameters."""

    def __init__(self, name: str, rule: Rule, params: dict[str, Tensor], templates: list[_Template]) -> None:
        self.name, self.rule, self.params = name, rule, params
        self._names = list(params)
        self._k = len(templates)
        self._groups = [[dict(g) for g in t.groups] for t in templates]
        self._layouts = [t.layout for t in templates]
        first = next(iter(params.values()))
        self._lr = torch.tensor([float(g[0]["lr"]) for g in self._groups], dtype=torch.float64, device=first.device)
        self._state: dict[str, dict[str, Tensor]] = {}
        self._live: dict[str, Tensor] = {}
        # One update over all parameters when every member keeps them in one group (`flat`).
        one_group = all(len(layout) == 1 for layout in self._layouts)
        self._flat = FlatLayout(params) if one_group and FlatLayout.fits(params) else None
        self._flat_state = {key: self._flat.buffer() for key in rule.tensors} if self._flat else {}
        views = {key: self._flat.views(buffer) for key, buffer in self._flat_state.items()} if self._flat else {}
        for j, (pname, tensor) in enumerate(params.items()):
            state = {
                key: views[key][j] if views else torch.zeros_like(tensor, memory_format=torch.preserve_format)
                for key in rule.tensors
            }
            state.update({key: torch.zeros(self._k, device=tensor.device) for key in rule.scalars})
            self._state[pname] = state
            self._live[pname] = torch.full((self._k,), rule.eager, dtype=torch.bool, device=tensor.device)
        for i in range(self._k):
            for j in range(len(self._names)):
                self._reset(i, j)
        self._hyper: dict[str, Hyper] = {}
        self._in_step: bool | None = None  # whether all parameters' steps and liveness agree; None: look again

    @property
    def lr(self) -> Tensor:
        """Each member's learning rate, (K,) float64; set it (or its items) to schedule members apart."""
        return self._lr

    @lr.setter
    def lr(self, value: Tensor) -> None:
        value = torch.as_tensor(value, dtype=torch.float64)
        if value.shape != (self._k,):
            raise ValueError(f"lr must have shape ({self._k},), not {tuple(value.shape)}")
        self._lr.copy_(value)

    def _group(self, i: int, j: int) -> dict[str, Any]:
        """Member ``i``'s param group holding parameter ``j``."""
        for group, held in zip(self._groups[i], self._layouts[i], strict=True):
            if j in held:
                return group
        raise KeyError(j)

    def _reset(self, i: int, j: int) -> None:
        """Member ``i``'s state of parameter ``j`` as torch starts it (zeros, mu_product 1, Adagrad's fill)."""
        pname, group = self._names[j], self._group(i, j)
        for key, value in self._state[pname].items():
            start = self.rule.init.get(key, 0.0)
            value[i] = group[start] if isinstance(start, str) else start
        self._live[pname][i] = self.rule.eager

    def _hyper_of(self, j: int) -> Hyper:
        pname = self._names[j]
        if pname not in self._hyper:
            device = self.params[pname].device
            groups = [self._group(i, j) for i in range(self._k)]
            values = {}
            for h in self.rule.hypers:
                column = [_option(g, h) for g in groups]
                dtype = torch.bool if h in FLAGS else torch.float64
                values[h] = torch.tensor(column, dtype=dtype, device=device)
            self._hyper[pname] = Hyper(values)
        return self._hyper[pname]

    @torch.no_grad()
    def step(self, grads: Mapping[str, Tensor]) -> None:
        """One step of every member, for each parameter with a gradient in ``grads``."""
        for pname, grad in grads.items():
            param = self.params.get(pname)
            if param is not None and grad.shape != param.shape:
                raise ValueError(f"gradient of {pname} has shape {tuple(grad.shape)}, not {tuple(param.shape)}")
        if self._flat is not None and all(pname in grads for pname in self._names) and self._params_in_step():
            self._flat_step(grads)
            return
        for j, pname in enumerate(self._names):
            given = grads.get(pname)
            if given is None:
                continue
            lr = self._lr.to(given.device)
            param = self.params[pname]
            live = self.rule.update(param, given, self._state[pname], self._hyper_of(j), lr, self._live[pname])
            self._live[pname] = live
        self._in_step = None  # a parameter without a gradient fell behind the others

    def _params_in_step(self) -> bool:
        """Whether every parameter holds the first one's step counts and liveness (so one update serves all)."""
        if self._in_step is None:
            first = self._names[0]
            self._in_step = all(
                torch.equal(self._live[pname], self._live[first])
                and all(torch.equal(self._state[pname][key], self._state[first][key]) for key in self.rule.scalars)
                for pname in self._names[1:]
            )
        return self._in_step

    def _flat_step(self, grads: Mapping[str, Tensor]) -> None:
        """The rule once over all parameters side by side (`flat`): the same elementwise values as per tensor."""
        assert self._flat is not None
        first = self._state[self._names[0]]
        params = [self.params[pname] for pname in self._names]
        param = self._flat.gather(params)
        grad = self._flat.gather([grads[pname] for pname in self._names])
        state = {**self._flat_state, **{key: first[key] for key in self.rule.scalars}}
        lr = self._lr.to(param.device)
        live = self.rule.update(param, grad, state, self._hyper_of(0), lr, self._live[self._names[0]])
        self._flat.scatter(param, params)
        for pname in self._names:
            self._live[pname] = live  # one tensor, replaced (never written into) by the next step
            for key in self.rule.scalars:
                if self._state[pname][key] is not first[key]:
                    self._state[pname][key].copy_(first[key])

    def _ids(self, i: int) -> list[list[int]]:
        """torch's state-dict ids for member ``i``: numbered through the groups in order."""
        ids, n = [], 0
        for held in self._layouts[i]:
            ids.append(list(range(n, n + len(held))))
            n += len(held)
        return ids

    def member_state_dict(self, i: int) -> dict[str, Any]:
        """Member ``i``'s ``state_dict()`` as its solo torch optimizer would write it."""
        state: dict[int, dict[str, Any]] = {}
        param_groups = []
        for group, held, ids in zip(self._groups[i], self._layouts[i], self._ids(i), strict=True):
            for pid, j in zip(ids, held, strict=True):
                pname = self._names[j]
                if bool(self._live[pname][i]):
                    stacked = self._state[pname]
                    state[pid] = {
                        key: _unstack(stacked[key], i, key in self.rule.scalars) for key in self.rule.member_keys(group)
                    }
            param_groups.append({**group, "lr": float(self._lr[i]), "params": ids})
        return {"state": state, "param_groups": param_groups}

    def load_member_state_dict(self, i: int, state: Mapping[str, Any]) -> None:
        """Member ``i`` continues from a solo optimizer's ``state_dict()``: its state and its hyperparameters."""
        saved = list(state["param_groups"])
        layout = self._layouts[i]
        if [len(g["params"]) for g in saved] != [len(held) for held in layout]:
            raise ValueError(f"member {i}: the saved param groups do not match this member's {self.name} groups")
        for group in saved:
            for key, refused in UNSUPPORTED_GROUP_VALUES.items():
                if group.get(key) == refused:
                    raise ValueError(f"member {i}: fused {self.name} does not implement {key}={refused}")
        self._groups[i] = [
            {**old, **{k: v for k, v in new.items() if k != "params"}}
            for old, new in zip(self._groups[i], saved, strict=True)
        ]
        self._lr[i] = float(self._groups[i][0]["lr"])
        self._hyper.clear()
        self._live = {pname: live.clone() for pname, live in self._live.items()}  # a flat step shares one
        self._in_step = None
        entries = state["state"]
        for group, held in zip(saved, layout, strict=True):
            for pid, j in zip(group["params"], held, strict=True):
                self._reset(i, j)
                entry = entries.get(pid)
                if entry:
                    self._load_entry(i, j, entry)

    def _load_entry(self, i: int, j: int, entry: Mapping[str, Any]) -> None:
        pname = self._names[j]
        stacked = self._state[pname]
        for key, value in entry.items():
            if key not in stacked:
                raise ValueError(f"fused {self.name} keeps no state {key!r}")
            if value is not None:  # an old SGD checkpoint's None buffer: the next step starts it afresh
                stacked[key][i].copy_(torch.as_tensor(value))
                self._live[pname][i] = True


def _option(group: Mapping[str, Any], name: str) -> Any:
    """A rule's hyperparameter from a torch param group (the Adam family's betas are two of them)."""
    if name in ("beta1", "beta2"):
        return float(group["betas"][name == "beta2"])
    value = group.get(name, False)
    return bool(value) if name in FLAGS else float(value)


def _unstack(stacked: Tensor, i: int, scalar: bool) -> Tensor:
    """Member ``i``'s slice as torch keeps it: a CPU float32 0-d tensor for a step, else a parameter-sized copy."""
    if scalar:
        return stacked[i].detach().to("cpu", torch.float32, copy=True)
    return stacked[i].detach().clone(memory_format=torch.contiguous_format)

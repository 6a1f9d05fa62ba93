"""Fused optimizers (issue 17) against the built-in plugins' real torch.optim optimizers, member by member.

K=3 small models (a Conv2d, a LayerNorm, a Linear: 4-D, 2-D and 1-D parameters) are stepped solo by
the plugin's own optimizer and, stacked with ``torch.func.stack_module_state``, by the fused one,
with the same random gradients and per-member learning-rate schedules; every parameter must agree
within 1e-6 after every step. The members of one case differ in lr, momentum, betas, weight decay
and the per-member switches (nesterov, centered, amsgrad, decoupled decay, the no-decay group
split), so a hyperparameter that leaked between members would show. State dicts must equal the solo
optimizers' and resume in both directions. One test trains real models on real (tiny) data through
``vmap`` over ``functional_call``.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, stack_module_state, vmap

from tuneyard.plugins.builtin import optimizers as builtin
from tuneyard.server.worker.fused.optimizers import Unfusable, fuse_optimizer, make_fused_optimizer

ATOL = 1e-6
STEPS = 8  # radam's beta2=0.9 member starts rectifying at step 6

CASES: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "sgd-momentum-mix": (
        "sgd",
        [
            {"lr": 0.1},
            {"lr": 0.05, "momentum": 0.9},
            {"lr": 0.02, "momentum": 0.5, "dampening": 0.1, "weight_decay": 0.01},
        ],
    ),
    "sgd-nesterov-split": (
        "sgd",
        [
            {"momentum": 0.9, "nesterov": True, "weight_decay": 0.05, "no_decay_norm_and_bias": True},
            {"lr": 0.03, "momentum": 0.8, "nesterov": True},
            {"momentum": 0.7, "weight_decay": 0.1},
        ],
    ),
    "adagrad": (
        "adagrad",
        [{}, {"lr": 0.05, "lr_decay": 0.1}, {"eps": 1e-3, "weight_decay": 0.1, "no_decay_norm_and_bias": True}],
    ),
    "rmsprop-mix": ("rmsprop", [{}, {"centered": True, "momentum": 0.9}, {"alpha": 0.9, "weight_decay": 0.1}]),
    "rmsprop-centered": (
        "rmsprop",
        [
            {"centered": True},
            {"centered": True, "momentum": 0.5, "eps": 1e-4},
            {"centered": True, "lr": 0.001, "weight_decay": 0.01, "no_decay_norm_and_bias": True},
        ],
    ),
    "adam": (
        "adam",
        [
            {"lr": 0.01},
            {"lr": 0.02, "beta1": 0.8, "beta2": 0.99, "amsgrad": True},
            {"weight_decay": 0.1, "no_decay_norm_and_bias": True},
        ],
    ),
    "adamw": ("adamw", [{}, {"weight_decay": 0.2, "beta1": 0.5}, {"no_decay_norm_and_bias": False, "amsgrad": True}]),
    "adamw-groups-differ": ("adamw", [{"weight_decay": 0.0}, {"lr": 0.01, "eps": 1e-6}, {"weight_decay": 0.3}]),
    "nadam": (
        "nadam",
        [
            {},
            {"lr": 0.05, "weight_decay": 0.2, "decoupled_weight_decay": True, "momentum_decay": 0.5},
            {"lr": 0.02, "momentum_decay": 2.0, "weight_decay": 0.1, "beta2": 0.9},
        ],
    ),
    "radam": (
        "radam",
        [
            {"lr": 0.01, "beta2": 0.999},
            {"lr": 0.01, "beta2": 0.9, "weight_decay": 0.2, "decoupled_weight_decay": True},
            {"beta2": 0.5, "weight_decay": 0.1, "no_decay_norm_and_bias": True},
        ],
    ),
}


class Tiny(nn.Module):
    """4-D conv weights, 1-D biases and LayerNorm weights, a 2-D linear weight: both sides of the decay split."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.norm = nn.LayerNorm([3, 2, 2])
        self.fc = nn.Linear(12, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm(torch.relu(self.conv(x))).flatten(1))


def _models(k: int = 3, seed: int = 0) -> list[Tiny]:
    torch.manual_seed(seed)
    models = [Tiny() for _ in range(k)]
    with torch.no_grad():  # LayerNorm starts at ones/zeros: make every member's parameters its own
        for model in models:
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    return models


def _solo(name: str, models: list[Tiny], options: list[dict[str, Any]]) -> list[torch.optim.Optimizer]:
    return [getattr(builtin, name)(m.parameters(), **o) for m, o in zip(models, options, strict=True)]


def _fused(name: str, params: dict[str, Tensor], options: list[dict[str, Any]]) -> Any:
    fused = fuse_optimizer(name, params, options)
    assert not isinstance(fused, Unfusable), fused
    return fused


def _lrs(solo: list[torch.optim.Optimizer], step: int) -> list[float]:
    """Each member's own schedule: its starting lr decayed by a member-specific factor."""
    return [opt.defaults["lr"] * (0.9 - 0.1 * i) ** step for i, opt in enumerate(solo)]


def _step_both(models, solo, params, fused, gen: torch.Generator, step: int) -> None:
    """One step of the solo optimizers and the fused one, with the same random gradients and lrs."""
    lrs = _lrs(solo, step)
    fused.lr = torch.tensor(lrs, dtype=torch.float64)
    grads = {n: torch.randn(t.shape, generator=gen) for n, t in params.items()}
    for i, (model, opt) in enumerate(zip(models, solo, strict=True)):
        for group in opt.param_groups:
            group["lr"] = lrs[i]
        for n, p in model.named_parameters():
            p.grad = grads[n][i].clone()
        opt.step()
    fused.step(grads)


def _assert_params(models: list[Tiny], params: dict[str, Tensor], atol: float = ATOL) -> None:
    for i, model in enumerate(models):
        for n, p in model.named_parameters():
            torch.testing.assert_close(
                params[n][i], p.detach(), atol=atol, rtol=0, msg=lambda m, n=n, i=i: f"{n}[{i}]: {m}"
            )


def _assert_same_state(fused_sd: dict[str, Any], solo_sd: dict[str, Any]) -> None:
    """Equal state dicts: groups exactly (keys in torch's order), state keys, tensors' dtype/shape/device and values."""
    assert [list(g) for g in fused_sd["param_groups"]] == [list(g) for g in solo_sd["param_groups"]]
    assert fused_sd["param_groups"] == solo_sd["param_groups"]
    assert sorted(fused_sd["state"]) == sorted(solo_sd["state"])
    for pid, solo_entry in solo_sd["state"].items():
        entry = fused_sd["state"][pid]
        assert list(entry) == list(solo_entry), pid
        for key, value in solo_entry.items():
            got = entry[key]
            assert (got.dtype, got.shape, got.device) == (value.dtype, value.shape, value.device), (pid, key)
            torch.testing.assert_close(got, value, atol=ATOL, rtol=1e-6)  # moments can be large: relative


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_steps_match_solo_optimizers(case: str) -> None:
    name, options = CASES[case]
    models = _models()
    solo = _solo(name, models, options)
    params, _ = stack_module_state(copy.deepcopy(models))
    fused = _fused(name, params, options)
    for i, opt in enumerate(solo):
        _assert_same_state(fused.member_state_dict(i), opt.state_dict())  # fresh (Adagrad's eager state)
    gen = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        _step_both(models, solo, params, fused, gen, step)
        _assert_params(models, params)
    for i, opt in enumerate(solo):
        _assert_same_state(fused.member_state_dict(i), opt.state_dict())


@pytest.mark.parametrize("case", sorted(CASES))
def test_member_state_resumes_a_solo_run(case: str) -> None:
    name, options = CASES[case]
    params, _ = stack_module_state(_models())
    fused = _fused(name, params, options)
    gen = torch.Generator().manual_seed(2)
    for step in range(3):
        fused.lr = torch.tensor([o.get("lr", 0.01) * 0.5**step for o in options], dtype=torch.float64)
        fused.step({n: torch.randn(t.shape, generator=gen) for n, t in params.items()})
    resumed = _models(seed=9)  # other weights: everything must come from the fused member
    with torch.no_grad():
        for i, model in enumerate(resumed):
            for n, p in model.named_parameters():
                p.copy_(params[n][i])
    solo = _solo(name, resumed, options)
    for i, opt in enumerate(solo):
        opt.load_state_dict(fused.member_state_dict(i))
        assert opt.param_groups[0]["lr"] == float(fused.lr[i])
    for step in range(3, 6):
        _step_both(resumed, solo, params, fused, gen, step)
        _assert_params(resumed, params)


def _resume_members_from_solo(case: str, fused_options: list[dict[str, Any]], zero_step: bool = False) -> None:
    """Solo runs take 3 steps; a fused optimizer built from ``fused_options`` loads their states and goes on.

    ``zero_step``: the fused optimizer first steps once with zero gradients (so it has used its own
    hyperparameters; with no weight decay that leaves the weights alone) before it loads.
    """
    name, options = CASES[case]
    models = _models()
    solo = _solo(name, models, options)
    gen = torch.Generator().manual_seed(3)
    throwaway, _ = stack_module_state(copy.deepcopy(models))
    warmup = _fused(name, throwaway, options)
    for step in range(3):
        _step_both(models, solo, throwaway, warmup, gen, step)
    params, _ = stack_module_state(copy.deepcopy(models))
    fused = _fused(name, params, fused_options)
    if zero_step:
        fused.step({n: torch.zeros_like(t) for n, t in params.items()})
    fused.lr = torch.full((3,), 123.0, dtype=torch.float64)  # the loaded state's lr must replace it
    for i, opt in enumerate(solo):
        fused.load_member_state_dict(i, opt.state_dict())
        _assert_same_state(fused.member_state_dict(i), opt.state_dict())
    for step in range(3, 6):
        _step_both(models, solo, params, fused, gen, step)
        _assert_params(models, params)


@pytest.mark.parametrize("case", sorted(CASES))
def test_solo_state_resumes_a_member(case: str) -> None:
    _resume_members_from_solo(case, CASES[case][1])


@pytest.mark.parametrize("case", ["sgd-momentum-mix", "rmsprop-mix", "nadam"])
def test_a_loaded_state_brings_its_hyperparameters(case: str) -> None:
    """Like torch's load_state_dict, the saved groups' momentum, centering, betas... replace the fused defaults."""
    _resume_members_from_solo(case, [{}, {}, {}], zero_step=True)


def _step_some(models, solo, params, fused, grads: dict[str, Tensor]) -> None:
    """One step of both sides with only these gradients (a parameter left out has none), then compared."""
    for i, (model, opt) in enumerate(zip(models, solo, strict=True)):
        for n, p in model.named_parameters():
            p.grad = grads[n][i].clone() if n in grads else None
        opt.step()
    fused.step(grads)
    _assert_params(models, params)


def test_a_parameter_without_gradient_is_left_alone_like_torch() -> None:
    name, options = CASES["adam"]
    models = _models()
    solo = _solo(name, models, options)
    params, _ = stack_module_state(copy.deepcopy(models))
    fused = _fused(name, params, options)
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        grads = {n: torch.randn(t.shape, generator=gen) for n, t in params.items() if n != "fc.bias"}
        _step_some(models, solo, params, fused, grads)
    for i, opt in enumerate(solo):
        _assert_same_state(fused.member_state_dict(i), opt.state_dict())
        assert len(fused.member_state_dict(i)["state"]) == len(list(models[i].parameters())) - 1


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_one_update_over_all_parameters_falls_back_when_a_parameter_misses_a_step(name: str) -> None:
    """Members with one param group step all parameters in one update; a step without some
    parameter's gradient leaves that parameter (and its step count) behind, as torch does, and the
    steps after it go per parameter while the parameters' step counts disagree."""
    options = [{"lr": 0.01}, {"lr": 0.02, "momentum": 0.9}, {"weight_decay": 0.1}]
    if name == "adam":
        options = [{"lr": 0.01}, {"lr": 0.02, "beta1": 0.8, "amsgrad": True}, {"weight_decay": 0.1}]
    models = _models()
    solo = _solo(name, models, options)
    params, _ = stack_module_state(copy.deepcopy(models))
    fused = _fused(name, params, options)
    assert fused._flat is not None  # every member keeps its parameters in one group
    gen = torch.Generator().manual_seed(5)
    for step in range(6):
        left_out = "fc.bias" if step in (2, 3) else None
        grads = {n: torch.randn(t.shape, generator=gen) for n, t in params.items() if n != left_out}
        _step_some(models, solo, params, fused, grads)
    # Adam's fc.bias is two steps behind the others; SGD counts no steps, so one update serves again.
    assert fused._params_in_step() == (name == "sgd")
    for i, opt in enumerate(solo):
        _assert_same_state(fused.member_state_dict(i), opt.state_dict())


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_training_through_vmap_matches_solo_training(name: str) -> None:
    """Real gradients: a regression on fixed data, solo by backward(), fused by vmap(grad(functional_call))."""
    options = [{"lr": 0.05, "momentum": 0.9}, {"lr": 0.02}, {"lr": 0.01, "weight_decay": 0.1}]
    if name == "adamw":
        options = [{"lr": 0.01}, {"lr": 0.003, "beta2": 0.99}, {"lr": 0.02, "weight_decay": 0.3}]
    models = _models()
    solo = _solo(name, models, options)
    base = copy.deepcopy(models[0]).to("meta")
    params, buffers = stack_module_state(copy.deepcopy(models))
    fused = _fused(name, params, options)
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(16, 2, 4, 4, generator=gen), torch.randn(16, 2, generator=gen)

    def loss(p: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
        return nn.functional.mse_loss(functional_call(base, (p, b), (x,)), y)

    first = [nn.functional.mse_loss(m(x), y).item() for m in models]
    for _ in range(10):
        for model, opt in zip(models, solo, strict=True):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        fused.step(vmap(grad(loss))(params, buffers))
        _assert_params(models, params, atol=1e-5)
    assert all(nn.functional.mse_loss(m(x), y).item() < f for m, f in zip(models, first, strict=True))


def test_unfusable_optimizers_and_options_say_why() -> None:
    params, _ = stack_module_state(_models())
    three: list[dict[str, Any]] = [{}, {}, {}]
    refusals = {
        ("lbfgs", 0): (three, "no fused implementation"),
        ("sgd", 1): ([{}, {"maximize": True}, {}], "no option 'maximize'"),
        ("adam", 2): ([{}, {}, {"lr": "fast"}], "not a number"),
        ("sgd", 3): ([{}, {"nesterov": True}, {}], "refused"),
        ("adam", 4): ([{}, {}], "leading dimension of 2"),
        ("adam", 5): ([], "no members"),
    }
    for (name, _), (options, why) in refusals.items():
        result = fuse_optimizer(name, params, options)
        assert isinstance(result, Unfusable) and why in result.why, (name, options, result)
        assert make_fused_optimizer(name, params, options) is None
    assert make_fused_optimizer("adam", params, three) is not None


def test_lr_is_per_member_and_checked() -> None:
    params, _ = stack_module_state(_models())
    fused = _fused("sgd", params, [{"lr": 0.1}, {"lr": 0.2}, {}])
    assert fused.lr.tolist() == [0.1, 0.2, 0.01]
    fused.lr[1] = 0.5
    assert fused.member_state_dict(1)["param_groups"][0]["lr"] == 0.5
    with pytest.raises(ValueError, match="shape"):
        fused.lr = torch.ones(2)
    with pytest.raises(ValueError, match="groups"):
        fused.load_member_state_dict(0, {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]})


@pytest.mark.parametrize("case", ["sgd-momentum-mix", "sgd-nesterov-split"])
def test_fused_sgd_steps_are_bitwise_torchs(case: str) -> None:
    """SGD's rule rounds as torch does (its `add(alpha=)` is a fused multiply-add: `addcmul` here), so
    a long run at a large lr cannot drift from its solo run."""
    name, options = CASES[case]
    models = _models()
    solo = _solo(name, models, options)
    params, _ = stack_module_state(copy.deepcopy(models))
    fused = _fused(name, params, options)
    gen = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        _step_both(models, solo, params, fused, gen, step)
        _assert_params(models, params, atol=0.0)

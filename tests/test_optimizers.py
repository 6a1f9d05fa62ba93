"""The built-in optimizers against the textbook update rules, written out by hand.

Each check runs three steps on a two-element float64 parameter whose gradient is set by hand
(the same fixed sequence every time), through the registry exactly as the trainer builds an
optimizer, and compares the result with the rule computed in plain Python arithmetic.
"""

from __future__ import annotations

import math

import pytest
import torch

from tuneyard.plugins.manager import PluginRegistry

P0 = [1.0, -2.0]
GRADS = [[0.5, -1.0], [0.3, 2.0], [-0.7, 0.1]]
NAMES = ["adagrad", "adam", "adamw", "nadam", "radam", "rmsprop", "sgd"]


@pytest.fixture(scope="module")
def reg() -> PluginRegistry:
    return PluginRegistry.load(entry_points=False)


def run(reg: PluginRegistry, name: str, options: dict) -> list[float]:
    """The parameter after applying GRADS, one optimizer step each."""
    p = torch.tensor(P0, dtype=torch.float64, requires_grad=True)
    optimizer = reg.create("optimizer", name, options, args=([p],))
    for g in GRADS:
        p.grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()
    return p.detach().tolist()


def textbook_sgd(lr: float, momentum: float, dampening: float, wd: float, nesterov: bool) -> list[float]:
    out = []
    for i, p in enumerate(P0):
        buf = None
        for t, grads in enumerate(GRADS):
            g = grads[i] + wd * p
            if momentum:
                buf = g if t == 0 else momentum * buf + (1 - dampening) * g
                g = g + momentum * buf if nesterov else buf
            p = p - lr * g
        out.append(p)
    return out


def textbook_adagrad(lr: float, lr_decay: float, eps: float, wd: float) -> list[float]:
    out = []
    for i, p in enumerate(P0):
        sum_sq = 0.0
        for t, grads in enumerate(GRADS, start=1):
            g = grads[i] + wd * p
            sum_sq += g * g
            p = p - lr / (1 + (t - 1) * lr_decay) * g / (math.sqrt(sum_sq) + eps)
        out.append(p)
    return out


def textbook_rmsprop(lr: float, alpha: float, eps: float, momentum: float, centered: bool) -> list[float]:
    out = []
    for i, p in enumerate(P0):
        sq_avg = g_avg = buf = 0.0
        for grads in GRADS:
            g = grads[i]
            sq_avg = alpha * sq_avg + (1 - alpha) * g * g
            if centered:
                g_avg = alpha * g_avg + (1 - alpha) * g
                denom = math.sqrt(sq_avg - g_avg * g_avg) + eps
            else:
                denom = math.sqrt(sq_avg) + eps
            if momentum:
                buf = momentum * buf + g / denom
                p = p - lr * buf
            else:
                p = p - lr * g / denom
        out.append(p)
    return out


def textbook_adam(
    lr: float, b1: float, b2: float, eps: float, wd: float = 0.0, decoupled: bool = False, amsgrad: bool = False
) -> list[float]:
    out = []
    for i, p in enumerate(P0):
        m = v = v_max = 0.0
        for t, grads in enumerate(GRADS, start=1):
            g = grads[i]
            if decoupled:
                p = p * (1 - lr * wd)
            else:
                g = g + wd * p
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            v_max = max(v_max, v)
            m_hat = m / (1 - b1**t)
            v_hat = (v_max if amsgrad else v) / (1 - b2**t)
            p = p - lr * m_hat / (math.sqrt(v_hat) + eps)
        out.append(p)
    return out


def test_names(reg: PluginRegistry) -> None:
    assert reg.names("optimizer") == NAMES
    assert not [e for e in reg.errors if "optimizer" in e.message]


@pytest.mark.parametrize(
    "options",
    [
        {"lr": 0.1},
        {"lr": 0.1, "weight_decay": 0.05},
        {"lr": 0.1, "momentum": 0.9},
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.05},
        {"lr": 0.1, "momentum": 0.9, "nesterov": True},
    ],
    ids=["plain", "l2", "momentum", "momentum-dampening-l2", "nesterov"],
)
def test_sgd(reg: PluginRegistry, options: dict) -> None:
    expected = textbook_sgd(
        options["lr"],
        options.get("momentum", 0.0),
        options.get("dampening", 0.0),
        options.get("weight_decay", 0.0),
        options.get("nesterov", False),
    )
    assert run(reg, "sgd", options) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("lr_decay,wd", [(0.0, 0.0), (0.5, 0.1)])
def test_adagrad_accumulates_squared_gradients(reg: PluginRegistry, lr_decay: float, wd: float) -> None:
    options = {"lr": 0.5, "lr_decay": lr_decay, "weight_decay": wd, "eps": 1e-10}
    expected = textbook_adagrad(0.5, lr_decay, 1e-10, wd)
    assert run(reg, "adagrad", options) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("momentum,centered", [(0.0, False), (0.0, True), (0.8, False), (0.8, True)])
def test_rmsprop_moving_average(reg: PluginRegistry, momentum: float, centered: bool) -> None:
    options = {"lr": 0.01, "alpha": 0.9, "eps": 1e-8, "momentum": momentum, "centered": centered}
    expected = textbook_rmsprop(0.01, 0.9, 1e-8, momentum, centered)
    assert run(reg, "rmsprop", options) == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_bias_corrected_moments(reg: PluginRegistry, amsgrad: bool) -> None:
    options = {"lr": 0.1, "beta1": 0.8, "beta2": 0.95, "eps": 1e-8, "amsgrad": amsgrad}
    expected = textbook_adam(0.1, 0.8, 0.95, 1e-8, amsgrad=amsgrad)
    assert run(reg, "adam", options) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    # weight_decay in adam is an L2 term added to the gradient
    expected = textbook_adam(0.1, 0.8, 0.95, 1e-8, wd=0.2, amsgrad=amsgrad)
    assert run(reg, "adam", {**options, "weight_decay": 0.2}) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_adamw_decoupled_decay(reg: PluginRegistry) -> None:
    options = {"lr": 0.1, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.2, "no_decay_norm_and_bias": False}
    expected = textbook_adam(0.1, 0.9, 0.999, 1e-8, wd=0.2, decoupled=True)
    assert run(reg, "adamw", options) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert expected != pytest.approx(textbook_adam(0.1, 0.9, 0.999, 1e-8, wd=0.2), rel=1e-6)  # not L2
    # By default adamw leaves 1-D parameters (like this one) undecayed: plain Adam.
    plain = textbook_adam(0.1, 0.9, 0.999, 1e-8)
    assert run(reg, "adamw", {"lr": 0.1, "weight_decay": 0.2}) == pytest.approx(plain, rel=1e-10, abs=1e-12)
    assert reg.get("optimizer", "adamw").param("weight_decay").default == 0.01


@pytest.mark.parametrize("name", ["nadam", "radam"])
@pytest.mark.parametrize("decoupled", [False, True])
def test_nadam_radam_decrease_a_quadratic(reg: PluginRegistry, name: str, decoupled: bool) -> None:
    target = torch.tensor([3.0, -1.0])
    p = torch.zeros(2, requires_grad=True)
    options = {"lr": 0.05, "weight_decay": 1e-3, "decoupled_weight_decay": decoupled}
    optimizer = reg.create("optimizer", name, options, args=([p],))
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = (p - target).pow(2).sum()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert losses == sorted(losses, reverse=True)


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


@pytest.mark.parametrize("name", NAMES)
def test_no_decay_grouping_puts_1d_params_in_a_zero_decay_group(reg: PluginRegistry, name: str) -> None:
    model = _model()
    weights = [model[0].weight, model[3].weight]
    one_d = [model[0].bias, model[1].weight, model[1].bias, model[3].bias]
    options = {"weight_decay": 0.1, "no_decay_norm_and_bias": True}
    optimizer = reg.create("optimizer", name, options, args=(model.parameters(),))
    groups = optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in weights]
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in one_d]
    # Off, or nothing to decay: one group holding every parameter.
    for options in ({"weight_decay": 0.1, "no_decay_norm_and_bias": False}, {"weight_decay": 0.0}):
        optimizer = reg.create("optimizer", name, options, args=(model.parameters(),))
        assert len(optimizer.param_groups) == 1
        assert len(optimizer.param_groups[0]["params"]) == len(weights) + len(one_d)


def test_adamw_default_decays_only_matrices(reg: PluginRegistry) -> None:
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = reg.create("optimizer", "adamw", {"lr": 0.1}, args=(model.parameters(),))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only the decay moves anything
    optimizer.step()
    for old, new in zip(before, model.parameters(), strict=True):
        expected = old * (1 - 0.1 * 0.01) if old.dim() >= 2 else old
        assert torch.allclose(new, expected, rtol=0, atol=1e-7)


def test_defaults_and_docs(reg: PluginRegistry) -> None:
    for entry in reg.entries("optimizer"):
        assert all(p.doc for p in entry.parameters), entry.name
        assert entry.param("lr") is not None and not entry.param("lr").required
        assert entry.param("no_decay_norm_and_bias").default is (entry.name == "adamw")
        assert entry.param("no_decay_norm_and_bias").type == "bool"
    assert {p.name for p in reg.get("optimizer", "rmsprop").parameters} >= {"alpha", "momentum", "centered", "eps"}
    assert {p.name for p in reg.get("optimizer", "sgd").parameters} >= {"momentum", "nesterov", "dampening"}


def test_bad_options_are_value_errors(reg: PluginRegistry) -> None:
    params = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError):
        reg.create("optimizer", "sgd", {"nesterov": True}, args=(params,))  # nesterov without momentum
    with pytest.raises(ValueError):
        reg.create("optimizer", "adam", {"beta1": 1.5}, args=(params,))
    with pytest.raises(ValueError, match="unknown option"):
        reg.create("optimizer", "adagrad", {"momentum": 0.9}, args=(params,))


@pytest.mark.parametrize("name", NAMES)
def test_a_real_training_step(reg: PluginRegistry, name: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    before = [p.detach().clone() for p in model.parameters()]
    options = {"lr": 0.05, "momentum": 0.9, "nesterov": True} if name == "sgd" else {"lr": 0.05}
    optimizer = reg.create("optimizer", name, options, args=(model.parameters(),))
    assert all(g["lr"] == 0.05 for g in optimizer.param_groups)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert losses[-1] < losses[0]

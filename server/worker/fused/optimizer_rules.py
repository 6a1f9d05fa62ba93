"""The update rules of the built-in optimizers over stacked parameters (leading member dimension K).

Each rule is torch.optim's default single-tensor step (the one torch runs on CPU, and with
``foreach=False``) written once for all K members: every hyperparameter is a (K,) tensor that
broadcasts as (K, 1, 1, ...), per-member switches (nesterov, centered, amsgrad, decoupled weight
decay) pick between both branches with ``torch.where``, and the step-dependent scalars (bias
corrections, NAdam's mu) are computed per member in float64, as torch computes them in Python
floats, before they meet the float32 tensors. The op order follows torch's so that a fused member
and a solo run agree to rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

FLAGS = frozenset({"nesterov", "centered", "amsgrad", "decoupled_weight_decay"})


class Hyper:
    """One parameter's hyperparameters across members: (K,) float64 tensors, (K,) bool for the flags.

    ``any`` is decided when the hyperparameters are set, so a step never waits on the device to
    learn whether a branch (momentum, weight decay, amsgrad) is needed at all.
    """

    def __init__(self, values: Mapping[str, Tensor]) -> None:
        self.values = dict(values)
        self._any = {name: bool(value.ne(0).any()) for name, value in self.values.items()}
        self._columns: dict[str, Tensor] = {}

    def __getitem__(self, name: str) -> Tensor:
        return self.values[name]

    def any(self, name: str) -> bool:
        """Whether any member has a non-zero (or true) value for ``name``."""
        return self._any.get(name, False)

    def column(self, key: str, like: Tensor, make: Callable[[], Tensor]) -> Tensor:
        """``col(make(), like)``, made once: only for values of these fixed hyperparameters (never lr or step).

        A step then skips the float64 arithmetic and the casts for them, with the very same values.
        """
        cached = self._columns.get(key)
        if cached is None or cached.dtype != like.dtype or cached.device != like.device or cached.dim() != like.dim():
            cached = self._columns[key] = col(make(), like)
        return cached


Update = Callable[[Tensor, Tensor, dict[str, Tensor], Hyper, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Rule:
    """How one optimizer keeps and updates state.

    ``tensors`` are the per-parameter state tensors (stacked like the parameter), ``scalars`` the
    per-parameter scalar states ((K,) float32, torch's 0-d ``step``); ``member_keys`` names the
    state torch keeps for a member given its param group, in torch's order; ``init`` the starting
    value of a state (a number, or the name of the group option that holds it; 0 if absent);
    ``eager`` whether torch creates the state in the constructor (Adagrad) rather than on the first
    step. ``update(param, grad, state, hyper, lr, live)`` steps one stacked parameter in place and
    returns which members hold state afterwards.
    """

    hypers: tuple[str, ...]
    tensors: tuple[str, ...]
    scalars: tuple[str, ...]
    member_keys: Callable[[Mapping[str, Any]], tuple[str, ...]]
    update: Update
    init: Mapping[str, float | str]
    eager: bool = False


def col(x: Tensor, like: Tensor) -> Tensor:
    """A per-member (K,) tensor in ``like``'s dtype (masks stay bool), shaped (K, 1, ...) to broadcast against it."""
    dtype = torch.bool if x.dtype == torch.bool else like.dtype
    return x.to(dtype=dtype, device=like.device).view(-1, *([1] * (like.dim() - 1)))


def _decay(param: Tensor, grad: Tensor, hp: Hyper, lr: Tensor) -> Tensor:
    """Weight decay: decoupled members scale the weights by 1 - lr * wd, the others add wd * param."""
    if not hp.any("weight_decay"):
        return grad
    wd = hp["weight_decay"]
    if hp.any("decoupled_weight_decay"):
        decoupled = hp["decoupled_weight_decay"]
        param.mul_(col(torch.where(decoupled, 1 - lr * wd, torch.ones_like(wd)), param))
        coupled = hp.column("coupled weight_decay", param, lambda: torch.where(decoupled, torch.zeros_like(wd), wd))
    else:
        coupled = hp.column("weight_decay", param, lambda: wd)
    return torch.addcmul(grad, param, coupled)  # torch's grad.add(param, alpha=wd), rounded alike


def _ones(live: Tensor) -> Tensor:
    return torch.ones_like(live)


def sgd_update(param: Tensor, grad: Tensor, st: dict[str, Tensor], hp: Hyper, lr: Tensor, live: Tensor) -> Tensor:
    """SGD: the buffer starts as the first gradient, then momentum * buf + (1 - dampening) * grad."""
    grad = _decay(param, grad, hp, lr)
    if hp.any("momentum"):
        buf = st["momentum_buffer"]
        momentum = hp.column("momentum", param, lambda: hp["momentum"])
        running = torch.addcmul(buf * momentum, grad, hp.column("1 - dampening", param, lambda: 1 - hp["dampening"]))
        buf.copy_(torch.where(col(live, param), running, grad))
        live = live | hp["momentum"].ne(0).to(live.device)
        direction = buf
        if hp.any("nesterov"):
            nesterov = hp.column("nesterov", param, lambda: hp["nesterov"])
            direction = torch.where(nesterov, torch.addcmul(grad, buf, momentum), buf)
        grad = torch.where(hp.column("momentum != 0", param, lambda: hp["momentum"].ne(0)), direction, grad)
    param.addcmul_(grad, col(-lr, param))
    return live


def adagrad_update(param: Tensor, grad: Tensor, st: dict[str, Tensor], hp: Hyper, lr: Tensor, live: Tensor) -> Tensor:
    """Adagrad: lr / (1 + (t - 1) * lr_decay) over the root of the summed squared gradients."""
    st["step"].add_(1)
    grad = _decay(param, grad, hp, lr)
    clr = lr / (1 + (st["step"].double().to(lr.device) - 1) * hp["lr_decay"])
    st["sum"].addcmul_(grad, grad)
    std = st["sum"].sqrt().add_(col(hp["eps"], param))
    param.add_(grad / std * col(-clr, param))
    return _ones(live)


def rmsprop_update(param: Tensor, grad: Tensor, st: dict[str, Tensor], hp: Hyper, lr: Tensor, live: Tensor) -> Tensor:
    """RMSprop, optionally centred and with momentum (momentum 0 reduces to the plain step exactly)."""
    st["step"].add_(1)
    grad = _decay(param, grad, hp, lr)
    alpha, square_avg = hp["alpha"], st["square_avg"]
    square_avg.mul_(col(alpha, param)).add_(col(1 - alpha, param) * grad * grad)
    if hp.any("centered"):
        grad_avg = st["grad_avg"]
        grad_avg.lerp_(grad, col(1 - alpha, param))
        centred = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
        avg = torch.where(col(hp["centered"], param), centred, square_avg.sqrt())
    else:
        avg = square_avg.sqrt()
    avg = avg.add_(col(hp["eps"], param))
    if hp.any("momentum"):
        buf = st["momentum_buffer"]
        buf.mul_(col(hp["momentum"], param)).addcdiv_(grad, avg)
        param.add_(buf * col(-lr, param))
    else:
        param.add_(grad / avg * col(-lr, param))
    return _ones(live)


def _moments(grad: Tensor, st: dict[str, Tensor], hp: Hyper) -> tuple[Tensor, Tensor]:
    """The Adam family's first and second moment updates; returns (exp_avg, exp_avg_sq)."""
    beta1, beta2 = hp["beta1"], hp["beta2"]
    exp_avg, exp_avg_sq = st["exp_avg"], st["exp_avg_sq"]
    exp_avg.lerp_(grad, hp.column("1 - beta1", grad, lambda: 1 - beta1))
    exp_avg_sq.mul_(hp.column("beta2", grad, lambda: beta2)).add_(
        hp.column("1 - beta2", grad, lambda: 1 - beta2) * grad * grad
    )
    return exp_avg, exp_avg_sq


def _step(st: dict[str, Tensor], lr: Tensor) -> Tensor:
    """Counts the step; returns the new step per member as float64 (torch reads it as a Python float)."""
    st["step"].add_(1)
    return st["step"].double().to(lr.device)


def adam_update(param: Tensor, grad: Tensor, st: dict[str, Tensor], hp: Hyper, lr: Tensor, live: Tensor) -> Tensor:
    """Adam / AdamW: bias-corrected moments, optional AMSGrad maximum, coupled or decoupled decay."""
    step = _step(st, lr)
    grad = _decay(param, grad, hp, lr)
    exp_avg, exp_avg_sq = _moments(grad, st, hp)
    bias_correction1 = 1 - hp["beta1"] ** step
    bias_correction2_sqrt = (1 - hp["beta2"] ** step) ** 0.5
    second = exp_avg_sq
    if hp.any("amsgrad"):
        max_sq = st["max_exp_avg_sq"]
        torch.maximum(max_sq, exp_avg_sq, out=max_sq)
        second = torch.where(col(hp["amsgrad"], param), max_sq, exp_avg_sq)
    denom = (second.sqrt() / col(bias_correction2_sqrt, param)).add_(hp.column("eps", param, lambda: hp["eps"]))
    param.add_(exp_avg / denom * col(-(lr / bias_correction1), param))
    return _ones(live)


def nadam_update(param: Tensor, grad: Tensor, st: dict[str, Tensor], hp: Hyper, lr: Tensor, live: Tensor) -> Tensor:
    """NAdam: the momentum schedule mu_t = beta1 * (1 - 0.5 * 0.96 ** (t * psi)) and its running product."""
    step = _step(st, lr)
    beta1, psi = hp["beta1"], hp["momentum_decay"]
    bias_correction2 = 1 - hp["beta2"] ** step
    grad = _decay(param, grad, hp, lr)
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * psi))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * psi))
    mu_product = st["mu_product"]
    mu_product.mul_(mu.to(mu_product))
    exp_avg, exp_avg_sq = _moments(grad, st, hp)
    denom = exp_avg_sq.div(col(bias_correction2, param)).sqrt().add_(col(hp["eps"], param))
    product = mu_product.double().to(lr.device)
    param.add_(grad / denom * col(-lr * (1.0 - mu) / (1.0 - product), param))
    param.add_(exp_avg / denom * col(-lr * mu_next / (1.0 - product * mu_next), param))
    return _ones(live)


def radam_update(param: Tensor, grad: Tensor, st: dict[str, Tensor], hp: Hyper, lr: Tensor, live: Tensor) -> Tensor:
    """RAdam: the adaptive step only once the variance estimate is tractable (rho_t > 5), else SGD-like."""
    step = _step(st, lr)
    grad = _decay(param, grad, hp, lr)
    exp_avg, exp_avg_sq = _moments(grad, st, hp)
    beta2 = hp["beta2"]
    bias_correction2 = 1 - beta2**step
    corrected = exp_avg / col(1 - hp["beta1"] ** step, param)
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * beta2**step / bias_correction2
    rectified = rho_t > 5.0
    ratio = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
    rect = torch.where(rectified, ratio, torch.ones_like(ratio)).sqrt()
    adaptive = exp_avg_sq.sqrt().add_(col(hp["eps"], param)).reciprocal() * col(bias_correction2**0.5, param)
    update = corrected * col(lr, param)
    update = torch.where(col(rectified, param), update * adaptive * col(rect, param), update)
    param.sub_(update)
    return _ones(live)


def _adam_keys(group: Mapping[str, Any]) -> tuple[str, ...]:
    return (
        ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else ("step", "exp_avg", "exp_avg_sq")
    )


def _rmsprop_keys(group: Mapping[str, Any]) -> tuple[str, ...]:
    momentum = ("momentum_buffer",) if group["momentum"] > 0 else ()
    return ("step", "square_avg", *momentum, *(("grad_avg",) if group["centered"] else ()))


_ADAM = Rule(
    hypers=("weight_decay", "beta1", "beta2", "eps", "amsgrad", "decoupled_weight_decay"),
    tensors=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    scalars=("step",),
    member_keys=_adam_keys,
    update=adam_update,
    init={},
)

RULES: dict[str, Rule] = {
    "sgd": Rule(
        hypers=("weight_decay", "momentum", "dampening", "nesterov"),
        tensors=("momentum_buffer",),
        scalars=(),
        member_keys=lambda group: ("momentum_buffer",) if group["momentum"] != 0 else (),
        update=sgd_update,
        init={},
    ),
    "adagrad": Rule(
        hypers=("weight_decay", "lr_decay", "eps"),
        tensors=("sum",),
        scalars=("step",),
        member_keys=lambda group: ("step", "sum"),
        update=adagrad_update,
        init={"sum": "initial_accumulator_value"},
        eager=True,
    ),
    "rmsprop": Rule(
        hypers=("weight_decay", "alpha", "eps", "momentum", "centered"),
        tensors=("square_avg", "momentum_buffer", "grad_avg"),
        scalars=("step",),
        member_keys=_rmsprop_keys,
        update=rmsprop_update,
        init={},
    ),
    "adam": _ADAM,
    "adamw": _ADAM,
    "nadam": Rule(
        hypers=("weight_decay", "beta1", "beta2", "eps", "momentum_decay", "decoupled_weight_decay"),
        tensors=("exp_avg", "exp_avg_sq"),
        scalars=("step", "mu_product"),
        member_keys=lambda group: ("step", "mu_product", "exp_avg", "exp_avg_sq"),
        update=nadam_update,
        init={"mu_product": 1.0},
    ),
    "radam": Rule(
        hypers=("weight_decay", "beta1", "beta2", "eps", "decoupled_weight_decay"),
        tensors=("exp_avg", "exp_avg_sq"),
        scalars=("step",),
        member_keys=lambda group: ("step", "exp_avg", "exp_avg_sq"),
        update=radam_update,
        init={},
    ),
}

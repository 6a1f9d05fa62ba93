"""Built-in optimizers: thin wrappers over torch.optim so their options get a schema.

Every factory takes the model's parameters (``model.parameters()``) positionally and its
options as keywords. ``beta1``/``beta2`` are the two ``betas`` of the Adam family, split so
each can be searched on its own.

Weight decay and norm/bias parameters: with ``no_decay_norm_and_bias=True`` (the default for
``adamw`` only) and ``weight_decay > 0``, the parameters are split into two param groups: tensors
with two or more dimensions (linear and convolution weights, embeddings) get ``weight_decay``,
and 1-D (or 0-D) tensors get none. The factory only sees a parameter iterable, not the model,
so the rule is by shape: biases and the weights of normalisation layers (BatchNorm, LayerNorm,
GroupNorm) are exactly the 1-D parameters of the usual layers. With ``weight_decay == 0``, or
when ``params`` already holds param-group dicts or ``(name, tensor)`` pairs, the parameters
are passed to torch unchanged (one group, or the caller's groups).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import Bounds

if TYPE_CHECKING:  # the server reads these factories' schemas without importing torch; workers call them
    import torch


def param_groups(params: Iterable[Any], weight_decay: float, no_decay_norm_and_bias: bool) -> list[Any]:
    """The ``params`` argument for a torch optimizer, with 1-D tensors moved to a zero-decay group.

    Returns the parameters unchanged (as a list) when there is nothing to split: grouping is
    off, ``weight_decay`` is 0, or the items are not plain tensors. Otherwise returns up to two
    groups, the decayed one first (``weight_decay`` set per group; empty groups are dropped).
    """
    import torch

    items = list(params)
    if not no_decay_norm_and_bias or weight_decay == 0 or not all(isinstance(p, torch.Tensor) for p in items):
        return items
    decay = [p for p in items if p.dim() >= 2]
    no_decay = [p for p in items if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]] or items


def sgd(
    params: Iterable[Any],
    *,
    lr: float = 0.01,
    momentum: float = 0.0,
    nesterov: bool = False,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    no_decay_norm_and_bias: bool = False,
) -> torch.optim.Optimizer:
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    Args:
        lr: learning rate.
        momentum: momentum factor (0 disables momentum).
        nesterov: use Nesterov momentum (needs momentum > 0 and dampening 0).
        dampening: dampening of the momentum (the new gradient enters the buffer scaled by 1 - dampening).
        weight_decay: L2 penalty added to the gradient.
        no_decay_norm_and_bias: exclude 1-D parameters (biases, normalisation-layer weights) from weight decay.
    """
    import torch

    groups = param_groups(params, weight_decay, no_decay_norm_and_bias)
    return torch.optim.SGD(
        groups, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov
    )


def adagrad(
    params: Iterable[Any],
    *,
    lr: float = 0.01,
    lr_decay: float = 0.0,
    eps: float = 1e-10,
    weight_decay: float = 0.0,
    no_decay_norm_and_bias: bool = False,
) -> torch.optim.Optimizer:
    """Adagrad: per-parameter learning rates scaled by accumulated squared gradients.

    Args:
        lr: learning rate.
        lr_decay: learning-rate decay; step t uses lr / (1 + (t - 1) * lr_decay).
        eps: added to the root of the accumulated squares for numerical stability.
        weight_decay: L2 penalty added to the gradient.
        no_decay_norm_and_bias: exclude 1-D parameters (biases, normalisation-layer weights) from weight decay.
    """
    import torch

    groups = param_groups(params, weight_decay, no_decay_norm_and_bias)
    return torch.optim.Adagrad(groups, lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay)


def rmsprop(
    params: Iterable[Any],
    *,
    lr: float = 0.01,
    alpha: float = 0.99,
    momentum: float = 0.0,
    centered: bool = False,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    no_decay_norm_and_bias: bool = False,
) -> torch.optim.Optimizer:
    """RMSprop: gradients scaled by a moving average of their squares.

    Args:
        lr: learning rate.
        alpha: smoothing constant of the squared-gradient average.
        momentum: momentum factor.
        centered: normalise by the estimated variance (the squared average minus the squared mean gradient).
        eps: added to the denominator for numerical stability.
        weight_decay: L2 penalty added to the gradient.
        no_decay_norm_and_bias: exclude 1-D parameters (biases, normalisation-layer weights) from weight decay.
    """
    import torch

    groups = param_groups(params, weight_decay, no_decay_norm_and_bias)
    return torch.optim.RMSprop(
        groups, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered
    )


def adam(
    params: Iterable[Any],
    *,
    lr: float = 0.001,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    no_decay_norm_and_bias: bool = False,
) -> torch.optim.Optimizer:
    """Adam: adaptive moment estimation.

    Args:
        lr: learning rate.
        beta1: decay rate of the first-moment (mean) estimate.
        beta2: decay rate of the second-moment (uncentred variance) estimate.
        eps: added to the denominator for numerical stability.
        weight_decay: L2 penalty added to the gradient (for decoupled decay use adamw).
        amsgrad: use the AMSGrad variant (the maximum of past second moments).
        no_decay_norm_and_bias: exclude 1-D parameters (biases, normalisation-layer weights) from weight decay.
    """
    import torch

    groups = param_groups(params, weight_decay, no_decay_norm_and_bias)
    return torch.optim.Adam(groups, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


def adamw(
    params: Iterable[Any],
    *,
    lr: float = 0.001,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    amsgrad: bool = False,
    no_decay_norm_and_bias: bool = True,
) -> torch.optim.Optimizer:
    """AdamW: Adam with decoupled weight decay.

    Args:
        lr: learning rate.
        beta1: decay rate of the first-moment (mean) estimate.
        beta2: decay rate of the second-moment (uncentred variance) estimate.
        eps: added to the denominator for numerical stability.
        weight_decay: decoupled weight decay; each step multiplies the weights by 1 - lr * weight_decay.
        amsgrad: use the AMSGrad variant (the maximum of past second moments).
        no_decay_norm_and_bias: exclude 1-D parameters (biases, normalisation-layer weights) from weight decay.
    """
    import torch

    groups = param_groups(params, weight_decay, no_decay_norm_and_bias)
    return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


def nadam(
    params: Iterable[Any],
    *,
    lr: float = 0.002,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 0.004,
    decoupled_weight_decay: bool = False,
    no_decay_norm_and_bias: bool = False,
) -> torch.optim.Optimizer:
    """NAdam: Adam with Nesterov momentum.

    Args:
        lr: learning rate.
        beta1: decay rate of the first-moment (mean) estimate.
        beta2: decay rate of the second-moment (uncentred variance) estimate.
        eps: added to the denominator for numerical stability.
        weight_decay: weight decay (L2 penalty, or decoupled with decoupled_weight_decay).
        momentum_decay: momentum decay (psi) of the momentum schedule.
        decoupled_weight_decay: apply weight decay AdamW-style instead of adding it to the gradient.
        no_decay_norm_and_bias: exclude 1-D parameters (biases, normalisation-layer weights) from weight decay.
    """
    import torch

    groups = param_groups(params, weight_decay, no_decay_norm_and_bias)
    return torch.optim.NAdam(
        groups,
        lr=lr,
        betas=(beta1, beta2),
        eps=eps,
        weight_decay=weight_decay,
        momentum_decay=momentum_decay,
        decoupled_weight_decay=decoupled_weight_decay,
    )


def radam(
    params: Iterable[Any],
    *,
    lr: float = 0.001,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    no_decay_norm_and_bias: bool = False,
) -> torch.optim.Optimizer:
    """RAdam: Adam with a rectified (variance-corrected) adaptive learning rate.

    Args:
        lr: learning rate.
        beta1: decay rate of the first-moment (mean) estimate.
        beta2: decay rate of the second-moment (uncentred variance) estimate.
        eps: added to the denominator for numerical stability.
        weight_decay: weight decay (L2 penalty, or decoupled with decoupled_weight_decay).
        decoupled_weight_decay: apply weight decay AdamW-style instead of adding it to the gradient.
        no_decay_norm_and_bias: exclude 1-D parameters (biases, normalisation-layer weights) from weight decay.
    """
    import torch

    groups = param_groups(params, weight_decay, no_decay_norm_and_bias)
    return torch.optim.RAdam(
        groups,
        lr=lr,
        betas=(beta1, beta2),
        eps=eps,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
    )


@hookimpl
def tuneyard_register_optimizers(register: Any) -> None:
    # torch refuses a negative lr, weight decay or lr_decay and betas outside [0, 1); lr 0 stays allowed
    # (onecycle sets the lr itself). eps 0 divides 0 by 0 for a weight whose gradients are all 0 (NaN).
    # Momentum at 1 or above never forgets a gradient (steps grow without bound); dampening outside
    # [0, 1] turns the gradient's sign or weight around.
    lr, decay, eps, unit = Bounds(ge=0), Bounds(ge=0), Bounds(gt=0), Bounds(ge=0, lt=1)
    adam_family = {"lr": lr, "beta1": unit, "beta2": unit, "eps": eps, "weight_decay": decay}
    register("sgd", sgd, bounds={"lr": lr, "momentum": unit, "dampening": Bounds(ge=0, le=1), "weight_decay": decay})
    register("adagrad", adagrad, bounds={"lr": lr, "lr_decay": decay, "eps": eps, "weight_decay": decay})
    register(
        "rmsprop",
        rmsprop,
        bounds={"lr": lr, "alpha": Bounds(ge=0, le=1), "momentum": unit, "eps": eps, "weight_decay": decay},
    )
    register("adam", adam, bounds=adam_family)
    register("adamw", adamw, bounds=adam_family)
    register("nadam", nadam, bounds={**adam_family, "momentum_decay": Bounds(ge=0)})
    register("radam", radam, bounds=adam_family)

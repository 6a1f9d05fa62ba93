"""Built-in optimizers: thin wrappers over torch.optim so their options get a schema."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from tuneyard.plugins import hookimpl


def sgd(
    params: Iterable[Any],
    *,
    lr: float = 0.01,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    Args:
        lr: learning rate.
        momentum: momentum factor (0 disables momentum).
        weight_decay: L2 penalty added to the gradient.
        nesterov: use Nesterov momentum (needs momentum > 0).
    """
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def adagrad(params: Iterable[Any], *, lr: float = 0.01, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adagrad: per-parameter learning rates scaled by accumulated squared gradients.

    Args:
        lr: learning rate.
        weight_decay: L2 penalty added to the gradient.
    """
    return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)


def rmsprop(
    params: Iterable[Any],
    *,
    lr: float = 0.01,
    alpha: float = 0.99,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """RMSprop: gradients scaled by a moving average of their squares.

    Args:
        lr: learning rate.
        alpha: smoothing constant of the squared-gradient average.
        momentum: momentum factor.
        weight_decay: L2 penalty added to the gradient.
    """
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, momentum=momentum, weight_decay=weight_decay)


def adam(
    params: Iterable[Any],
    *,
    lr: float = 0.001,
    beta1: float = 0.9,
    beta2: float = 0.999,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """Adam: adaptive moment estimation.

    Args:
        lr: learning rate.
        beta1: decay rate of the first-moment (mean) estimate.
        beta2: decay rate of the second-moment (uncentred variance) estimate.
        weight_decay: L2 penalty added to the gradient.
    """
    return torch.optim.Adam(params, lr=lr, betas=(beta1, beta2), weight_decay=weight_decay)


@hookimpl
def tuneyard_register_optimizers(register: Any) -> None:
    for factory in (sgd, adagrad, rmsprop, adam):
        register(factory.__name__, factory)

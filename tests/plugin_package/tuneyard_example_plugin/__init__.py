"""tuneyard-example-plugin: adds the sign-SGD optimizer ("signum" with momentum) to tuneyard.

Installed next to a tuneyard server, it is found through the ``tuneyard`` entry-point group
(see this package's ``pyproject.toml``) and listed by ``tuneyard plugins optimizer``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from tuneyard.plugins import hookimpl


class SignSGD(torch.optim.Optimizer):
    """Sign-of-gradient descent (Bernstein et al., 2018, "signSGD").

    Each step moves every weight by ``lr`` against the sign of its (momentum-averaged) gradient:
    ``m = momentum * m + (1 - momentum) * grad``; ``p -= lr * sign(m)``. With ``momentum=0``
    this is plain signSGD; with momentum it is "signum".
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.01, momentum: float = 0.0) -> None:
        if not lr > 0.0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                direction = p.grad
                if momentum > 0.0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    buf = state["momentum_buffer"]
                    buf.mul_(momentum).add_(p.grad, alpha=1.0 - momentum)
                    direction = buf
                p.add_(torch.sign(direction), alpha=-lr)
        return loss


def signsgd(params: Iterable[Any], *, lr: float = 0.01, momentum: float = 0.0) -> SignSGD:
    """signSGD: steps of fixed size lr against the sign of the gradient.

    Args:
        lr: step size added to or taken from every weight per step; keep it small (1e-4 to 1e-2).
        momentum: averaging factor for the gradient before its sign is taken, in [0, 1); 0 is plain signSGD.
    """
    return SignSGD(params, lr=lr, momentum=momentum)


@hookimpl
def tuneyard_register_optimizers(register: Callable[..., None]) -> None:
    register("signsgd", signsgd)


def sign_descent(*, trial: Any, epochs: int, lr: float = 0.05, momentum: float = 0.0) -> dict[str, float]:
    """Least squares fitted with this package's SignSGD, one report per step: a trainable.

    Args:
        lr: SignSGD's step size.
        momentum: SignSGD's momentum.
    """
    generator = torch.Generator().manual_seed(trial.seed)
    inputs = torch.randn(128, 3, generator=generator)
    targets = inputs @ torch.tensor([0.5, -1.0, 2.0])
    weights = torch.zeros(3, requires_grad=True)
    optimizer = SignSGD([weights], lr=lr, momentum=momentum)
    for step in range(1, epochs + 1):
        loss = torch.mean((inputs @ weights - targets) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        trial.report(step, {"val_mse": float(loss.detach())})
    return {"val_mse": float(torch.mean((inputs @ weights.detach() - targets) ** 2))}


@hookimpl
def tuneyard_register_trainables(register: Callable[..., None]) -> None:
    register("sign_descent", sign_descent)

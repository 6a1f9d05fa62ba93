"""Trainables for the tests, loaded with `--plugins-dir tests/trainable_plugins` (one file, as a user
would write it): a quadratic bowl that reports a loss per step, a real torch regression loop that
checkpoints itself in `trial.checkpoint_dir`, and one that never reports the objective."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import Pruned, TrialContext


def bowl(
    *, trial: TrialContext, epochs: int, x: float = 0.0, step_sleep: float = 0.0, log: str = "", hang_after: int = 0
) -> None:
    """A quadratic bowl: `loss` falls towards (x - 3)**2 over the steps; the best x is 3.

    Args:
        x: where the trial sits in the bowl.
        step_sleep: seconds each step takes.
        log: a file (any path) where each step appends `trial_id step`, and `pruned` when Pruned.
        hang_after: after reporting this step, hang (never report again); 0: never hang.
    """
    for step in range(1, epochs + 1):
        time.sleep(step_sleep)
        if hang_after and step > hang_after:
            time.sleep(3600)
        try:
            trial.report(step, {"loss": (x - 3.0) ** 2 + 1.0 / step, "x": x})
        except Pruned:
            if log:
                with open(log, "a") as f:
                    f.write(f"{trial.trial_id} pruned\n")
            raise
        if log:
            with open(log, "a") as f:
                f.write(f"{trial.trial_id} {step}\n")


def regression(*, trial: TrialContext, epochs: int, lr: float = 0.05, step_sleep: float = 0.0) -> dict[str, float]:
    """A linear regression trained with SGD in torch, one step per report, checkpointed every step
    in `trial.checkpoint_dir`; a resumed run goes on from the last saved step (with its own `lr` after
    a PBT exploit). Each step it starts is appended to `steps.log` there, with the context's facts.

    Args:
        lr: the SGD learning rate.
        step_sleep: seconds to sleep in each step (to give a test time to interrupt it).
    """
    import torch

    generator = torch.Generator().manual_seed(trial.seed)
    features = torch.randn(256, 4, generator=generator)
    targets = features @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(256, generator=generator)
    model = torch.nn.Linear(4, 1).to(trial.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    saved = Path(trial.checkpoint_dir) / "state.pt"
    done = 0
    if trial.resumed and saved.exists():
        state = torch.load(saved, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        done = int(state["step"])
        if trial.explored_at == done:  # PBT: another trial's state, this trial's (explored) learning rate
            for group in optimizer.param_groups:
                group["lr"] = lr
    facts = {"device": trial.device, "threads": trial.threads, "resumed": trial.resumed, "study": trial.study_id}
    mse = 0.0
    for step in range(done + 1, epochs + 1):
        with open(Path(trial.checkpoint_dir) / "steps.log", "a") as f:
            f.write(json.dumps({"step": step, **facts}) + "\n")
        time.sleep(step_sleep)
        loss = torch.nn.functional.mse_loss(model(features).squeeze(1), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mse = float(loss.detach())
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, saved)
        trial.report(step, {"val_mse": mse})
    return {"val_mse": mse, "steps_run_here": float(epochs - done)}


def silent(*, trial: TrialContext, epochs: int) -> dict[str, Any] | None:
    """Reports `other` only, never the study's objective."""
    trial.report(1, {"other": 1.0})
    return None


@hookimpl
def tuneyard_register_trainables(register: Any) -> None:
    register("bowl", bowl)
    register("torch_regression", regression)
    register("silent", silent)

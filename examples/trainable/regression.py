"""Your own training loop as a tuneyard trial: an MLP regressor on scikit-learn's diabetes data.

This is a plugin file, as you would write one: load it with `--plugins-dir` and name it in a spec
(`trainable: {name: diabetes_mlp}`, see spec.yaml beside it):

    tuneyard run examples/trainable/spec.yaml --local --plugins-dir examples/trainable

The function below is the whole contract. Its keyword-only options (`lr`, `width`, ...) are what a
spec sets in `trainable.options` and searches as `trainable.<option>`; `trial` and `epochs` are
given by tuneyard. It trains on `trial.device`, reports once per step (here: one pass over the
training data), saves what a resumed run needs in `trial.checkpoint_dir`, and returns the final
metrics. It catches nothing: when the early stopper prunes the trial, `trial.report` raises
`Pruned` and the trial ends with the metrics it reported.

torch and scikit-learn are imported inside the function: the server reads its options at start-up
without importing them, and only the worker that runs a trial does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import Bounds, TrialContext

if TYPE_CHECKING:
    import torch

SPLIT_SEED = 0  # the same train/val split for every trial, so their val_mse compare


def diabetes(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train and val features and targets as float32 tensors on `device`: scikit-learn's 442
    patients (10 features), split 80/20, standardised with the training split's statistics."""
    import torch
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    features, targets = load_diabetes(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(features, targets, test_size=0.2, random_state=SPLIT_SEED)
    mean, std = x_train.mean(0), x_train.std(0)
    y_mean, y_std = y_train.mean(), y_train.std()
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    y_train, y_val = (y_train - y_mean) / y_std, (y_val - y_mean) / y_std

    def tensor(values: Any) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.float32, device=device)

    return tensor(x_train), tensor(y_train), tensor(x_val), tensor(y_val)


def train_one_pass(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    shuffle: torch.Generator,
) -> float:
    """One pass over the training data in shuffled mini-batches; the mean training MSE."""
    import torch

    model.train()
    order = torch.randperm(len(x), generator=shuffle).to(x.device)
    total = 0.0
    for batch in order.split(batch_size):
        loss = torch.nn.functional.mse_loss(model(x[batch]).squeeze(1), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(batch)
    return total / len(x)


def validate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The model's MSE and MAE on the validation split."""
    import torch

    model.eval()
    with torch.no_grad():
        error = model(x).squeeze(1) - y
    return {"val_mse": float(error.square().mean()), "val_mae": float(error.abs().mean())}


def save(path: Path, **state: Any) -> None:
    """torch.save through a temporary file: a run killed mid-save leaves the previous checkpoint whole."""
    import torch

    torch.save(state, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)


def diabetes_mlp(
    *,
    trial: TrialContext,
    epochs: int,
    lr: float = 1e-3,
    width: int = 64,
    weight_decay: float = 0.0,
    batch_size: int = 32,
) -> dict[str, float]:
    """An MLP (two hidden layers) regressing disease progression on the diabetes data, with AdamW.

    Args:
        lr: AdamW's learning rate.
        width: units in each hidden layer.
        weight_decay: AdamW's decoupled weight decay.
        batch_size: samples per optimizer step.
    """
    import torch

    x_train, y_train, x_val, y_val = diabetes(trial.device)
    model = torch.nn.Sequential(
        torch.nn.Linear(x_train.shape[1], width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 1),
    ).to(trial.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    shuffle = torch.Generator().manual_seed(trial.seed)

    # A trial run again (a retry after a crash, a server restart) goes on from its last saved step.
    checkpoint = Path(trial.checkpoint_dir) / "state.pt"
    done = 0
    metrics: dict[str, float] = {}
    if trial.resumed and checkpoint.exists():
        state = torch.load(checkpoint, map_location=trial.device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        shuffle.set_state(state["shuffle"])
        done, metrics = int(state["step"]), state["metrics"]

    for step in range(done + 1, epochs + 1):
        train_mse = train_one_pass(model, optimizer, x_train, y_train, batch_size, shuffle)
        metrics = {"train_mse": train_mse, **validate(model, x_val, y_val)}
        # Report first, then save: a run killed in between repeats this step and reports it again
        # (the study keeps the first report), so no step goes missing from the curve.
        trial.report(step, metrics)
        save(
            checkpoint,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            shuffle=shuffle.get_state(),
            step=step,
            metrics=metrics,
        )
    return metrics


@hookimpl
def tuneyard_register_trainables(register: Any) -> None:
    # Bounds let the server refuse a spec with, say, a negative lr before any trial runs.
    positive = {"lr": Bounds(gt=0), "width": Bounds(ge=1), "weight_decay": Bounds(ge=0), "batch_size": Bounds(ge=1)}
    register("diabetes_mlp", diabetes_mlp, bounds=positive)

"""The built-in LR schedulers, driven exactly as the trainer drives them: by the registry
entry's `interval` ("batch": `step()` after every optimizer step; "epoch": after every epoch)
and `monitor` (`step(metrics[monitor])`), never by name."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from tuneyard.plugins import hookimpl
from tuneyard.plugins.manager import PluginRegistry

NAMES = ["constant", "cosine", "linear_warmup_cosine", "multistep", "onecycle", "reduce_on_plateau", "step"]
EXPECTED = {
    "constant": ("epoch", ""),
    "step": ("epoch", ""),
    "multistep": ("epoch", ""),
    "cosine": ("epoch", ""),
    "onecycle": ("batch", ""),
    "linear_warmup_cosine": ("batch", ""),
    "reduce_on_plateau": ("epoch", "val_loss"),
}


@pytest.fixture(scope="module")
def reg() -> PluginRegistry:
    return PluginRegistry.load(entry_points=False)


def drive(
    reg: PluginRegistry,
    name: str,
    options: dict[str, Any],
    *,
    epochs: int,
    steps_per_epoch: int,
    lr: float = 1.0,
    val_losses: list[float] | None = None,
    optimizer_name: str = "sgd",
) -> tuple[list[list[float]], float]:
    """A trainer-shaped loop. Returns the lr used by each optimizer step, per epoch, and the lr after the run."""
    model = torch.nn.Linear(2, 1)
    optimizer = reg.create("optimizer", optimizer_name, {"lr": lr}, args=(model.parameters(),))
    entry = reg.get("lr_scheduler", name)
    scheduler = reg.create(
        "lr_scheduler", name, options, args=(optimizer,), epochs=epochs, steps_per_epoch=steps_per_epoch
    )

    def advance(metrics: dict[str, float]) -> None:
        if entry.monitor:
            scheduler.step(metrics[entry.monitor])
        else:
            scheduler.step()

    lrs: list[list[float]] = []
    for epoch in range(epochs):
        lrs.append([])
        for _ in range(steps_per_epoch):
            lrs[-1].append(optimizer.param_groups[0]["lr"])
            optimizer.zero_grad()
            model(torch.randn(4, 2)).pow(2).mean().backward()
            optimizer.step()
            if entry.interval == "batch":
                advance({})
        metrics = {"val_loss": val_losses[epoch] if val_losses else 1.0, "val_accuracy": 0.5}
        if entry.interval == "epoch":
            advance(metrics)
    return lrs, optimizer.param_groups[0]["lr"]


def per_epoch(lrs: list[list[float]]) -> list[float]:
    assert all(len(set(epoch)) == 1 for epoch in lrs), "an epoch-interval schedule changed within an epoch"
    return [epoch[0] for epoch in lrs]


def test_names_intervals_and_monitors(reg: PluginRegistry) -> None:
    assert reg.names("lr_scheduler") == NAMES
    assert {e.name: (e.interval, e.monitor) for e in reg.entries("lr_scheduler")} == EXPECTED
    assert not [e for e in reg.errors if "lr_scheduler" in e.message]
    for entry in reg.entries("lr_scheduler"):
        assert entry.description
        assert all(p.doc for p in entry.parameters), entry.name
        assert {"epochs", "steps_per_epoch"}.isdisjoint(p.name for p in entry.parameters)


def test_constant(reg: PluginRegistry) -> None:
    lrs, last = drive(reg, "constant", {}, epochs=3, steps_per_epoch=4, lr=0.3)
    assert per_epoch(lrs) == [0.3] * 3 and last == 0.3


def test_step(reg: PluginRegistry) -> None:
    lrs, last = drive(reg, "step", {"step_size": 2, "gamma": 0.5}, epochs=5, steps_per_epoch=3)
    assert per_epoch(lrs) == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25])
    assert last == pytest.approx(0.25)  # 5 epoch steps: 1.0 * 0.5 ** (5 // 2)
    with pytest.raises(ValueError):
        drive(reg, "step", {"step_size": 0}, epochs=2, steps_per_epoch=1)


def test_multistep(reg: PluginRegistry) -> None:
    lrs, _ = drive(reg, "multistep", {"milestones": [1, 3], "gamma": 0.1}, epochs=5, steps_per_epoch=2)
    assert per_epoch(lrs) == pytest.approx([1.0, 0.1, 0.1, 0.01, 0.01])
    # Struct numbers arrive as floats; unordered milestones are fine
    lrs, _ = drive(reg, "multistep", {"milestones": [3.0, 1.0], "gamma": 0.5}, epochs=4, steps_per_epoch=1)
    assert per_epoch(lrs) == pytest.approx([1.0, 0.5, 0.5, 0.25])
    # Default: drops at 1/2 and 3/4 of the epochs
    lrs, _ = drive(reg, "multistep", {}, epochs=8, steps_per_epoch=1)
    assert per_epoch(lrs) == pytest.approx([1.0] * 4 + [0.1] * 2 + [0.01] * 2)
    with pytest.raises(ValueError, match="milestones"):
        drive(reg, "multistep", {"milestones": [1.5]}, epochs=2, steps_per_epoch=1)


def test_cosine_reaches_min_lr_at_the_end(reg: PluginRegistry) -> None:
    lrs, last = drive(reg, "cosine", {"min_lr": 0.1}, epochs=4, steps_per_epoch=3)
    expected = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert per_epoch(lrs) == pytest.approx(expected)
    assert last == pytest.approx(0.1)


def test_onecycle_peaks_at_max_lr_around_pct_start(reg: PluginRegistry) -> None:
    options = {"max_lr": 2.0, "pct_start": 0.25}
    lrs, _ = drive(reg, "onecycle", options, epochs=4, steps_per_epoch=5, lr=0.1)
    flat = [lr for epoch in lrs for lr in epoch]
    assert len(flat) == 20  # stepped exactly total_steps times without OneCycleLR complaining
    peak = flat.index(max(flat))
    assert peak == 4 and max(flat) == pytest.approx(2.0)  # step 0.25 * 20 - 1
    assert flat[0] == pytest.approx(2.0 / 25)
    assert flat[: peak + 1] == sorted(flat[: peak + 1])
    assert flat[peak:] == sorted(flat[peak:], reverse=True)
    assert flat[-1] == pytest.approx(2.0 / 25 / 1e4)  # the last step trains at the final, lowest lr
    # Default peak: the optimizer's lr (so optimizer.lr stays the searched knob)
    lrs, _ = drive(reg, "onecycle", {}, epochs=2, steps_per_epoch=10, lr=0.3)
    assert max(lr for epoch in lrs for lr in epoch) == pytest.approx(0.3)
    # Momentum cycling is opt-in, and needs an optimizer with momentum or betas.
    _, _ = drive(reg, "onecycle", {"cycle_momentum": True}, epochs=1, steps_per_epoch=4, optimizer_name="adam")
    with pytest.raises(ValueError, match="momentum"):
        drive(reg, "onecycle", {"cycle_momentum": True}, epochs=1, steps_per_epoch=4, optimizer_name="adagrad")


def test_linear_warmup_then_cosine(reg: PluginRegistry) -> None:
    options = {"warmup_epochs": 1, "min_lr": 0.1}
    lrs, last = drive(reg, "linear_warmup_cosine", options, epochs=4, steps_per_epoch=5)
    flat = [lr for epoch in lrs for lr in epoch]
    assert flat[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # linear, within the first epoch
    decay = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (t - 5) / 15)) for t in range(5, 20)]
    assert flat[5:] == pytest.approx(decay)
    assert flat[5:] == sorted(flat[5:], reverse=True)
    assert last == pytest.approx(0.1)
    # Fractional warmup, and none at all
    lrs, _ = drive(reg, "linear_warmup_cosine", {"warmup_epochs": 0.5}, epochs=2, steps_per_epoch=4)
    assert lrs[0][:2] == pytest.approx([0.5, 1.0])
    lrs, last = drive(reg, "linear_warmup_cosine", {"warmup_epochs": 0}, epochs=2, steps_per_epoch=4)
    assert lrs[0][0] == 1.0 and last == pytest.approx(0.0, abs=1e-12)


def test_reduce_on_plateau_after_patience_epochs(reg: PluginRegistry) -> None:
    val_losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95]
    options = {"factor": 0.5, "patience": 2}
    lrs, last = drive(reg, "reduce_on_plateau", options, epochs=8, steps_per_epoch=2, val_losses=val_losses)
    # best at epoch 2; epochs 3-5 bring no improvement: the third bad epoch (> patience) halves the lr
    assert per_epoch(lrs) == pytest.approx([1.0] * 5 + [0.5] * 3)
    assert last == pytest.approx(0.25)
    improving = [1.0 - 0.1 * e for e in range(6)]
    lrs, last = drive(reg, "reduce_on_plateau", options, epochs=6, steps_per_epoch=1, val_losses=improving)
    assert last == 1.0


def test_schedules_apply_to_every_param_group(reg: PluginRegistry) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.LayerNorm(3))
    optimizer = reg.create("optimizer", "adamw", {"lr": 0.5}, args=(model.parameters(),))
    assert len(optimizer.param_groups) == 2
    scheduler = reg.create(
        "lr_scheduler",
        "linear_warmup_cosine",
        {"warmup_epochs": 1, "min_lr": 0.05},
        args=(optimizer,),
        epochs=2,
        steps_per_epoch=2,
    )
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.05])
    state = scheduler.state_dict()  # the warmup factor is a plain object, so it is saved too
    assert state["lr_lambdas"][0]["total_steps"] == 4


def test_registration_checks_interval_and_monitor() -> None:
    def sched(optimizer: Any, *, epochs: int, steps_per_epoch: int) -> Any:
        """A test schedule."""

    class Plugin:
        def __init__(self, **extra: Any) -> None:
            self.extra = extra

        @hookimpl
        def tuneyard_register_lr_schedulers(self, register: Any) -> None:
            register("custom", sched, **self.extra)

    for extra, problem in [
        ({"interval": "step"}, "interval must be one of 'batch', 'epoch'"),
        ({"interval": 1}, "interval must be one of"),
        ({"monitor": 3}, "monitor must be a metric name"),
        ({"monitor": None}, "monitor must be a metric name"),
    ]:
        reg = PluginRegistry.load(entry_points=False)
        reg.add_plugin(Plugin(**extra), name="bad", distribution="t", version="1")
        assert "custom" not in reg.names("lr_scheduler")
        assert any(problem in e.message and "custom" in e.message for e in reg.errors), (extra, reg.errors)
    reg = PluginRegistry.load(entry_points=False)
    assert reg.add_plugin(Plugin(interval="batch", monitor="val_accuracy"), name="good")
    entry = reg.get("lr_scheduler", "custom")
    assert (entry.interval, entry.monitor) == ("batch", "val_accuracy")
    assert reg.add_plugin(Plugin(), name="plain") is True  # duplicate name: error, first kept
    entry = reg.get("lr_scheduler", "custom")
    assert (entry.interval, entry.monitor) == ("batch", "val_accuracy")
    reg = PluginRegistry.load(entry_points=False)
    reg.add_plugin(Plugin(), name="plain")
    assert (reg.get("lr_scheduler", "custom").interval, reg.get("lr_scheduler", "custom").monitor) == ("epoch", "")

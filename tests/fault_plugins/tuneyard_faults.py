"""tuneyard-faults: a tiny model that misbehaves on request, for the recovery tests.

An installed distribution in all but name: this folder holds the module and its `.dist-info`
(entry point group `tuneyard`), so a server started with this folder on PYTHONPATH — and every
worker it spawns — finds the plugin the way it finds any third-party package.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import Decision, Infeasible

FAULTS = ("none", "crash", "exit", "segfault", "hang", "raise", "oom", "infeasible", "infeasible_later")


class FaultyModel(nn.Module):
    """A linear classifier that injects `fault` when epoch `at_epoch` starts."""

    def __init__(
        self,
        inputs: int,
        classes: int,
        fault: str,
        at_epoch: int,
        once_marker: str,
        epoch_sleep: float,
        batch_sleep: float,
        epoch_log: Path | None,
    ) -> None:
        super().__init__()
        self.head = nn.Linear(inputs, classes)
        self.fault, self.at_epoch, self.once_marker = fault, at_epoch, once_marker
        self.epoch_sleep, self.batch_sleep, self.epoch_log = epoch_sleep, batch_sleep, epoch_log

    def _armed(self) -> bool:
        """With `once_marker`, only the first run to reach the fault fires it (a retry then passes)."""
        if not self.once_marker:
            return True
        marker = Path(self.once_marker)
        if marker.exists():
            return False
        marker.write_text(str(os.getpid()))
        return True

    def on_epoch_start(self, epoch: int) -> None:
        if self.epoch_log is not None:
            with open(self.epoch_log, "a") as log:
                log.write(f"{epoch}\n")
        time.sleep(self.epoch_sleep)
        if epoch != self.at_epoch or self.fault == "none" or not self._armed():
            return
        for i in range(60):
            print(f"faulty model: stderr line {i} before the {self.fault}", file=sys.stderr)
        sys.stderr.flush()
        if self.fault == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.fault == "exit":
            os._exit(3)
        elif self.fault == "segfault":
            ctypes.string_at(0)
        elif self.fault == "hang":
            time.sleep(3600)
        elif self.fault == "raise":
            raise RuntimeError(f"fault injected at epoch {epoch}")
        elif self.fault == "infeasible_later":  # from now on the model cannot be built (e.g. for the test split)
            Path(self.once_marker).write_text(str(os.getpid()))
        elif self.fault == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.batch_sleep:
            time.sleep(self.batch_sleep)
        return self.head(x.flatten(1))


def faulty(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    fault: str = "none",
    at_epoch: int = 1,
    once_marker: str = "",
    epoch_sleep: float = 0.0,
    batch_sleep: float = 0.0,
    epoch_log: str = "",
    width: int = 1,
) -> nn.Module:
    """A linear model that crashes, exits, segfaults, hangs, raises or runs out of memory on request.

    Args:
        fault: none, crash (SIGKILL), exit (exit code 3), segfault, hang, raise, oom, infeasible, or
            infeasible_later (writes `once_marker` at `at_epoch`; a model built after that is infeasible).
        at_epoch: the epoch whose start fires the fault.
        once_marker: a file path; when given, the fault fires only if the file does not exist yet.
        epoch_sleep: seconds to sleep at the start of every epoch (slow trials for the tests).
        batch_sleep: seconds to sleep in every training forward pass.
        epoch_log: a folder; every epoch start appends its number to `width-<width>.log` there.
        width: a dummy searchable option (it names the epoch log); 0 is infeasible.
    """
    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {', '.join(FAULTS)}; got {fault!r}")
    if fault == "infeasible" or width == 0:
        raise Infeasible(f"width {width} cannot build this model")
    if fault == "infeasible_later" and Path(once_marker).exists():
        raise Infeasible("the model cannot be built any more")
    inputs = 1
    for dim in input_shape:
        inputs *= int(dim)
    log = Path(epoch_log) / f"width-{width}.log" if epoch_log else None
    return FaultyModel(inputs, num_classes, fault, at_epoch, once_marker, epoch_sleep, batch_sleep, log)


@hookimpl
def tuneyard_register_models(register: Callable[..., None]) -> None:
    register("faulty", faulty)


class StopAt:
    """Says STOP to trial `trial` at step `step`; with `once_marker`, only the first time ever (a
    server restarted after that verdict, replaying the reports, hears CONTINUE: only the journal
    remembers the STOP)."""

    def __init__(self, trial: int, step: int, once_marker: str, stall_marker: str, stall: float) -> None:
        self.trial, self.step, self.once_marker = trial, step, once_marker
        self.stall_marker, self.stall = stall_marker, stall

    def report(self, trial_id: int, step: int, value: float) -> Decision:
        if trial_id != self.trial or step < self.step:
            return Decision.CONTINUE
        if self.once_marker:
            marker = Path(self.once_marker)
            if marker.exists():
                return Decision.CONTINUE
            marker.write_text(f"{trial_id} {step}")
        return Decision.STOP

    def complete(self, trial_id: int, value: float | None) -> None:
        """With `stall_marker`, the first end of the pruned trial stalls the runner for `stall` seconds
        between the verdict being stored and the trial's end: the moment a crash test kills the server."""
        if trial_id == self.trial and self.stall_marker and not Path(self.stall_marker).exists():
            Path(self.stall_marker).write_text(str(os.getpid()))
            time.sleep(self.stall)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def stop_at(
    *,
    objective: Any,
    max_epochs: int,
    trial: int = 1,
    step: int = 1,
    once_marker: str = "",
    stall_marker: str = "",
    stall: float = 0.0,
) -> StopAt:
    """An early stopper that prunes one given trial at one given step (for the recovery tests).

    Args:
        trial: the trial to prune.
        step: the step (epoch) whose report is answered STOP.
        once_marker: a file path; when given, STOP is said only if the file does not exist yet.
        stall_marker: a file path; when given and missing, the pruned trial's end waits `stall` seconds.
        stall: seconds to wait (see stall_marker).
    """
    return StopAt(trial, step, once_marker, stall_marker, stall)


@hookimpl
def tuneyard_register_early_stoppers(register: Callable[..., None]) -> None:
    register("stop_at", stop_at)

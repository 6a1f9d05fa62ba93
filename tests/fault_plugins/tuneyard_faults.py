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

import torch
from torch import nn

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import Infeasible

FAULTS = ("none", "crash", "exit", "segfault", "hang", "raise", "oom", "infeasible")


class FaultyModel(nn.Module):
    """A linear classifier that injects `fault` when epoch `at_epoch` starts."""

    def __init__(self, inputs: int, classes: int, fault: str, at_epoch: int, once_marker: str,
                 epoch_sleep: float, batch_sleep: float, epoch_log: Path | None) -> None:  # fmt: skip
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
        fault: none, crash (SIGKILL), exit (exit code 3), segfault, hang, raise, oom, infeasible.
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
    inputs = 1
    for dim in input_shape:
        inputs *= int(dim)
    log = Path(epoch_log) / f"width-{width}.log" if epoch_log else None
    return FaultyModel(inputs, num_classes, fault, at_epoch, once_marker, epoch_sleep, batch_sleep, log)


@hookimpl
def tuneyard_register_models(register: Callable[..., None]) -> None:
    register("faulty", faulty)

"""tuneyard-spin: a model whose first training batch never ends and never lets go of the GIL.

It stands for a worker wedged in native code (a C extension that does not release the GIL): no
Python thread of that process can run again, so only the kernel can end it. Installed the same way
as tuneyard_faults (this folder on PYTHONPATH, entry point group `tuneyard`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tuneyard.plugins import hookimpl

# Nested repetition that cannot match: the regex engine backtracks through ~2**60 ways in C, holding
# the GIL the whole time (CPython's `re` never releases it), i.e. for longer than any test runs.
WEDGE_PATTERN = re.compile(r"(a+)+b")
WEDGE_TEXT = "a" * 60


class SpinningModel(nn.Module):
    """A linear classifier whose first training forward pass writes `pid_file` and then spins."""

    def __init__(self, inputs: int, classes: int, pid_file: str) -> None:
        super().__init__()
        self.head = nn.Linear(inputs, classes)
        self.pid_file = pid_file

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            if self.pid_file:
                Path(self.pid_file).write_text(str(os.getpid()))
            WEDGE_PATTERN.match(WEDGE_TEXT)
        return self.head(x.flatten(1))


def spinning(*, input_shape: tuple[int, ...], num_classes: int, pid_file: str = "") -> nn.Module:
    """A linear model that wedges its worker holding the GIL in its first training batch.

    Args:
        pid_file: a file path; the worker writes its pid there just before it starts to spin.
    """
    inputs = 1
    for dim in input_shape:
        inputs *= int(dim)
    return SpinningModel(inputs, num_classes, pid_file)


@hookimpl
def tuneyard_register_models(register: Callable[..., None]) -> None:
    register("spinning", spinning)

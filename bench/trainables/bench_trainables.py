"""The benchmark's trainables, loaded by ``bench/overhead.py`` with ``start_server(plugins_dir=...)``.

``trivial`` does what the peers' (Ray Tune's, Optuna's) trivial function trials do: compute one
number from the learning rate and report it once. It lets ``overhead.py`` measure tuneyard's
trainable path (``server/worker/trainable.py``) with next to no work of its own, beside the
built-in trainer's trivial trial, and like-for-like with the peers' function trainables. It imports
nothing heavy: the server process loads this file too, and it must stay free of torch.
"""

from __future__ import annotations

import math
from time import perf_counter
from typing import Any

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import Bounds, TrialContext


def trivial_value(lr: float) -> float:
    """The trivial trial's whole work: one number (``bench/overhead.py``'s ``trivial_value``, the peers')."""
    return (math.log10(lr) + 2.0) ** 2


def trivial(*, trial: TrialContext, lr: float = 0.01) -> dict[str, float]:
    """Reports one number once, and the time it took as ``epoch_seconds`` (the bench's own work).

    Args:
        lr: the searched learning rate; the score is a function of it.
    """
    entered = perf_counter()
    score = trivial_value(lr)
    metrics = {"score": score, "epoch_seconds": perf_counter() - entered}
    trial.report(1, metrics)
    return metrics


@hookimpl
def tuneyard_register_trainables(register: Any) -> None:
    register("bench_trivial", trivial, bounds={"lr": Bounds(gt=0)})

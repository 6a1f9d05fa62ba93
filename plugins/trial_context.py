"""What a trainable receives as its `trial` argument (`TrialContext`). Re-exported by
`tuneyard.plugins.api`, where plugin authors import it from."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class TrialContext(Protocol):
    """What a trainable receives as its `trial` argument: where it runs, and the one way it talks to
    the study.

    `report(step, metrics)` stores the step's metrics (an event, and a heartbeat: a step longer than
    the server's `--trial-heartbeat-timeout` needs a larger one), hands the objective's value to the
    early stopper, and raises `Pruned` when the trial must end: the stopper pruned it, the study was
    cancelled, or its `max_duration` passed. The stopper's verdict on a step reaches the trial while
    it works on the next one, so `report` raises at the first report after it. `step` counts from 1
    and is at most `training.epochs`; a run again (a retry, a server restart) may report a step it
    reported before, and the study keeps the first.

    `checkpoint_dir` is the trial's own folder: it persists across retries and server restarts, and
    a trial run again (`resumed`) finds there what it saved. With `early_stopping: pbt` a report of
    a step that is a multiple of the stopper's interval (but the last) first keeps a copy of the
    folder, and then raises `Pruned`: the trial waits for its turn and is judged, and runs again
    (`resumed`) from its own files or, after an exploit, with its explored options and the source
    trial's copy of step `explored_at` in its folder (save before you report; on resume set your
    optimizer from the options).
    """

    @property
    def device(self) -> str:
        """torch's name for the trial's device: "cpu", "cuda:0"."""
        ...

    @property
    def threads(self) -> int:
        """The CPU threads the trial may use (torch is set to them already)."""
        ...

    @property
    def seed(self) -> int:
        """`training.seed`, searched or fixed."""
        ...

    @property
    def study_id(self) -> str: ...

    @property
    def trial_id(self) -> int: ...

    @property
    def data_root(self) -> str:
        """The server's `--data-root` ("" when it has none)."""
        ...

    @property
    def checkpoint_dir(self) -> Path: ...

    @property
    def resumed(self) -> bool:
        """True when this trial ran before (a retry, or a server restart): look in checkpoint_dir."""
        ...

    @property
    def explored_at(self) -> int:
        """The step of the trial's last PBT exploit (0: none): resuming from that step, the state in
        checkpoint_dir is the source trial's, to go on with this trial's options."""
        ...

    def report(self, step: int, metrics: dict[str, float]) -> None: ...

"""The study's early stopper and how far each trial was reported to it, journaled together so a
resumed runner replays exactly the epochs stored after the journal entry.

A population stopper (`pbt`, `plugins.population`) records decision epochs instead of judging
them (`tell`), and is asked for its verdict apart (`verdict`): an `Exploit` (go on from another
trial's checkpoint with a changed config) or none. Its decisions hang on the other trials' steps,
so the runner journals its state with every decision epoch (`decides_at`) and every verdict, and a
restart replays none of them."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from tuneyard.plugins.api import Decision, Exploit, Objective, PopulationStopper
from tuneyard.server.storage.store import JsonState

log = logging.getLogger(__name__)


def plain_state(obj: Any, what: str) -> dict[str, Any] | None:
    """A plugin's state_dict as plain JSON data with its text; None (logged) when it is not serialisable."""
    if obj is None:
        return None
    try:
        state = obj.state_dict()
        return JsonState(state, json.dumps(state))  # the journal stores this text: one encoding
    except (TypeError, ValueError) as exc:
        log.warning("the %s's state_dict is not plain data (%s); it resumes from scratch", what, exc)
        return None


class StopperLedger:
    """The early stopper (or none) with the last epoch told to it per unfinished trial; for a
    population stopper, the study's last epoch (no exploit there) and the parameters it may change."""

    def __init__(self, stopper: Any, objective: Objective, last_epoch: int = 0, changeable: Sequence[str] = ()) -> None:
        self.stopper, self.objective = stopper, objective
        self.last_epoch, self.changeable = last_epoch, tuple(changeable)
        self.reported: dict[int, int] = {}

    @property
    def population(self) -> PopulationStopper | None:
        return self.stopper if isinstance(self.stopper, PopulationStopper) else None

    def decides_at(self, epoch: int) -> bool:
        """Whether a population stopper decides on this epoch (its state is journaled with the step)."""
        population = self.population
        return population is not None and 0 < epoch < self.last_epoch and epoch % population.checkpoint_interval == 0

    def tell(
        self, trial_id: int, epoch: int, metrics: dict[str, float], config: dict[str, Any] | None = None
    ) -> Decision:
        """Reports an epoch to the early stopper once: STOP or CONTINUE. A population stopper records
        its decision epochs (`config`: what the trial trains now, which it explores) and never says
        STOP; its verdict is asked apart (`verdict`)."""
        value = metrics.get(self.objective.metric)
        if self.stopper is None or value is None or epoch <= self.reported.get(trial_id, 0):
            return Decision.CONTINUE
        self.reported[trial_id] = epoch
        population = self.population
        if population is None:
            return Decision.STOP if self.stopper.report(trial_id, epoch, value) == Decision.STOP else Decision.CONTINUE
        if self.decides_at(epoch):
            changeable = {name: v for name, v in (config or {}).items() if name in self.changeable}
            population.record(trial_id, epoch, float(value), changeable)
        return Decision.CONTINUE

    def verdict(self, trial_id: int, epoch: int) -> Exploit | None:
        """A population stopper's verdict on a recorded decision epoch (none without one)."""
        population = self.population
        exploit = population.exploit(trial_id, epoch) if population is not None else None
        return None if exploit is None else Exploit(exploit.source_trial_id, exploit.source_step, dict(exploit.config))

    def complete(self, trial_id: int, value: float | None) -> None:
        self.reported.pop(trial_id, None)
        if self.stopper is not None:
            self.stopper.complete(trial_id, value)

    def state(self) -> dict[str, Any] | None:
        """What the journal stores: the stopper's state and how far each running trial was reported."""
        if self.stopper is None:
            return None
        return {"state": plain_state(self.stopper, "early stopper"), "reported": dict(self.reported)}

    def restore(self, journaled: dict[str, Any] | None) -> None:
        """Loads a journaled state: the stopper's own, and how far each running trial had been reported."""
        if self.stopper is None or not journaled or journaled.get("state") is None:
            return
        self.stopper.load_state_dict(journaled["state"])
        self.reported = {int(k): int(v) for k, v in journaled.get("reported", {}).items()}

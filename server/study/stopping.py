"""The study's early stopper and how far each trial was reported to it, journaled together so a
resumed runner replays exactly the epochs stored after the journal entry."""

from __future__ import annotations

import json
import logging
from typing import Any

from tuneyard.plugins.api import Decision, Objective
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
    """The early stopper (or none) with the last epoch told to it per unfinished trial."""

    def __init__(self, stopper: Any, objective: Objective) -> None:
        self.stopper, self.objective = stopper, objective
        self.reported: dict[int, int] = {}

    def tell(self, trial_id: int, epoch: int, metrics: dict[str, float]) -> bool:
        """Reports an epoch to the early stopper once; True when it says STOP."""
        value = metrics.get(self.objective.metric)
        if self.stopper is None or value is None or epoch <= self.reported.get(trial_id, 0):
            return False
        self.reported[trial_id] = epoch
        return bool(self.stopper.report(trial_id, epoch, value) == Decision.STOP)

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

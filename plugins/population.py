"""The contract of a population early stopper (PBT): an early stopper that, instead of stopping a
trial, may have it go on from a better trial's checkpoint with changed hyperparameters.

Re-exported by `tuneyard.plugins.api`. The runner calls `record` in place of `report` on an early
stopper that has it, with the trial's current values of the parameters the stopper may change (the
`space` it was built with: for the built-in trainer, the searched optimizer options, schedule
options and `training.label_smoothing`; for a trainable, its searched options), and asks `exploit`
for the verdict as late as it can: a trial at a decision step pauses while trials with less
progress wait to run (Ray Tune's PBT time-multiplexes the same way), and is judged when it is
next to run, against the population that has caught up. Every trial keeps the files of each step
that is a multiple of `checkpoint_interval`, so a verdict's `source_step` names files that exist;
the runner journals every record and verdict before acting on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Exploit:
    """Go on from trial `source_trial_id`'s checkpoint of step `source_step` with `config` (the
    values of the changeable parameters, every one of them; the others are the source's)."""

    source_trial_id: int
    source_step: int
    config: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class PopulationStopper(Protocol):
    @property
    def checkpoint_interval(self) -> int:
        """Every trial keeps its checkpoint of each step that is a multiple of this."""
        ...

    def record(self, trial_id: int, step: int, value: float, config: dict[str, Any]) -> None:
        """A trial's step that is a multiple of the interval (`value` its objective's value, `config`
        the values it trained that step with) joins that step's population."""
        ...

    def exploit(self, trial_id: int, step: int) -> Exploit | None:
        """The verdict on a recorded step: None to go on as it is, or an `Exploit` whose `source_step`
        is this `step`. Asked once the trials behind it have caught up (or none is waiting); asked
        again after a restart, it must give the same verdict."""
        ...

    def complete(self, trial_id: int, value: float | None) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

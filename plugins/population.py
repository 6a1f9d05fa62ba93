"""The contract of a population early stopper (PBT): an early stopper that, instead of stopping a
trial, may have it go on from a better trial's checkpoint with changed hyperparameters.

Re-exported by `tuneyard.plugins.api`. The runner calls `exploit` in place of `report` on an early
stopper that has it, with the trial's current values of the parameters the stopper may change (the
`space` it was built with: for the built-in trainer, the searched optimizer options, schedule
options and `training.label_smoothing`; for a trainable, its searched options). Every trial keeps
the files of each step that is a multiple of `checkpoint_interval`, so a verdict's `source_step`
names files that exist; the runner journals the verdict with the step before acting on it.
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

    def exploit(self, trial_id: int, step: int, value: float, config: dict[str, Any]) -> Exploit | None:
        """The verdict on a trial's step (`value` its objective's value, `config` the values it trained
        that step with): None to go on as it is, or an `Exploit` whose `source_step` is this `step`."""
        ...

    def complete(self, trial_id: int, value: float | None) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

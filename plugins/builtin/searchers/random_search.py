"""`random`: each active parameter sampled independently, seeded, never repeating a suggested config."""

from __future__ import annotations

import random as _random
from collections.abc import Sequence
from typing import Any

from tuneyard.plugins.api import Parameter
from tuneyard.plugins.builtin.searchers import space as _space
from tuneyard.plugins.builtin.searchers.space import Config


class RandomSearcher:
    """Samples each active parameter independently; never repeats a config it has suggested."""

    def __init__(self, space: Sequence[Parameter], seed: int, max_retries: int = 100) -> None:
        self.space = _space.check_space(space)
        self.max_retries = max(0, max_retries)
        self._rng = _random.Random(seed)
        self._seen = _space.Seen(self.space)

    def _draw(self) -> Config:
        return _space.build(self.space, lambda i, p, c: _space.sample(p.domain, self._rng))

    def suggest(self, trial_id: int) -> Config | None:
        return self._seen.suggest_new(self._draw, self.max_retries + 1, self._rng.choice)

    def observe(self, trial_id: int, state: str, value: float | None) -> None:
        """Random search ignores results."""

    def suggest_initial(self, trial_id: int, partial: Config) -> Config | None:
        """`partial` with the other active parameters drawn; None when that config was suggested."""
        config = _space.fill(self.space, partial, self._rng)
        return None if config in self._seen else self._seen.add(config)

    def observe_prior(self, config: Config, state: str, value: float | None, constraints: Sequence[float]) -> None:
        """An earlier study's trial: its config is not suggested again."""
        self._seen.add(dict(config))

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self._rng.getstate()
        return {"rng": [version, list(internal), gauss], "seen": list(self._seen.keys)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
        self._seen.load(state["seen"])

"""`sobol`: points of a (scrambled) Sobol sequence mapped onto the space, skipping repeats.

torch.quasirandom draws the points; torch is imported when a Sobol searcher is made, not before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tuneyard.plugins.api import Parameter
from tuneyard.plugins.builtin.searchers import space as _space
from tuneyard.plugins.builtin.searchers.space import Config


class SobolSearcher:
    """Quasi-random points of a (scrambled) Sobol sequence mapped onto the space.

    One coordinate per distinct parameter name; alternatives share their name's coordinate and
    map it onto the active alternative's domain; an inactive parameter's coordinate is unused.
    Points that map onto a config suggested before (discrete spaces) are skipped.
    """

    def __init__(self, space: Sequence[Parameter], seed: int, scramble: bool, max_retries: int = 1000) -> None:
        self.space = _space.check_space(space)
        self.seed, self.scramble, self.max_retries = seed, scramble, max(0, max_retries)
        self._slot = {name: i for i, name in enumerate(_space.names(self.space))}
        self._draws = 0
        self._seen = _space.Seen(self.space)
        self._engine = self._new_engine()

    def _new_engine(self) -> Any:
        from torch.quasirandom import SobolEngine  # torch comes with the server extra

        return SobolEngine(max(1, len(self._slot)), scramble=self.scramble, seed=self.seed)

    def _draw(self) -> Config:
        import torch

        point = self._engine.draw(1, dtype=torch.float64)[0].tolist()
        self._draws += 1
        return _space.build(self.space, lambda i, p, c: _space.from_unit(p.domain, point[self._slot[p.name]]))

    def suggest(self, trial_id: int) -> Config | None:
        return self._seen.suggest_new(self._draw, self.max_retries + 1, lambda left: left[0])

    def observe(self, trial_id: int, state: str, value: float | None) -> None:
        """Sobol points ignore results."""

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self._draws, "seen": list(self._seen.keys)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._engine = self._new_engine()
        self._draws = int(state["draws"])
        if self._draws:
            self._engine.fast_forward(self._draws)
        self._seen.load(state["seen"])

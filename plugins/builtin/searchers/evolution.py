"""Regularized (aging) evolution, Real et al. 2019 (a private module of the built-in searchers).

Suggest: random configs until `population_size` have been suggested (or while no result has
arrived); after that, draw `sample_size` observed members at random, take the best as parent,
and mutate it. Observe: a COMPLETED or PRUNED result joins the population, and the oldest member
leaves once it holds more than `population_size`. Failed and cancelled trials leave no member.

Initial configs are filled at random; an earlier study's trials (a warm start) join the population
as results do (a feasible one with a value), and are not suggested again.

Mutation respects conditions: the child is rebuilt in space order, keeping the parent's values,
mutating the chosen ones, sampling parameters that became active (a new alternative included)
and dropping those that became inactive.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from tuneyard.plugins.api import Choice, IntRange, Objective, Parameter
from tuneyard.plugins.builtin.searchers import space as _space
from tuneyard.plugins.builtin.searchers.space import Config


class EvolutionSearcher:
    def __init__(
        self,
        space: Sequence[Parameter],
        objective: Objective,
        seed: int,
        *,
        population_size: int = 20,
        sample_size: int = 5,
        mutation_rate: float | None = None,
        mutation_scale: float = 0.15,
        max_retries: int = 50,
    ) -> None:
        if population_size < 1:
            raise ValueError(f"population_size must be >= 1, got {population_size}")
        if sample_size < 1:
            raise ValueError(f"sample_size must be >= 1, got {sample_size}")
        if mutation_rate is not None and not 0.0 <= mutation_rate <= 1.0:
            raise ValueError(f"mutation_rate must be in [0, 1], got {mutation_rate}")
        if not mutation_scale > 0:
            raise ValueError(f"mutation_scale must be > 0, got {mutation_scale}")
        self.space = _space.check_space(space)
        self.objective = objective
        self.population_size, self.sample_size = population_size, sample_size
        self.mutation_rate, self.mutation_scale = mutation_rate, mutation_scale
        self.max_retries = max(1, max_retries)
        self._rng = random.Random(seed)
        self._population: list[tuple[Config, float]] = []  # oldest first
        self._pending: dict[int, Config] = {}
        self._random_count = 0
        self._seen = _space.Seen(self.space)

    # ---- protocol ----

    def suggest(self, trial_id: int) -> Config | None:
        if self._seen.exhausted:
            return None
        config = None
        if self._random_count < self.population_size or not self._population:
            config = self._random_config()
            self._random_count += config is not None
        else:
            for _ in range(self.max_retries):
                child = self._mutate(self._tournament())
                if child not in self._seen:
                    config = child
                    break
            else:
                config = self._random_config()
        if config is None:
            return None
        self._pending[trial_id] = self._seen.add(config)
        return dict(config)

    def observe(self, trial_id: int, state: str, value: float | None) -> None:
        config = self._pending.pop(trial_id, None)
        if config is not None:
            self._join(config, state, value)

    def _join(self, config: Config, state: str, value: float | None) -> None:
        """A result joins the population (a finite COMPLETED or PRUNED one)."""
        if state not in ("COMPLETED", "PRUNED") or value is None or not math.isfinite(value):
            return
        self._population.append((config, float(value)))
        if len(self._population) > self.population_size:
            self._population.pop(0)  # aging: the oldest member leaves, however good

    def suggest_initial(self, trial_id: int, partial: Config) -> Config | None:
        """`partial` with the other active parameters drawn; None when that config was suggested."""
        config = _space.fill(self.space, partial, self._rng)
        if config in self._seen:
            return None
        self._pending[trial_id] = self._seen.add(config)
        return dict(config)

    def observe_prior(self, config: Config, state: str, value: float | None, constraints: Sequence[float]) -> None:
        """An earlier study's trial: never suggested again, and a member while feasible with a result."""
        self._seen.add(dict(config))
        if not any(c > 0 for c in constraints):
            self._join(dict(config), state, value)

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self._rng.getstate()
        return {
            "rng": [version, list(internal), gauss],
            "population": [[c, v] for c, v in self._population],
            "pending": [[tid, c] for tid, c in self._pending.items()],
            "random_count": self._random_count,
            "seen": list(self._seen.keys),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
        self._population = [(dict(c), float(v)) for c, v in state["population"]]
        self._pending = {int(tid): dict(c) for tid, c in state["pending"]}
        self._random_count = int(state["random_count"])
        self._seen.load(state["seen"])

    # ---- algorithm ----

    def _random_config(self) -> Config | None:
        for _ in range(self.max_retries):
            config = _space.build(self.space, lambda i, p, c: _space.sample(p.domain, self._rng))
            if config not in self._seen:
                return config
        left = self._seen.left()
        return left[self._rng.randrange(len(left))] if left else None

    def _tournament(self) -> Config:
        k = min(self.sample_size, len(self._population))
        picked = [self._population[i] for i in self._rng.sample(range(len(self._population)), k)]
        best = picked[0]
        for member in picked[1:]:
            if self.objective.better(member[1], best[1]):
                best = member
        return best[0]

    def _mutate(self, parent: Config) -> Config:
        active = _space.active_indices(self.space, parent)
        if not active:
            return dict(parent)
        if self.mutation_rate is None:
            chosen = {self._rng.choice(active)}
        else:
            chosen = {i for i in active if self._rng.random() < self.mutation_rate} or {self._rng.choice(active)}
        was_active = set(active)

        def pick(i: int, param: Parameter, config: Config) -> Any:
            if i not in was_active:  # newly active (or another alternative): sample afresh
                return _space.sample(param.domain, self._rng)
            value = parent[param.name]
            return self._mutate_value(param.domain, value) if i in chosen else value

        return _space.build(self.space, pick)

    def _mutate_value(self, d: Any, value: Any) -> Any:
        rng = self._rng
        if isinstance(d, Choice):
            others = [v for v in d.values if v != value]
            return rng.choice(others) if others else value
        if d.low == d.high or (isinstance(d, IntRange) and _space.int_count(d) == 1):
            return value
        u = _space.to_unit(d, value)
        step = rng.gauss(0.0, self.mutation_scale)
        moved = u + step
        while not 0.0 <= moved <= 1.0:  # reflect at the bounds
            moved = -moved if moved < 0.0 else 2.0 - moved
        new = _space.from_unit(d, moved)
        if isinstance(d, IntRange) and new == value:  # an int always moves by at least one step
            index, count = (value - d.low) // d.step, _space.int_count(d)
            index += 1 if (step > 0 and index < count - 1) or index == 0 else -1
            new = int(d.low + d.step * index)
        return new

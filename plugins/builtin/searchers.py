"""Built-in searchers: seeded random search and grid search over a conditional space.

Parameters are visited in space order; a parameter whose condition is not met by the values
chosen so far is left out of the config (not sampled, not enumerated). Both searchers keep
their whole state in a JSON-friendly `state_dict`, so a restored study continues exactly.
"""

from __future__ import annotations

import itertools
import json
import math
import random as _random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import Choice, FloatRange, IntRange, Objective, Parameter

# Spaces with more discrete configs than this are not enumerated by the random searcher.
_ENUMERATION_LIMIT = 100_000


def _check_space(space: Sequence[Parameter]) -> tuple[Parameter, ...]:
    for p in space:
        d = p.domain
        if isinstance(d, (IntRange, FloatRange)):
            if d.low > d.high:
                raise ValueError(f"{p.name}: low ({d.low}) > high ({d.high})")
            if d.log and d.low <= 0:
                raise ValueError(f"{p.name}: a log range needs low > 0")
        if isinstance(d, IntRange) and d.step < 1:
            raise ValueError(f"{p.name}: step must be >= 1")
        if isinstance(d, Choice) and not d.values:
            raise ValueError(f"{p.name}: a choice needs at least one value")
    return tuple(space)


def _int_grid(d: IntRange) -> list[int]:
    return list(range(int(d.low), int(d.high) + 1, int(d.step)))


def _enumerate(space: Sequence[Parameter], values: Callable[[Parameter], list[Any]]) -> Iterator[dict[str, Any]]:
    """Every config of the space in a fixed order (first parameter slowest), conditions honoured."""
    config: dict[str, Any] = {}

    def walk(i: int) -> Iterator[dict[str, Any]]:
        if i == len(space):
            yield dict(config)
            return
        param = space[i]
        if not param.is_active(config):
            yield from walk(i + 1)
            return
        for value in values(param):
            config[param.name] = value
            yield from walk(i + 1)
        del config[param.name]

    return walk(0)


def _key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=repr)


class RandomSearcher:
    """Samples each active parameter independently; never repeats a config it has suggested."""

    def __init__(self, space: Sequence[Parameter], seed: int, max_retries: int = 100) -> None:
        self.space = _check_space(space)
        self.max_retries = max(0, max_retries)
        self._rng = _random.Random(seed)
        self._seen: list[str] = []
        self._seen_set: set[str] = set()
        self._all: dict[str, dict[str, Any]] | None = self._finite_configs()

    def _finite_configs(self) -> dict[str, dict[str, Any]] | None:
        if not all(isinstance(p.domain, (IntRange, Choice)) for p in self.space):
            return None
        sizes = [len(_values_all(p)) for p in self.space]
        if math.prod(sizes) > _ENUMERATION_LIMIT:
            return None
        return {_key(c): c for c in _enumerate(self.space, _values_all)}

    def _sample(self, param: Parameter) -> Any:
        d, rng = param.domain, self._rng
        if isinstance(d, Choice):
            return d.values[rng.randrange(len(d.values))]
        if isinstance(d, IntRange):
            count = (d.high - d.low) // d.step + 1
            if not d.log:
                return int(d.low + d.step * rng.randrange(count))
            value = math.exp(rng.uniform(math.log(d.low - 0.5), math.log(d.high + 0.5)))
            index = min(count - 1, max(0, round((value - d.low) / d.step)))
            return int(d.low + d.step * index)
        if d.low == d.high:
            return float(d.low)
        if d.log:
            return math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
        return rng.uniform(d.low, d.high)

    def _draw(self) -> dict[str, Any]:
        config: dict[str, Any] = {}
        for param in self.space:
            if param.is_active(config):
                config[param.name] = self._sample(param)
        return config

    def suggest(self, trial_id: int) -> dict[str, Any] | None:
        if self._all is not None and len(self._seen_set) >= len(self._all):
            return None
        for _ in range(self.max_retries + 1):
            config = self._draw()
            if _key(config) not in self._seen_set:
                return self._remember(config)
        if self._all is not None:  # nearly exhausted: pick one of the configs left
            left = [k for k in self._all if k not in self._seen_set]
            return self._remember(dict(self._all[left[self._rng.randrange(len(left))]]))
        return None

    def _remember(self, config: dict[str, Any]) -> dict[str, Any]:
        key = _key(config)
        self._seen.append(key)
        self._seen_set.add(key)
        return config

    def observe(self, trial_id: int, state: str, value: float | None) -> None:
        """Random search ignores results."""

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self._rng.getstate()
        return {"rng": [version, list(internal), gauss], "seen": list(self._seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
        self._seen = list(state["seen"])
        self._seen_set = set(self._seen)


def _values_all(param: Parameter) -> list[Any]:
    d = param.domain
    if isinstance(d, Choice):
        return list(d.values)
    if isinstance(d, IntRange):
        return _int_grid(d)
    raise ValueError(f"{param.name}: a float range is not finite")


def _grid_values(param: Parameter, num_points: int) -> list[Any]:
    d = param.domain
    if isinstance(d, Choice):
        return list(dict.fromkeys(d.values))
    if isinstance(d, IntRange):
        grid = _int_grid(d)
        if len(grid) <= num_points:
            return grid
        if d.log:
            targets = [d.low * (d.high / d.low) ** (i / max(1, num_points - 1)) for i in range(num_points)]
            picked = [grid[min(len(grid) - 1, round((t - d.low) / d.step))] for t in targets]
        else:
            picked = [grid[round(i * (len(grid) - 1) / max(1, num_points - 1))] for i in range(num_points)]
        if num_points == 1:
            picked = [grid[len(grid) // 2]]
        return list(dict.fromkeys(picked))
    low, high = float(d.low), float(d.high)
    if low == high:
        return [low]
    if num_points == 1:
        return [math.sqrt(low * high) if d.log else (low + high) / 2]
    if d.log:
        points = [low * (high / low) ** (i / (num_points - 1)) for i in range(num_points)]
    else:
        points = [low + (high - low) * i / (num_points - 1) for i in range(num_points)]
    points[0], points[-1] = low, high
    return points


class GridSearcher:
    """Walks the cartesian product of the space in a fixed order; None once it is exhausted.

    Choices are enumerated as given. A float range becomes ``num_points`` evenly spaced values
    (geometrically spaced when log), both ends included. An int range gives every ``step``
    value, or, when that is more than ``num_points``, ``num_points`` of them evenly spaced
    (geometrically when log) including both ends.
    """

    def __init__(self, space: Sequence[Parameter], num_points: int = 5) -> None:
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.space = _check_space(space)
        self.num_points = num_points
        self._position = 0
        self._iter: Iterator[dict[str, Any]] | None = None

    def suggest(self, trial_id: int) -> dict[str, Any] | None:
        if self._iter is None:
            configs = _enumerate(self.space, lambda p: _grid_values(p, self.num_points))
            self._iter = itertools.islice(configs, self._position, None)
        config = next(self._iter, None)
        if config is not None:
            self._position += 1
        return config

    def observe(self, trial_id: int, state: str, value: float | None) -> None:
        """Grid search ignores results."""

    def state_dict(self) -> dict[str, Any]:
        return {"position": self._position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._position = int(state["position"])
        self._iter = None


def random(*, space: Sequence[Parameter], objective: Objective, seed: int, max_retries: int = 100) -> RandomSearcher:
    """Random search: every active parameter sampled independently, seeded, without repeats.

    Int ranges honour step and log, float ranges log. When all parameters are discrete the
    searcher returns None once every config has been suggested; otherwise it returns None
    after max_retries draws that all repeat an earlier config.

    Args:
        max_retries: draws tried before giving up on finding a config not suggested yet.
    """
    return RandomSearcher(space, seed, max_retries)


def grid(*, space: Sequence[Parameter], objective: Objective, seed: int, num_points: int = 5) -> GridSearcher:
    """Grid search over the cartesian product of the space, in a fixed order.

    Args:
        num_points: values per float range, and at most this many per int range.
    """
    return GridSearcher(space, num_points)


@hookimpl
def tuneyard_register_searchers(register: Any) -> None:
    register("random", random)
    register("grid", grid)

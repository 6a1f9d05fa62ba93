"""`grid`: the cartesian product of the space walked in a fixed order, each range cut into points."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

from tuneyard.plugins.api import Choice, FloatRange, IntRange, Parameter
from tuneyard.plugins.builtin.searchers import space as _space
from tuneyard.plugins.builtin.searchers.space import Config

_NOTHING = object()  # equal to no grid value


def _grid_values(param: Parameter, num_points: int) -> Iterator[Any]:
    """One parameter's grid values in order, each once; generated, so neither a long int range nor a
    large ``num_points`` is ever held as a list."""
    d = param.domain
    if isinstance(d, Choice):
        return iter(dict.fromkeys(d.values))
    points = _int_points(d, num_points) if isinstance(d, IntRange) else _float_points(d, num_points)
    return _without_repeats(points)


def _int_points(d: IntRange, num_points: int) -> Iterator[int]:
    """Every value, or `num_points` of them evenly spaced (geometrically when log), picked by index."""
    grid = _space.int_values(d)  # a range: indexed, never listed
    if len(grid) <= num_points:
        yield from grid
    elif num_points == 1:
        yield grid[len(grid) // 2]
    elif d.log:
        for i in range(num_points):
            target = d.low * (d.high / d.low) ** (i / (num_points - 1))
            yield grid[min(len(grid) - 1, round((target - d.low) / d.step))]
    else:
        for i in range(num_points):
            yield grid[round(i * (len(grid) - 1) / (num_points - 1))]


def _float_points(d: FloatRange, num_points: int) -> Iterator[float]:
    """`num_points` evenly spaced values (geometrically when log), both ends exact."""
    low, high = float(d.low), float(d.high)
    if low == high:
        yield low
    elif num_points == 1:
        yield math.sqrt(low * high) if d.log else (low + high) / 2
    else:
        yield low
        for i in range(1, num_points - 1):
            yield low * (high / low) ** (i / (num_points - 1)) if d.log else low + (high - low) * i / (num_points - 1)
        yield high


def _without_repeats(points: Iterator[Any]) -> Iterator[Any]:
    """Drops a value equal to the one before: the points are monotone, so this drops every repeat."""
    previous: Any = _NOTHING
    for point in points:
        if point != previous:
            yield point
        previous = point


class GridSearcher:
    """Walks the cartesian product of the space in a fixed order; None once it is exhausted.

    Choices are enumerated as given. A float range becomes ``num_points`` evenly spaced values
    (geometrically spaced when log), both ends included. An int range gives every ``step``
    value, or, when that is more than ``num_points``, ``num_points`` of them evenly spaced
    (geometrically when log) including both ends, picked by index so a range of any length costs
    nothing. Distinct paths through the conditions differ in an active value, so no config repeats.
    """

    def __init__(self, space: Sequence[Parameter], num_points: int = 5) -> None:
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.space = _space.check_space(space)
        self.num_points = num_points
        self._position = 0
        self._iter: Iterator[Config] | None = None

    def suggest(self, trial_id: int) -> Config | None:
        if self._iter is None:
            configs = _space.enumerate_configs(self.space, lambda p: _grid_values(p, self.num_points))
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

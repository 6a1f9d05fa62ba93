"""Search-space helpers shared by the built-in searchers (a private module, not a plugin).

A config is built by walking the space in order: a parameter whose condition is not met by the
values chosen so far is left out. A name may repeat as alternatives under disjoint conditions on
one parent (each optimizer its own `optimizer.lr` range); at most one alternative is active, and
the config is keyed by name. Continuous searchers work in the unit cube: `from_unit` maps a
coordinate in [0, 1] onto a domain (log-scaled where the range is log), `to_unit` maps back.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from tuneyard.plugins.api import Choice, FloatRange, IntRange, Parameter

Config = dict[str, Any]

# The most configs a space may hold to be enumerated, and the most values a parameter's list may hold.
# Sizes are counted, never listed: a discrete space past this is searched as an infinite one (no
# exhaustion, no "configs left"), as a continuous space is, so a spec's int_range costs no memory.
ENUMERATION_LIMIT = 100_000


def check_space(space: Sequence[Parameter]) -> tuple[Parameter, ...]:
    """Validate domains and repeated names; ValueError names the parameter."""
    seen: dict[str, list[Parameter]] = {}
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
        for other in seen.get(p.name, []):
            a, b = p.condition, other.condition
            if a is None or b is None or a.parent != b.parent or set(a.values) & set(b.values):
                raise ValueError(f"{p.name}: a repeated name needs disjoint conditions on one parent")
        seen.setdefault(p.name, []).append(p)
    return tuple(space)


def key(config: Config) -> str:
    """A canonical string for a config, to detect repeats."""
    return json.dumps(config, sort_keys=True, default=repr)


def names(space: Sequence[Parameter]) -> list[str]:
    """Distinct parameter names in space order: one slot (unit-cube coordinate) per name."""
    return list(dict.fromkeys(p.name for p in space))


def build(space: Sequence[Parameter], pick: Callable[[int, Parameter, Config], Any]) -> Config:
    """Walk the space in order; `pick(index, param, config_so_far)` gives each active parameter's value."""
    config: Config = {}
    for i, param in enumerate(space):
        if param.name not in config and param.is_active(config):
            config[param.name] = pick(i, param, config)
    return config


def fill(space: Sequence[Parameter], partial: Config, rng: random.Random) -> Config:
    """A config with `partial`'s values (an initial config) and the other active parameters drawn."""
    return build(space, lambda i, p, c: partial[p.name] if p.name in partial else sample(p.domain, rng))


def active_indices(space: Sequence[Parameter], config: Config) -> list[int]:
    """Indices of the parameters (alternatives included) that produced `config`'s values."""
    out: list[int] = []
    partial: Config = {}
    for i, param in enumerate(space):
        if param.name in config and param.name not in partial and param.is_active(partial):
            partial[param.name] = config[param.name]
            out.append(i)
    return out


def int_count(d: IntRange) -> int:
    """How many values the range holds (low, low + step, ... up to high), counted."""
    return (int(d.high) - int(d.low)) // int(d.step) + 1


def int_values(d: IntRange) -> range:
    """The range's values as a lazy sequence: indexing and len cost nothing, however long it is."""
    return range(int(d.low), int(d.high) + 1, int(d.step))


def snap(d: IntRange, value: float) -> int:
    """The range's value nearest to `value` (a sampler's float, or an int off the step grid)."""
    index = min(int_count(d) - 1, max(0, round((value - d.low) / d.step)))
    return int(d.low + d.step * index)


def domain_size(d: IntRange | FloatRange | Choice) -> int | None:
    """How many distinct values the domain holds, counted without listing a range; None for a float range."""
    if isinstance(d, Choice):
        return len(dict.fromkeys(d.values))
    if isinstance(d, IntRange):
        return int_count(d)
    return None


def space_size(space: Sequence[Parameter], cap: int = ENUMERATION_LIMIT) -> int | None:
    """The product of the domains' sizes (inactive alternatives included: an upper bound) when every
    domain is discrete and the product is at most `cap`; else None. Stops as soon as it passes the cap."""
    total = 1
    for p in space:
        size = domain_size(p.domain)
        if size is None:
            return None
        total *= size
        if total > cap:
            return None
    return total


def from_unit(d: IntRange | FloatRange | Choice, u: float) -> Any:
    """Map u in [0, 1] onto the domain: equal-width bins for choices and ints, log where asked."""
    u = min(max(float(u), 0.0), 1.0)
    if isinstance(d, Choice):
        return d.values[min(len(d.values) - 1, int(u * len(d.values)))]
    if isinstance(d, IntRange):
        count = int_count(d)
        if d.log:
            lo, hi = math.log(d.low - 0.5), math.log(d.low + d.step * (count - 1) + 0.5)
            return snap(d, math.exp(lo + u * (hi - lo)))
        return int(d.low + d.step * min(count - 1, int(u * count)))
    if d.low == d.high:
        return float(d.low)
    if d.log:
        return float(math.exp(math.log(d.low) + u * (math.log(d.high) - math.log(d.low))))
    return float(d.low + u * (d.high - d.low))


def to_unit(d: IntRange | FloatRange | Choice, value: Any) -> float:
    """The centre of `value`'s bin (choices, ints) or its position (floats) in [0, 1]."""
    if isinstance(d, Choice):
        return (d.values.index(value) + 0.5) / len(d.values)
    if isinstance(d, IntRange):
        count = int_count(d)
        if d.log:
            lo, hi = math.log(d.low - 0.5), math.log(d.low + d.step * (count - 1) + 0.5)
            return (math.log(value) - lo) / (hi - lo)
        return ((value - d.low) / d.step + 0.5) / count
    if d.low == d.high:
        return 0.5
    if d.log:
        return (math.log(value) - math.log(d.low)) / (math.log(d.high) - math.log(d.low))
    return (value - d.low) / (d.high - d.low)


def sample(d: IntRange | FloatRange | Choice, rng: random.Random) -> Any:
    """One value drawn at random: uniform, log-uniform where the range is log."""
    if isinstance(d, Choice):
        return d.values[rng.randrange(len(d.values))]
    if isinstance(d, IntRange):
        if not d.log:
            return int(d.low + d.step * rng.randrange(int_count(d)))
        return from_unit(d, rng.random())
    if d.low == d.high:
        return float(d.low)
    if d.log:
        return math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
    return rng.uniform(d.low, d.high)


def values_all(param: Parameter) -> list[Any]:
    """Every value of a discrete parameter; refused past ENUMERATION_LIMIT values, so no long list is built."""
    d = param.domain
    if isinstance(d, Choice):
        return list(dict.fromkeys(d.values))
    if not isinstance(d, IntRange):
        raise ValueError(f"{param.name}: a float range is not finite")
    if int_count(d) > ENUMERATION_LIMIT:
        raise ValueError(f"{param.name}: {int_count(d)} values, more than the {ENUMERATION_LIMIT} listed at most")
    return list(int_values(d))


def enumerate_configs(space: Sequence[Parameter], values: Callable[[Parameter], Iterable[Any]]) -> Iterator[Config]:
    """Every config of the space in a fixed order (first parameter slowest), conditions honoured."""
    config: Config = {}

    def walk(i: int) -> Iterator[Config]:
        if i == len(space):
            yield dict(config)
            return
        param = space[i]
        if param.name in config or not param.is_active(config):
            yield from walk(i + 1)
            return
        for value in values(param):
            config[param.name] = value
            yield from walk(i + 1)
        del config[param.name]

    return walk(0)


def finite_configs(space: Sequence[Parameter]) -> dict[str, Config] | None:
    """All configs keyed by `key`, when the space is discrete and holds at most ENUMERATION_LIMIT; else None."""
    if space_size(space) is None:
        return None
    return {key(c): c for c in enumerate_configs(space, values_all)}


class Seen:
    """The configs a searcher has suggested, so none is suggested twice (pending or finished)."""

    def __init__(self, space: Sequence[Parameter]) -> None:
        self._all = finite_configs(space)
        self.keys: list[str] = []
        self._set: set[str] = set()

    def __contains__(self, config: Config) -> bool:
        return key(config) in self._set

    @property
    def exhausted(self) -> bool:
        return self._all is not None and len(self._set) >= len(self._all)

    def add(self, config: Config) -> Config:
        k = key(config)
        if k not in self._set:
            self.keys.append(k)
            self._set.add(k)
        return config

    def left(self) -> list[Config]:
        """The configs not suggested yet, in enumeration order (finite spaces only, else [])."""
        if self._all is None:
            return []
        return [dict(c) for k, c in self._all.items() if k not in self._set]

    def load(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)
        self._set = set(self.keys)

    def suggest_new(
        self, draw: Callable[[], Config], tries: int, pick_left: Callable[[list[Config]], Config]
    ) -> Config | None:
        """A config not suggested before: up to `tries` draws, then (a nearly exhausted finite space)
        `pick_left` of the configs left; None once every config was suggested."""
        if self.exhausted:
            return None
        for _ in range(tries):
            config = draw()
            if config not in self:
                return self.add(config)
        left = self.left()
        return self.add(pick_left(left)) if left else None

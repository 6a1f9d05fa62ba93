"""Built-in searchers: random, grid, sobol, tpe, cmaes, gp and evolution over a conditional space.

Every searcher visits parameters in space order and leaves out a parameter whose condition is
not met by the values chosen so far. A name repeated as alternatives (disjoint conditions on one
parent) takes the active alternative's domain. No searcher suggests a config twice, so trials
pending at the same time never share one. Each keeps its state in a JSON-friendly `state_dict`,
so a restored study continues exactly where it stopped.

`tpe`, `cmaes` and `gp` adapt Optuna's samplers (the `[optuna]` extra); the others are native.
"""

from __future__ import annotations

import itertools
import math
import random as _random
from collections.abc import Iterator, Sequence
from typing import Any

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import Bounds, Choice, FloatRange, IntRange, Objective, Parameter
from tuneyard.plugins.builtin.searchers import space as _space
from tuneyard.plugins.builtin.searchers.evolution import EvolutionSearcher
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
        if self._seen.exhausted:
            return None
        for _ in range(self.max_retries + 1):
            config = self._draw()
            if config not in self._seen:
                return self._seen.add(config)
        left = self._seen.left()  # nearly exhausted finite space: pick one of the configs left
        return self._seen.add(left[self._rng.randrange(len(left))]) if left else None

    def observe(self, trial_id: int, state: str, value: float | None) -> None:
        """Random search ignores results."""

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self._rng.getstate()
        return {"rng": [version, list(internal), gauss], "seen": list(self._seen.keys)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
        self._seen.load(state["seen"])


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
        if self._seen.exhausted:
            return None
        for _ in range(self.max_retries + 1):
            config = self._draw()
            if config not in self._seen:
                return self._seen.add(config)
        left = self._seen.left()  # nearly exhausted finite space: the first config left
        return self._seen.add(left[0]) if left else None

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


def random(*, space: Sequence[Parameter], objective: Objective, seed: int, max_retries: int = 100) -> RandomSearcher:
    """Random search: every active parameter sampled independently, seeded, without repeats.

    Int ranges honour step and log, float ranges log. When all parameters are discrete and the
    space holds at most 100,000 configs, the searcher returns None once every config has been
    suggested; otherwise (a larger or continuous space) it returns None after max_retries draws
    that all repeat an earlier config.

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


def sobol(*, space: Sequence[Parameter], objective: Objective, seed: int, scramble: bool = True) -> SobolSearcher:
    """Quasi-random search: a Sobol sequence (torch.quasirandom) spread evenly over the space.

    Covers the space more evenly than random search for the same number of trials. Each
    distinct parameter name is one dimension; log ranges are covered evenly in log space.

    Args:
        scramble: scramble the sequence with the study seed (Owen scrambling); False gives the
            plain sequence, the same for every seed, starting at the lower corner.
    """
    return SobolSearcher(space, seed, scramble)


def tpe(
    *,
    space: Sequence[Parameter],
    objective: Objective,
    seed: int,
    n_startup_trials: int = 10,
    multivariate: bool = True,
    group: bool | None = None,
    constant_liar: bool = True,
    n_ei_candidates: int = 24,
) -> Any:
    """Tree-structured Parzen estimator: Optuna's TPESampler (pip install 'tuneyard[optuna]').

    Pending trials count as "liars" (constant_liar) so concurrent trials spread out. Resuming
    replays the recorded suggestions and results through a fresh sampler with the same seed.

    Args:
        n_startup_trials: trials drawn by the startup design before TPE takes over.
        multivariate: model the parameters jointly (multivariate TPE) rather than one by one.
        group: split a conditional space into groups that always occur together, each modelled
            jointly; None: on when the space has conditions.
        constant_liar: treat pending trials as bad results so concurrent suggestions differ.
        n_ei_candidates: candidates drawn per suggestion to maximise expected improvement.
    """
    from tuneyard.plugins.builtin.searchers import optuna_samplers as _optuna_searchers

    return _optuna_searchers.tpe_searcher(
        space,
        objective,
        seed,
        n_startup_trials=n_startup_trials,
        multivariate=multivariate,
        group=group,
        constant_liar=constant_liar,
        n_ei_candidates=n_ei_candidates,
    )


def cmaes(
    *,
    space: Sequence[Parameter],
    objective: Objective,
    seed: int,
    popsize: int | None = None,
    n_startup_trials: int = 1,
    with_margin: bool = False,
    use_separable_cma: bool = False,
    consider_pruned_trials: bool = False,
) -> Any:
    """CMA-ES: Optuna's CmaEsSampler for numeric ranges (pip install 'tuneyard[optuna]').

    Choices and conditional parameters are sampled by Optuna's independent (random) sampler,
    as CmaEsSampler does; CMA-ES models the unconditional numeric ranges. Resuming replays the
    recorded suggestions and results through a fresh sampler with the same seed.

    Args:
        popsize: population per generation; None: 4 + 3 ln(dimensions).
        n_startup_trials: random trials before CMA-ES starts.
        with_margin: CMA-ES with margin, which keeps integer parameters from collapsing.
        use_separable_cma: diagonal covariance (faster, for many parameters).
        consider_pruned_trials: let pruned trials' last values update the distribution.
    """
    from tuneyard.plugins.builtin.searchers import optuna_samplers as _optuna_searchers

    return _optuna_searchers.cmaes_searcher(
        space,
        objective,
        seed,
        popsize=popsize,
        n_startup_trials=n_startup_trials,
        with_margin=with_margin,
        use_separable_cma=use_separable_cma,
        consider_pruned_trials=consider_pruned_trials,
    )


def gp(
    *,
    space: Sequence[Parameter],
    objective: Objective,
    seed: int,
    n_startup_trials: int = 10,
    flatten: bool | None = None,
) -> Any:
    """Gaussian-process Bayesian optimisation: Optuna's GPSampler (pip install 'tuneyard[optuna]').

    The most sample-efficient searcher here for a few (up to ~10) numeric parameters and tens of
    trials, at about a second of CPU per suggestion. Pending trials are accounted for (batch
    log-EI). GPSampler needs a fixed space: a conditional space is flattened (inactive parameters
    are sampled too and left out of the config). Resuming replays the recorded suggestions and
    results through a fresh sampler with the same seed.

    Args:
        n_startup_trials: random trials before the Gaussian process takes over.
        flatten: sample inactive parameters too, so the space the GP sees is fixed; None: on
            when the space has conditions (off, conditional parameters are sampled at random).
    """
    from tuneyard.plugins.builtin.searchers import optuna_samplers as _optuna_searchers

    return _optuna_searchers.gp_searcher(space, objective, seed, n_startup_trials=n_startup_trials, flatten=flatten)


def evolution(
    *,
    space: Sequence[Parameter],
    objective: Objective,
    seed: int,
    population_size: int = 20,
    sample_size: int = 5,
    mutation_rate: float | None = None,
    mutation_scale: float = 0.15,
) -> EvolutionSearcher:
    """Regularized (aging) evolution (Real et al. 2019), the classic for architecture search.

    Random configs fill the population; then each trial mutates the best of `sample_size`
    members drawn at random, and the oldest member leaves when a new result arrives. Children
    of one parent never repeat a config suggested before.

    Args:
        population_size: members kept; the oldest is dropped when a newer result arrives.
        sample_size: members drawn per tournament; the best of them is the parent.
        mutation_rate: probability that each active parameter mutates (at least one always
            does); None: one parameter per child.
        mutation_scale: standard deviation of a numeric mutation, as a fraction of the range
            (of its log where the range is log); choices mutate to another value.
    """
    return EvolutionSearcher(
        space,
        objective,
        seed,
        population_size=population_size,
        sample_size=sample_size,
        mutation_rate=mutation_rate,
        mutation_scale=mutation_scale,
    )


MAX_SEARCH_WIDTH = 10_000


@hookimpl
def tuneyard_register_searchers(register: Any) -> None:
    # A count below these has no meaning (random would clamp max_retries to 0; the others raise).
    startup = {"n_startup_trials": Bounds(ge=0)}
    register("random", random, bounds={"max_retries": Bounds(ge=0)})
    register("grid", grid, bounds={"num_points": Bounds(ge=1)})
    register("sobol", sobol)
    # Both are computed on in the server's own process for every suggestion: 2**53 candidates tried to
    # allocate 64 PiB, a population of 2**53 grew the server without end. 10,000 is far past any use.
    register("tpe", tpe, bounds={**startup, "n_ei_candidates": Bounds(ge=1, le=MAX_SEARCH_WIDTH)})
    register("cmaes", cmaes, bounds={**startup, "popsize": Bounds(ge=2, le=MAX_SEARCH_WIDTH)})
    register("gp", gp, bounds=startup)
    register(
        "evolution",
        evolution,
        bounds={
            "population_size": Bounds(ge=1),
            "sample_size": Bounds(ge=1),
            "mutation_rate": Bounds(ge=0, le=1),
            "mutation_scale": Bounds(gt=0),
        },
    )

"""Built-in searchers: random, grid, sobol, tpe, cmaes, gp and evolution over a conditional space.

Every searcher visits parameters in space order and leaves out a parameter whose condition is
not met by the values chosen so far. A name repeated as alternatives (disjoint conditions on one
parent) takes the active alternative's domain. No searcher suggests a config twice, so trials
pending at the same time never share one. Each keeps its state in a JSON-friendly `state_dict`,
so a restored study continues exactly where it stopped.

`tpe`, `cmaes` and `gp` adapt Optuna's samplers (the `[optuna]` extra); the others are native,
each in its own module (`random_search`, `grid_search`, `sobol_search`, `evolution`). This module
holds the factories, whose signatures are the searchers' schemas, and registers them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import Bounds, Objective, Parameter
from tuneyard.plugins.builtin.searchers.bohb import BohbSearcher
from tuneyard.plugins.builtin.searchers.evolution import EvolutionSearcher
from tuneyard.plugins.builtin.searchers.grid_search import GridSearcher
from tuneyard.plugins.builtin.searchers.random_search import RandomSearcher
from tuneyard.plugins.builtin.searchers.sobol_search import SobolSearcher


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


def bohb(
    *,
    space: Sequence[Parameter],
    objective: Objective,
    seed: int,
    ranking: str = "reach",
    min_points_in_model: int | None = None,
    top_n_percent: float = 10.0,
    num_samples: int = 64,
    random_fraction: float = 1 / 3,
    bandwidth_factor: float = 3.0,
    min_bandwidth: float = 1e-3,
    magic_clip: bool = True,
    prior_weight: float = 1.0,
) -> BohbSearcher:
    """BOHB (Falkner et al. 2018): kernel densities of the results on the rungs, with asha or hyperband.

    Each step a trial reports is a budget. Trials are ranked by the highest budget they reached,
    then by their value there; a density of the best top_n_percent and one of the rest are fitted,
    and a suggestion is the best of num_samples candidates drawn around the good results by the
    ratio good/bad. Before min_points_in_model + 2 results, and for random_fraction of
    suggestions, the config is drawn at random.

    Args:
        ranking: "reach" ranks every trial by the highest budget reached, then its value there;
            "budget" splits only the results of the highest budget with enough of them (the paper).
        min_points_in_model: results a density needs at least; None: the number of parameters + 1.
        top_n_percent: percent of the ranked results that count as good.
        num_samples: candidates drawn per suggestion to maximise good/bad.
        random_fraction: fraction of suggestions drawn at random.
        bandwidth_factor: how much wider than the good density candidates are drawn.
        min_bandwidth: smallest kernel bandwidth (on the unit scale of each parameter).
        magic_clip: floor a density's bandwidths at 1 / (its results + 1), as TPE does.
        prior_weight: weight, in results, of a uniform prior in both densities (0: none).
    """
    return BohbSearcher(
        space,
        objective,
        seed,
        ranking=ranking,
        min_points_in_model=min_points_in_model,
        top_n_percent=top_n_percent,
        num_samples=num_samples,
        random_fraction=random_fraction,
        bandwidth_factor=bandwidth_factor,
        min_bandwidth=min_bandwidth,
        magic_clip=magic_clip,
        prior_weight=prior_weight,
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
    register(
        "bohb",
        bohb,
        bounds={
            "min_points_in_model": Bounds(ge=1),
            "top_n_percent": Bounds(gt=0, lt=100),
            "num_samples": Bounds(ge=1, le=MAX_SEARCH_WIDTH),
            "random_fraction": Bounds(ge=0, le=1),
            "bandwidth_factor": Bounds(gt=0),
            "min_bandwidth": Bounds(gt=0),
            "prior_weight": Bounds(ge=0),
        },
    )

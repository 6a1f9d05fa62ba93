"""Adapters over Optuna's samplers (a private module of the built-in searchers).

One in-memory Optuna study per searcher, driven through ask/tell. Each suggestion asks a trial
and walks our space in order with define-by-run `trial.suggest_*` calls, so only active
parameters are sampled (how Optuna handles conditional spaces):

- IntRange -> IntDistribution (step, or log; a log range with a step is sampled in log space and
  snapped to the step grid), FloatRange -> FloatDistribution (log), Choice -> a categorical over
  the choice's indices (so any JSON value works; the sampler sees the same unordered set). An int
  range of more than `_space.ENUMERATION_LIMIT` values is a FloatDistribution snapped to the step
  grid: GPSampler lists every value of a discrete distribution (5*10**8 values: 4 GB per array).
- A name repeated as alternatives gets one Optuna name per alternative, `optimizer.lr|sgd`.
- Samplers that need a fixed space (GPSampler) can have it flattened: every parameter is
  suggested on every trial, and the config keeps only the active ones.
- A suggestion equal to one made before (pending or finished) is told FAIL and asked again; after
  `max_retries` repeats a random config not seen yet is enqueued instead.
- Results: COMPLETED -> tell(value); PRUNED -> report(value, step 0) then tell(PRUNED), so TPE ranks
  it by its last value below completed trials; FAILED, CANCELLED, or no finite value -> FAIL.
- Constraints (`use_constraints`): the sampler is built with a `constraints_func` reading the values
  `observe_constrained` stored on the trial (c <= 0 holds), where it takes one (TPE, GP); CMA-ES
  does not, so there an infeasible trial is told FAIL.
- Initial configs (`suggest_initial`): the given values are enqueued (`enqueue_trial`) and the
  sampler fills the rest. Warm start (`observe_prior`): an earlier study's trial is added as a
  finished Optuna trial (`add_trial`, its constraint values in its system attributes, as Optuna's
  own tell stores them), and its config is never suggested again.

Resume: samplers are not serialisable as plain data, so `state_dict` holds the seed and the
sequence of suggest/observe calls; `load_state_dict` replays it through a fresh, identically
seeded sampler, which (Optuna's samplers being deterministic given their seed) rebuilds the same
study and sampler state. Replaying costs one ask per past suggestion: milliseconds each for TPE
and CMA-ES, up to about a second each for the GP.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tuneyard.plugins.api import Choice, Objective, Parameter
from tuneyard.plugins.builtin.searchers import space as _space
from tuneyard.plugins.builtin.searchers.optuna_space import internal_names, internal_values, suggest_one
from tuneyard.plugins.builtin.searchers.space import Config

INSTALL_HINT = "pip install 'tuneyard[optuna]'"
_CONSTRAINTS = "tuneyard_constraints"  # the user attribute holding a trial's constraint values


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:
        raise ImportError(f"the tpe and cmaes searchers need Optuna: {INSTALL_HINT}") from exc
    return optuna


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Optuna's per-trial INFO logs and its experimental/deprecation warnings."""
    logger = logging.getLogger("optuna")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _threads(limit: int | None) -> Iterator[None]:
    """Run torch (and BLAS, where threadpoolctl is installed) on `limit` threads, then restore."""
    if limit is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(limit)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            yield
        else:
            with threadpool_limits(limits=limit):
                yield
    finally:
        torch.set_num_threads(before)


class OptunaSearcher:
    """Drives one Optuna sampler through ask/tell over our (conditional) space."""

    def __init__(
        self,
        space: Sequence[Parameter],
        objective: Objective,
        seed: int,
        make_sampler: Callable[[int, Any], Any],
        *,
        flatten: bool = False,
        single_thread: bool = False,
        max_retries: int = 10,
        takes_constraints: bool = True,
    ) -> None:
        self._optuna = _import_optuna()
        self.space = _space.check_space(space)
        self.objective = objective
        self.seed = seed
        self._make_sampler = make_sampler
        self.max_retries = max(0, max_retries)
        self._flatten = flatten  # sample every parameter, active or not, so the space is static
        self._single_thread = single_thread  # small GP linear algebra: threads only contend
        self._takes_constraints = takes_constraints  # the sampler has a constraints_func
        self._names = internal_names(self.space)
        self._constraints = 0  # how many constraints each result carries (use_constraints)
        self._reset(seed)

    def _reset(self, seed: int) -> None:
        self.seed = seed
        with _quiet():
            self._study = self._optuna.create_study(
                direction="maximize" if self.objective.mode == "max" else "minimize",
                sampler=self._make_sampler(seed, self._constraints_func if self._constraints else None),
            )
        self._rng = random.Random(seed)
        self._seen = _space.Seen(self.space)
        self._pending: dict[int, Any] = {}
        self._events: list[list[Any]] = []

    # ---- protocol ----

    def suggest(self, trial_id: int) -> Config | None:
        self._events.append(["suggest", trial_id])
        with _quiet(), _threads(1 if self._single_thread else None):
            return self._suggest(trial_id)

    def observe(self, trial_id: int, state: str, value: float | None) -> None:
        if value is not None and not math.isfinite(value):
            value = None
        self._events.append(["observe", trial_id, state, value])
        with _quiet():
            self._observe(trial_id, state, value)

    def use_constraints(self, labels: Sequence[str]) -> None:
        """Results carry one value per constraint from now on (called before anything else)."""
        self._constraints = len(labels)
        self._reset(self.seed)

    def observe_constrained(self, trial_id: int, state: str, value: float | None, constraints: Sequence[float]) -> None:
        if value is not None and not math.isfinite(value):
            value = None
        self._events.append(["observe", trial_id, state, value, [float(c) for c in constraints]])
        with _quiet():
            self._observe(trial_id, state, value, [float(c) for c in constraints])

    def suggest_initial(self, trial_id: int, partial: Config) -> Config | None:
        """The next suggestion sets `partial`'s values; the sampler fills the rest. None when that
        config was suggested before."""
        self._events.append(["initial", trial_id, dict(partial)])
        with _quiet(), _threads(1 if self._single_thread else None):
            self._study.enqueue_trial(internal_values(self.space, self._names, partial), skip_if_exists=False)
            trial = self._study.ask()
            config = self._sample(trial)
            if config in self._seen:
                self._study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
                return None
            return self._accept(trial_id, trial, config)

    def observe_prior(self, config: Config, state: str, value: float | None, constraints: Sequence[float]) -> None:
        """An earlier study's finished trial: added to the study as finished, never suggested again."""
        self._events.append(["prior", dict(config), state, value, [float(c) for c in constraints]])
        self._seen.add(dict(config))
        if state not in ("COMPLETED", "PRUNED") or value is None or not math.isfinite(value):
            return  # nothing for the sampler to learn (a failed trial)
        with _quiet():
            self._add_prior(config, state, float(value), [float(c) for c in constraints])

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "events": [list(e) for e in self._events]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._reset(int(state["seed"]))
        for event in state["events"]:
            match event[0]:
                case "suggest":
                    self.suggest(int(event[1]))
                case "initial":
                    self.suggest_initial(int(event[1]), dict(event[2]))
                case "prior":
                    self.observe_prior(dict(event[1]), str(event[2]), event[3], event[4])
                case _ if len(event) > 4:
                    self.observe_constrained(int(event[1]), str(event[2]), event[3], event[4])
                case _:
                    self.observe(int(event[1]), str(event[2]), event[3])

    # ---- ask ----

    def _suggest(self, trial_id: int) -> Config | None:
        if self._seen.exhausted:
            return None
        for _ in range(self.max_retries + 1):
            trial = self._study.ask()
            config = self._sample(trial)
            if config not in self._seen:
                return self._accept(trial_id, trial, config)
            self._study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
        for _ in range(100):  # the sampler keeps repeating itself: a random config not seen yet
            candidate = _space.build(self.space, lambda i, p, c: _space.sample(p.domain, self._rng))
            enqueued = self._enqueued(candidate)
            if enqueued is not None:
                return self._accept(trial_id, *enqueued)
        left = self._seen.left()
        enqueued = self._enqueued(left[0]) if left else None
        return self._accept(trial_id, *enqueued) if enqueued is not None else None

    def _accept(self, trial_id: int, trial: Any, config: Config) -> Config:
        self._pending[trial_id] = trial
        return self._seen.add(config)

    def _enqueued(self, candidate: Config) -> tuple[Any, Config] | None:
        """Ask a trial fixed to `candidate` (None if it was suggested before)."""
        if candidate in self._seen:
            return None
        self._study.enqueue_trial(internal_values(self.space, self._names, candidate), skip_if_exists=False)
        trial = self._study.ask()
        return trial, self._sample(trial)

    def _add_prior(self, config: Config, state: str, value: float, constraints: list[float]) -> None:
        """Adds a finished trial with `config`'s parameters and distributions (from a FixedTrial walked
        as a suggestion is; a flattened space's inactive parameters drawn at random)."""
        optuna = self._optuna
        fixed = internal_values(self.space, self._names, config)
        if self._flatten:
            for i, p in enumerate(self.space):
                if self._names[i] not in fixed:
                    sampled = _space.sample(p.domain, self._rng)
                    fixed[self._names[i]] = p.domain.values.index(sampled) if isinstance(p.domain, Choice) else sampled
        walked = optuna.trial.FixedTrial(fixed)
        self._sample(walked)
        attrs = {_CONSTRAINTS: constraints} if self._constraints else {}
        completed = state == "COMPLETED"
        self._study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.COMPLETE if completed else optuna.trial.TrialState.PRUNED,
                value=value if completed else None,
                params=walked.params,
                distributions=walked.distributions,
                intermediate_values=None if completed else {0: value},
                user_attrs=attrs,
                system_attrs={"constraints": tuple(constraints)} if self._constraints else None,
            )
        )

    def _constraints_func(self, trial: Any) -> Sequence[float]:
        """Optuna's constraint values of a finished trial, as `observe_constrained` stored them."""
        return trial.user_attrs.get(_CONSTRAINTS) or [1.0] * self._constraints

    def _sample(self, trial: Any) -> Config:
        if self._flatten:
            values = [suggest_one(trial, self._names[i], p.domain) for i, p in enumerate(self.space)]
            return _space.build(self.space, lambda i, p, c: values[i])
        return _space.build(self.space, lambda i, p, c: suggest_one(trial, self._names[i], p.domain))

    # ---- tell ----

    def _observe(self, trial_id: int, state: str, value: float | None, constraints: list[float] | None = None) -> None:
        trial = self._pending.pop(trial_id, None)
        if trial is None:
            return
        states = self._optuna.trial.TrialState
        if constraints is not None:
            trial.set_user_attr(_CONSTRAINTS, constraints)
            if not self._takes_constraints and any(c > 0 for c in constraints):
                state = "FAILED"  # a sampler without constraints_func (CMA-ES): infeasible is failed
        if state == "COMPLETED" and value is not None:
            self._study.tell(trial, value)
        elif state == "PRUNED" and value is not None:
            trial.report(value, step=0)
            self._study.tell(trial, state=states.PRUNED)
        elif state == "PRUNED":
            self._study.tell(trial, state=states.PRUNED)
        else:
            self._study.tell(trial, state=states.FAIL)


def tpe_searcher(
    space: Sequence[Parameter],
    objective: Objective,
    seed: int,
    *,
    n_startup_trials: int,
    multivariate: bool,
    group: bool | None,
    constant_liar: bool,
    n_ei_candidates: int,
) -> OptunaSearcher:
    optuna = _import_optuna()
    if n_startup_trials < 0 or n_ei_candidates < 1:
        raise ValueError("n_startup_trials must be >= 0 and n_ei_candidates >= 1")
    if group is None:
        group = multivariate and any(p.condition is not None for p in space)
    if group and not multivariate:
        raise ValueError("group needs multivariate")

    def make(s: int, constraints_func: Any) -> Any:
        return optuna.samplers.TPESampler(
            constraints_func=constraints_func,
            n_startup_trials=n_startup_trials,
            n_ei_candidates=n_ei_candidates,
            seed=s,
            multivariate=multivariate,
            group=group,
            constant_liar=constant_liar,
        )

    return OptunaSearcher(space, objective, seed, make)


def cmaes_searcher(
    space: Sequence[Parameter],
    objective: Objective,
    seed: int,
    *,
    popsize: int | None,
    n_startup_trials: int,
    with_margin: bool,
    use_separable_cma: bool,
    consider_pruned_trials: bool,
) -> OptunaSearcher:
    optuna = _import_optuna()
    if popsize is not None and popsize < 2:
        raise ValueError(f"popsize must be >= 2, got {popsize}")
    if with_margin and use_separable_cma:
        raise ValueError("with_margin and use_separable_cma cannot be combined")

    def make(s: int, constraints_func: Any) -> Any:  # CmaEsSampler takes no constraints_func
        return optuna.samplers.CmaEsSampler(
            popsize=popsize,
            n_startup_trials=n_startup_trials,
            seed=s,
            with_margin=with_margin,
            use_separable_cma=use_separable_cma,
            consider_pruned_trials=consider_pruned_trials,
            warn_independent_sampling=False,
        )

    return OptunaSearcher(space, objective, seed, make, takes_constraints=False)


def gp_searcher(
    space: Sequence[Parameter], objective: Objective, seed: int, *, n_startup_trials: int, flatten: bool | None
) -> OptunaSearcher:
    optuna = _import_optuna()
    if flatten is None:
        flatten = any(p.condition is not None for p in space)

    def make(s: int, constraints_func: Any) -> Any:
        return optuna.samplers.GPSampler(
            seed=s,
            n_startup_trials=n_startup_trials,
            warn_independent_sampling=False,
            constraints_func=constraints_func,
        )

    # A GP asked again mostly proposes the same point: fall back to a random config sooner.
    return OptunaSearcher(space, objective, seed, make, flatten=flatten, single_thread=True, max_retries=2)

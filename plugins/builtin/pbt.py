"""Built-in population-based training (PBT, Jaderberg et al. 2017; Ray Tune's PopulationBasedTraining).

A population stopper (`tuneyard.plugins.population`): at every ``interval``-th epoch a trial in the
bottom ``quantile`` of the trials recorded at that epoch goes on from a top-quantile trial's
checkpoint of that epoch with the top trial's config explored (each value perturbed by a factor or
resampled). Trials need not run at once: a trial that reached the epoch earlier counts, since every
trial keeps its checkpoint of each interval epoch. The class is pure: no torch, no I/O; its whole
state is plain JSON, so a server restart continues with identical decisions.

Choice parameters are perturbed to an adjacent value: numeric choices in numeric order, any other
choices in the order they are listed (Ray's rule: the user's order is the only one known).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import Bounds, Choice, Decision, Exploit, FloatRange, IntRange, Objective, Parameter

KIND = "pbt"


def _score(objective: Objective, value: float | None) -> float:
    """Higher is better; a missing or non-finite value scores -inf (the worst)."""
    if value is None or not math.isfinite(value):
        return -math.inf
    return float(value) if objective.mode == "max" else -float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _snap(domain: IntRange, value: float) -> int:
    """The nearest value on the grid low, low + step, ... that lies within [low, high]."""
    top = domain.low + (domain.high - domain.low) // domain.step * domain.step
    snapped = domain.low + round((value - domain.low) / domain.step) * domain.step
    return int(min(max(snapped, domain.low), top))


def resample(domain: IntRange | FloatRange | Choice, rng: random.Random) -> Any:
    """A fresh value of the domain: uniform, log-uniform for ``log=True``, on an IntRange's step grid."""
    if isinstance(domain, Choice):
        return rng.choice(domain.values)
    if domain.log:
        value = math.exp(rng.uniform(math.log(domain.low), math.log(domain.high)))
    else:
        value = rng.uniform(domain.low, domain.high)
    if isinstance(domain, IntRange):
        if not domain.log:
            return domain.low + rng.randint(0, (domain.high - domain.low) // domain.step) * domain.step
        return _snap(domain, value)
    return min(max(value, domain.low), domain.high)


def perturb(domain: IntRange | FloatRange | Choice, value: Any, factors: Sequence[float], rng: random.Random) -> Any:
    """Ray's perturbation: a range's value times a factor (clipped), a choice's neighbour (clipped)."""
    if isinstance(domain, Choice):
        values = list(domain.values)
        if all(_is_number(v) for v in values):
            values.sort()
        if value not in values:  # not a value of the domain: nothing to be adjacent to
            return rng.choice(domain.values)
        index = values.index(value) + rng.choice((-1, 1))
        return values[min(max(index, 0), len(values) - 1)]
    scaled = float(value) * rng.choice(list(factors))
    if isinstance(domain, IntRange):
        return _snap(domain, round(scaled))
    return min(max(scaled, domain.low), domain.high)


def explore(
    config: dict[str, Any],
    space: Sequence[Parameter],
    factors: Sequence[float],
    resample_probability: float,
    rng: random.Random,
) -> dict[str, Any]:
    """A new config from ``config``: each space parameter present is resampled or perturbed.

    Keys that are not in ``space`` are kept. Afterwards a conditional parameter whose parent (a space
    parameter) now deactivates it is dropped, and one that became active is sampled; one whose
    parent is not in ``space`` keeps its presence (the parent cannot change here).
    """
    new = dict(config)
    for param in space:
        if param.name in new:
            if rng.random() < resample_probability:
                new[param.name] = resample(param.domain, rng)
            else:
                new[param.name] = perturb(param.domain, new[param.name], factors, rng)
    names = {p.name for p in space}
    for _ in range(len(space)):  # a chain of conditions settles within len(space) passes
        changed = False
        for param in space:
            if param.condition is None or param.condition.parent not in names:
                continue
            active = param.is_active(new)
            if active != (param.name in new):
                changed = True
                if active:
                    new[param.name] = resample(param.domain, rng)
                else:
                    del new[param.name]
        if not changed:
            break
    return new


class PopulationBasedTraining:
    """PBT's policy: who exploits whom at each interval step, and the explored config.

    Scores and configs are recorded per (step, trial) at interval steps only; a verdict is made
    once per (trial, step), when the runner asks (as late as it can: once the trials behind have
    caught up), and stored, so asking again (a restart) gets the same verdict without drawing from
    the RNG again.
    """

    def __init__(
        self,
        objective: Objective,
        space: Sequence[Parameter] = (),
        *,
        interval: int = 4,
        quantile: float = 0.25,
        perturbation_factors: Sequence[float] = (0.8, 1.2),
        resample_probability: float = 0.25,
        seed: int = 0,
    ) -> None:
        _validate(interval, quantile, perturbation_factors, resample_probability)
        self.objective, self.space = objective, list(space or ())
        self.interval, self.quantile = interval, quantile
        self.factors = [float(f) for f in perturbation_factors]
        self.resample_probability = resample_probability
        self._rng = random.Random(seed)
        self._scores: dict[int, dict[int, float]] = {}  # step -> trial -> score
        self._configs: dict[int, dict[int, dict[str, Any]]] = {}  # step -> trial -> config
        self._verdicts: dict[tuple[int, int], Exploit | None] = {}  # (trial, step) -> verdict

    @property
    def checkpoint_interval(self) -> int:
        return self.interval

    def report(self, trial_id: int, step: int, value: float) -> Decision:
        """PBT never stops a trial (it satisfies the EarlyStopper protocol; the runner calls exploit)."""
        return Decision.CONTINUE

    def record(self, trial_id: int, step: int, value: float, config: dict[str, Any]) -> None:
        """Adds the trial's score and config at an interval step to that step's population (once:
        a replayed step keeps the first)."""
        if step % self.interval != 0 or trial_id in self._scores.get(step, {}):
            return
        self._scores.setdefault(step, {})[trial_id] = _score(self.objective, value)
        self._configs.setdefault(step, {})[trial_id] = dict(config)

    def exploit(self, trial_id: int, step: int) -> Exploit | None:
        """The verdict on a recorded step, against the population recorded at that step so far; made
        once and stored, so asking again (a restart) gives the same verdict."""
        if trial_id not in self._scores.get(step, {}):
            return None
        if (trial_id, step) not in self._verdicts:
            self._verdicts[(trial_id, step)] = self._decide(trial_id, step)
        return self._verdicts[(trial_id, step)]

    def _decide(self, trial_id: int, step: int) -> Exploit | None:
        """Ray's rule: n_q = ceil(n * quantile), at most n // 2; the bottom n_q copy a top n_q trial."""
        scores = self._scores[step]
        if len(scores) < 2:
            return None
        # Worst first; among equal scores the later trial (higher id) ranks lower.
        ranked = sorted(scores, key=lambda t: (scores[t], -t))
        # The quantile as the decimal it was written as: 25 * 0.28 is 7.000000000000001 in floats.
        n_q = min(math.ceil(len(ranked) * Fraction(repr(self.quantile))), len(ranked) // 2)
        if trial_id not in ranked[:n_q]:
            return None
        source = self._rng.choice(sorted(ranked[-n_q:]))
        new = explore(self._configs[step][source], self.space, self.factors, self.resample_probability, self._rng)
        return Exploit(source, step, new)

    def complete(self, trial_id: int, value: float | None) -> None:
        """Nothing to do: a finished trial's recorded steps keep counting in their populations."""

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self._rng.getstate()
        return {
            "kind": KIND,
            "rng": [version, list(internal), gauss],
            "scores": [[s, [[t, _finite(v)] for t, v in by.items()]] for s, by in self._scores.items()],
            "configs": [[s, [[t, c] for t, c in by.items()]] for s, by in self._configs.items()],
            "verdicts": [
                [t, s, None if v is None else v.source_trial_id, None if v is None else v.config]
                for (t, s), v in self._verdicts.items()
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != KIND:
            raise ValueError(f"not a {KIND} state: kind is {state.get('kind')!r}")
        version, internal, gauss = state["rng"]
        self._rng.setstate((int(version), tuple(int(x) for x in internal), gauss))
        self._scores = {
            int(s): {int(t): -math.inf if v is None else float(v) for t, v in by} for s, by in state["scores"]
        }
        self._configs = {int(s): {int(t): dict(c) for t, c in by} for s, by in state["configs"]}
        self._verdicts = {
            (int(t), int(s)): None if src is None else Exploit(int(src), int(s), dict(c))
            for t, s, src, c in state["verdicts"]
        }


def _finite(score: float) -> float | None:
    """-inf (a non-finite value's score) as None: JSON has no infinities."""
    return None if math.isinf(score) else score


def _validate(interval: int, quantile: float, factors: Sequence[float], resample_probability: float) -> None:
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValueError(f"interval must be an int >= 1, got {interval!r}")
    if not (_is_number(quantile) and 0 < quantile <= 0.5):
        raise ValueError(f"quantile must be in (0, 0.5], got {quantile!r}")
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence) or not factors:
        raise ValueError(f"perturbation_factors must be a non-empty list of numbers > 0, got {factors!r}")
    for f in factors:
        if not (_is_number(f) and math.isfinite(f) and f > 0):
            raise ValueError(f"perturbation_factors must be finite numbers > 0, got {f!r} in {list(factors)!r}")
    if not (_is_number(resample_probability) and 0 <= resample_probability <= 1):
        raise ValueError(f"resample_probability must be in [0, 1], got {resample_probability!r}")


def pbt(
    *,
    objective: Objective,
    space: Sequence[Parameter] = (),
    study_seed: int | None = None,
    interval: int = 4,
    quantile: float = 0.25,
    perturbation_factors: Sequence[float] = (0.8, 1.2),
    resample_probability: float = 0.25,
    seed: int = 0,
) -> PopulationBasedTraining:
    """Population-based training: bottom trials go on from a top trial's checkpoint, config explored.

    Every interval epochs, a trial among the worst quantile of the trials that reached that epoch
    continues from the checkpoint of a trial drawn from the best quantile, with that trial's
    searched values each perturbed by a factor or resampled. It never stops a trial.

    Args:
        interval: epochs between decisions (each trial keeps its checkpoint of every such epoch).
        quantile: fraction of the population (at most half) that exploits, and that is exploited.
        perturbation_factors: factors a range value is multiplied by (one drawn per value); a choice
            moves to an adjacent value.
        resample_probability: probability that a value is drawn afresh from its domain instead.
        seed: seed of PBT's draws; 0 uses the study's seed.
    """
    return PopulationBasedTraining(
        objective,
        space,
        interval=interval,
        quantile=quantile,
        perturbation_factors=perturbation_factors,
        resample_probability=resample_probability,
        seed=seed or (study_seed or 0),
    )


@hookimpl
def tuneyard_register_early_stoppers(register: Any) -> None:
    bounds = {
        "interval": Bounds(ge=1),
        "quantile": Bounds(gt=0, le=0.5),
        "resample_probability": Bounds(ge=0, le=1),
        "seed": Bounds(ge=0),
    }
    register(KIND, pbt, bounds=bounds)

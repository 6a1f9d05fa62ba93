"""`bohb`: BOHB's model-based search (Falkner et al. 2018) over the early stopper's rungs (a private
module of the built-in searchers).

Every step a trial reports is a budget (`observe_step`); a trial that ends without reporting a step
counts its final value at a budget above every step. BOHB fits a density l to the good results and
g to the bad ones and suggests, of `num_samples` candidates drawn around the good results, the one
with the largest l(x) / g(x) (`bohb_model`). Which results are good:

- ``ranking: reach`` (the default): every trial is ranked by the highest budget it reached, then by
  its result there, as Optuna's TPE ranks pruned trials; the best `top_n_percent` (at least
  `min_points`) are good, the rest bad. While the highest budget holds that many results this is
  BOHB's split at that budget, with the trials the stopper left behind on lower rungs counted bad:
  with asha or hyperband the good/bad question becomes "does it reach the higher rungs".
- ``ranking: budget``: the paper's rule: only the results of the highest budget with at least
  `min_points + 2` of them, split by the quantile there.

The model needs `min_points + 2` results; before that, and for a `random_fraction` of suggestions,
the config is drawn at random, so the search never stops exploring. Two guards from TPE (Bergstra
et al. 2011; Optuna) keep a density of few results from misleading it: the "magic clip" floor of the
bandwidths and a uniform prior weighted as `prior_weight` results (without it, l/g grows without
bound far from every result, and the search drifts to the corners of the space).

The steps are kept in the state (plain JSON), so a journaled state resumes with them; observing a
step again (a restart replays the steps stored after the last journal entry) changes nothing.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tuneyard.plugins.api import Objective, Parameter
from tuneyard.plugins.builtin.searchers import space as _space
from tuneyard.plugins.builtin.searchers.bohb_model import Encoding, Model, fit
from tuneyard.plugins.builtin.searchers.space import Config

FINAL = 2**53  # the budget of a final value told without any step: above every step
RESULT_STATES = ("COMPLETED", "PRUNED")
RANKINGS = ("reach", "budget")


class BohbSearcher:
    """Kernel-density search over the results of the highest budget with enough of them."""

    def __init__(
        self,
        space: Sequence[Parameter],
        objective: Objective,
        seed: int,
        *,
        ranking: str = "reach",
        min_points_in_model: int | None = None,
        top_n_percent: float = 10.0,
        num_samples: int = 64,
        random_fraction: float = 1 / 3,
        bandwidth_factor: float = 3.0,
        min_bandwidth: float = 1e-3,
        magic_clip: bool = True,
        prior_weight: float = 1.0,
        max_retries: int = 100,
    ) -> None:
        _check(top_n_percent, num_samples, random_fraction, bandwidth_factor, min_bandwidth)
        if not prior_weight >= 0:
            raise ValueError(f"prior_weight must be >= 0, got {prior_weight}")
        if ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {', '.join(RANKINGS)}, got {ranking!r}")
        self.ranking = ranking
        self.space = _space.check_space(space)
        self.objective = objective
        self.encoding = Encoding(self.space)
        dimensions = len(self.encoding.levels)
        self.min_points = dimensions + 1 if min_points_in_model is None else max(1, min_points_in_model)
        self.top_fraction, self.num_samples = top_n_percent / 100.0, num_samples
        self.enough = self.min_points + 2  # results a model needs (the paper's N_min + 2)
        self.random_fraction, self.bandwidth_factor = random_fraction, bandwidth_factor
        self.min_bandwidth, self.magic_clip, self.prior_weight = min_bandwidth, magic_clip, prior_weight
        self.max_retries = max(0, max_retries)
        self._rng = random.Random(seed)
        self._seen = _space.Seen(self.space)
        self._configs: dict[int, Config] = {}
        self._losses: dict[int, dict[int, float]] = {}  # trial -> budget -> loss (lower is better)
        self._vectors: dict[int, list[float | None]] = {}  # derived from _configs, not stored

    # ---- protocol ----

    def suggest(self, trial_id: int) -> Config | None:
        if self._seen.exhausted:
            return None
        explore = self._rng.random() < self.random_fraction
        model = None if explore else self.model()
        config = self._from_model(model) if model is not None else None
        if config is None:
            config = self._seen.suggest_new(self._draw, self.max_retries + 1, self._rng.choice)
        if config is None:
            return None
        self._configs[trial_id] = config
        return dict(config)

    def observe_step(self, trial_id: int, step: int, value: float) -> None:
        """Step `step`'s objective value: a result at budget `step`."""
        if trial_id in self._configs and step >= 1:
            self._losses.setdefault(trial_id, {})[int(step)] = self._loss(value)

    def observe(self, trial_id: int, state: str, value: float | None) -> None:
        """A trial's end: its final value is a result only when it reported no step."""
        if trial_id in self._configs and state in RESULT_STATES and value is not None:
            if not self._losses.get(trial_id):
                self._losses[trial_id] = {FINAL: self._loss(value)}

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self._rng.getstate()
        trials = [
            [t, c, [[b, _plain(v)] for b, v in sorted(self._losses.get(t, {}).items())]]
            for t, c in self._configs.items()
        ]
        return {"rng": [version, list(internal), gauss], "seen": list(self._seen.keys), "trials": trials}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
        self._seen.load(state["seen"])
        self._configs = {int(t): dict(c) for t, c, _ in state["trials"]}
        self._losses = {
            int(t): {int(b): math.inf if v is None else float(v) for b, v in losses}
            for t, _, losses in state["trials"]
            if losses
        }
        self._vectors = {}

    # ---- the model ----

    def budgets(self) -> Counter[int]:
        """Results per budget."""
        return Counter(b for losses in self._losses.values() for b in losses)

    def model(self) -> Model | None:
        """The densities of the ranked results (see the module's docstring); None before there are enough."""
        ranked = self._ranked()
        if ranked is None:
            return None
        budget, results = ranked
        return fit(
            budget,
            results,
            self.encoding,
            self._rng,
            min_points=self.min_points,
            top_fraction=self.top_fraction,
            min_bandwidth=self.min_bandwidth,
            clip=self.magic_clip,
            prior=self.prior_weight,
        )

    def _ranked(self) -> tuple[int, list[tuple[list[float | None], float]]] | None:
        """The model's budget and (vector, loss) results, lower is better: by ranking "reach" the
        rank of each trial by (highest budget reached, its loss there); by "budget" the losses at
        the highest budget with enough results."""
        if self.ranking == "reach":
            if len(self._losses) < self.enough:
                return None
            ranked = sorted(self._losses.items(), key=lambda item: (-max(item[1]), item[1][max(item[1])], item[0]))
            return max(ranked[0][1]), [(self._vector(t), float(rank)) for rank, (t, _) in enumerate(ranked)]
        ready = [b for b, count in self.budgets().items() if count >= self.enough]
        if not ready:
            return None
        budget = max(ready)
        at = sorted((t, losses[budget]) for t, losses in self._losses.items() if budget in losses)
        return budget, [(self._vector(t), loss) for t, loss in at]

    def _from_model(self, model: Model) -> Config | None:
        """The candidate with the largest l/g not suggested before; None when every candidate was."""
        candidates = [model.good.sample(self._rng, self.bandwidth_factor) for _ in range(self.num_samples)]
        ranked = sorted(range(len(candidates)), key=lambda i: -model.ratio(candidates[i]))
        for i in ranked:
            config = self.encoding.decode(candidates[i])
            if config not in self._seen:
                return self._seen.add(config)
        return None

    def _draw(self) -> Config:
        return _space.build(self.space, lambda i, p, c: _space.sample(p.domain, self._rng))

    def _vector(self, trial_id: int) -> list[float | None]:
        if trial_id not in self._vectors:
            self._vectors[trial_id] = self.encoding.encode(self._configs[trial_id])
        return self._vectors[trial_id]

    def _loss(self, value: float | None) -> float:
        """Lower is better; a missing or non-finite value is the worst."""
        if value is None or not math.isfinite(value):
            return math.inf
        return -float(value) if self.objective.mode == "max" else float(value)


def _plain(loss: float) -> float | None:
    return None if math.isinf(loss) else loss


def _check(top: float, samples: int, random_fraction: float, factor: float, min_bandwidth: float) -> None:
    if not 0 < top < 100:
        raise ValueError(f"top_n_percent must be in (0, 100), got {top}")
    if samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {samples}")
    if not 0 <= random_fraction <= 1:
        raise ValueError(f"random_fraction must be in [0, 1], got {random_fraction}")
    if not factor > 0 or not min_bandwidth > 0:
        raise ValueError(f"bandwidth_factor and min_bandwidth must be > 0, got {factor}, {min_bandwidth}")

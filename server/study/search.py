"""A study's searcher and early stopper, built from its plan through the plugin registry.

What a spec adds beyond the space reaches the searcher through optional methods (`plugins.api`):

- `constraints`: `use_constraints(labels)` once, right after it is built; then each trial's end
  comes with its constraint values (`observe_constrained`). A searcher without them is told an
  infeasible trial as "INFEASIBLE" with no value (as a configuration that cannot run).
- `warm_start`: the earlier studies' finished trials, each as `observe_prior(config, state, value,
  constraints)`, before its first suggestion. A searcher without it is not told them.
- `initial_configs`: the first suggestions, in order, through `suggest_initial(trial_id, partial)`,
  which fills the parameters a config leaves out. For a searcher without it the study asks a plain
  suggestion and sets the given values over it (a parameter the change makes active and the
  suggestion lacks is drawn at random, seeded by the study seed and trial id).

`GuidedSearcher` does this between the study and its searcher, and journals how far it got with the
searcher's own state: after a restart, initial configs already handed out are not handed out again,
and the earlier trials are not told twice.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneyard.plugins.api import Choice
from tuneyard.plugins.builtin.searchers import space as _space
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.storage.store import Store
from tuneyard.server.study.domain import InvalidArgument, TrialEnd, TrialRecord, TrialState
from tuneyard.server.study.settings import explorable
from tuneyard.server.study.spec import StudyPlan
from tuneyard.server.study.spec_components import ComponentChecker
from tuneyard.server.study.spec_search import check_warm_studies, in_domain
from tuneyard.server.study.spec_space import SpaceChecker
from tuneyard.server.study.stopping import StopperLedger

log = logging.getLogger(__name__)
_PAGE = 500
_TOLD = (TrialState.COMPLETED, TrialState.PRUNED, TrialState.FAILED, TrialState.INFEASIBLE)


def max_epochs(plan: StudyPlan) -> int:
    """The most epochs any trial may train: training.epochs, or the top of its searched range."""
    most = int(plan.spec["training"]["epochs"])
    for param in plan.space:
        if param.name == "training.epochs":
            domain = param.domain
            most = max(int(v) for v in domain.values) if isinstance(domain, Choice) else int(domain.high)
    return most


def build_search(plan: StudyPlan, registry: PluginRegistry, storage: Store | None = None) -> tuple[Any, StopperLedger]:
    """The searcher (guided by the plan's constraints, initial configs and warm start), and the early
    stopper (none without `early_stopping`) in its ledger. A warm start needs `storage`."""
    searcher_spec = plan.spec["searcher"]
    searcher = registry.create(
        "searcher",
        searcher_spec["name"],
        searcher_spec["options"],
        space=plan.space,
        objective=plan.objective,
        seed=plan.seed,
    )
    if plan.constraints and hasattr(searcher, "use_constraints"):
        searcher.use_constraints([c.label for c in plan.constraints])
    if plan.initial_configs or plan.warm_start:
        if plan.warm_start and storage is None:
            raise ValueError("a warm start reads earlier studies: build_search needs the store")
        parser = SpaceChecker(ComponentChecker(registry))
        searcher = GuidedSearcher(searcher, plan, lambda: warm_priors(plan, storage, parser) if storage else [])
    stopper = None
    if plan.spec.get("early_stopping"):
        es = plan.spec["early_stopping"]
        changeable = [param for param in plan.space if explorable(param.name)]
        stopper = registry.create(
            "early_stopper",
            es["name"],
            es["options"],
            objective=plan.objective,
            max_epochs=max_epochs(plan),
            space=changeable,
            study_seed=plan.seed,
        )
        return searcher, StopperLedger(stopper, plan.objective, max_epochs(plan), [p.name for p in changeable])
    return searcher, StopperLedger(None, plan.objective)


def tell(searcher: Any, plan: StudyPlan, trial_id: int, end: TrialEnd, value: float | None) -> None:
    """Tells the searcher a trial's end: with its constraint values where it takes them; an
    infeasible trial as "INFEASIBLE" (no value) where it does not."""
    state = end.state.value
    if plan.constraints and end.state in (TrialState.COMPLETED, TrialState.PRUNED):
        if hasattr(searcher, "observe_constrained"):
            constraints = [c.value(end.final_metrics or {}) for c in plan.constraints]
            searcher.observe_constrained(trial_id, state, value, constraints)
            return
        if end.violated_constraints:
            state, value = TrialState.INFEASIBLE.value, None
    searcher.observe(trial_id, state, value)


@dataclass(frozen=True)
class Prior:
    """A finished trial of an earlier study, as a warm start tells it."""

    config: dict[str, Any]
    state: str
    value: float | None
    constraints: tuple[float, ...]


def warm_priors(plan: StudyPlan, storage: Store, parser: SpaceChecker) -> list[Prior]:
    """The finished trials of the warm start's studies, in study then trial order. A COMPLETED or
    PRUNED trial without a finite value of this study's objective is left out (nothing to learn), and
    so is a study deleted since this one was created, or one whose space is not this one's (refused
    at creation; a searcher must never be told configs of another space)."""
    out: list[Prior] = []
    for study_id in plan.warm_start:
        try:
            check_warm_studies([study_id], plan.space, storage, parser)
        except InvalidArgument as exc:
            log.warning("warm start of %s: study %s left out: %s", plan.spec.get("name", ""), study_id, exc.reason)
            continue
        token = ""
        while True:
            trials, token = storage.list_trials(study_id, _PAGE, token)
            out.extend(p for p in (_prior(t, plan) for t in trials) if p is not None)
            if not token:
                break
    return out


def _prior(trial: TrialRecord, plan: StudyPlan) -> Prior | None:
    if trial.state not in _TOLD:
        return None
    if trial.state not in (TrialState.COMPLETED, TrialState.PRUNED):
        return Prior(dict(trial.config), trial.state.value, None, ())
    value = trial.final_metrics.get(plan.objective.metric)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    constraints = tuple(c.value(trial.final_metrics) for c in plan.constraints)
    return Prior(dict(trial.config), trial.state.value, float(value), constraints)


class GuidedSearcher:
    """A study's searcher with its initial configs handed out first and its warm start told before
    its first suggestion; every other call (and attribute) goes to the searcher itself."""

    def __init__(self, inner: Any, plan: StudyPlan, priors: Callable[[], list[Prior]]) -> None:
        self.inner = inner
        self._plan = plan
        self._priors = priors
        self._initial = list(plan.initial_configs)
        self._handed = 0  # initial configs handed out
        self._primed = not plan.warm_start  # the earlier trials were told

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def suggest(self, trial_id: int) -> dict[str, Any] | None:
        self._prime()
        while self._handed < len(self._initial):
            partial = self._initial[self._handed]
            self._handed += 1
            config = self._suggest_initial(trial_id, dict(partial))
            if config is not None:
                return config
        return self.inner.suggest(trial_id)

    def observe(self, trial_id: int, state: str, value: float | None) -> None:
        self.inner.observe(trial_id, state, value)

    def state_dict(self) -> dict[str, Any]:
        return {"guided": {"handed": self._handed, "primed": self._primed}, "searcher": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        guided = state.get("guided")
        if not isinstance(guided, dict):  # journaled by an unguided searcher (a release before)
            self.inner.load_state_dict(state)
            return
        self._handed, self._primed = int(guided["handed"]), bool(guided["primed"])
        self.inner.load_state_dict(state["searcher"])

    def _prime(self) -> None:
        if self._primed:
            return
        self._primed = True
        if not hasattr(self.inner, "observe_prior"):
            return
        for prior in self._priors():
            self.inner.observe_prior(prior.config, prior.state, prior.value, list(prior.constraints))

    def _suggest_initial(self, trial_id: int, partial: dict[str, Any]) -> dict[str, Any] | None:
        if hasattr(self.inner, "suggest_initial"):
            config: dict[str, Any] | None = self.inner.suggest_initial(trial_id, partial)
            return config
        suggested = self.inner.suggest(trial_id)
        if suggested is None:
            return None
        rng = random.Random(f"{self._plan.seed}:{trial_id}")
        return _space.build(self._plan.space, lambda i, p, c: _pick(p, partial, suggested, rng))


def _pick(param: Any, partial: dict[str, Any], suggested: dict[str, Any], rng: random.Random) -> Any:
    """A parameter's value in an initial config: given, else the searcher's (when its domain holds
    it), else drawn at random."""
    if param.name in partial:
        return partial[param.name]
    if param.name in suggested:
        try:
            return in_domain(param.domain, suggested[param.name], param.name)
        except InvalidArgument:
            pass
    return _space.sample(param.domain, rng)

"""Validation of a study spec (its proto3-JSON dict form) into a `StudyPlan`.

Every problem raises `InvalidArgument` with the path of the field, e.g.
`spec.search_space[2].int_range: low (5) > high (1)`. The spec dict is produced by the
conversion layer with proto field names; int64 fields may arrive as strings. Sizes are capped
(see `limits`). This module checks the whole and the small sections (objectives, budget,
resources); components and their options (`spec_components`), the training section
(`spec_training`), the search space (`spec_space`) and what guides the search beyond it
(constraints, initial configs, warm start: `spec_search`) have modules of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneyard.plugins.api import Objective, Parameter, PopulationStopper
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.limits import (
    MAX_GPU_MEMORY_GB,
    MAX_GPUS_PER_TRIAL,
    MAX_NAME_CHARS,
    MAX_PRIORITY,
    MAX_TRIALS,
    MIN_GPU_SHARE,
)
from tuneyard.server.storage.store import Store
from tuneyard.server.study.domain import InvalidArgument
from tuneyard.server.study.spec_components import ComponentChecker
from tuneyard.server.study.spec_objectives import ObjectiveChecker
from tuneyard.server.study.spec_search import (
    Constraint,
    check_constraints,
    check_initial_configs,
    check_warm_start,
    check_warm_studies,
    constraints_dict,
)
from tuneyard.server.study.spec_space import SpaceChecker
from tuneyard.server.study.spec_trainer import check_trainer
from tuneyard.server.study.spec_values import check_shape, duration_s, to_float, to_int

MAX_TRIAL_RETRIES = 100
MAX_FUSE = 64  # trials in one fused group (resources.fuse)
DEFAULT_SEARCHER = "random"


@dataclass(frozen=True)
class Resources:
    """What each trial of a study asks of a device, validated."""

    gpus_per_trial: float = 0.0  # 0: one slot (a whole device, or one CPU slot)
    priority: float = 1.0
    gpu_memory_gb: float = 0.0  # 0: not declared (measured on earlier trials instead)
    fuse: int = 0  # up to this many trials train as one fused model (issue 17); 0 or 1: off

    @property
    def fused(self) -> bool:
        return self.fuse > 1

    @property
    def units(self) -> float:
        """The share of devices a trial takes: gpus_per_trial, or one slot."""
        return self.gpus_per_trial or 1.0


@dataclass(frozen=True)
class StudyPlan:
    """A validated spec: the normalised dict plus the typed views the runner needs."""

    spec: dict[str, Any]
    space: tuple[Parameter, ...]
    objective: Objective
    objectives: tuple[Objective, ...]
    max_trials: int
    max_concurrent_trials: int
    max_failures: int
    max_duration_s: float | None
    seed: int
    trial_retries: int = 0
    resources: Resources = Resources()
    constraints: tuple[Constraint, ...] = ()
    initial_configs: tuple[dict[str, Any], ...] = ()  # evaluated first, in order
    warm_start: tuple[str, ...] = ()  # earlier studies whose finished trials the searcher is told

    @property
    def trainable(self) -> bool:
        """Whether the trials run a user's trainable."""
        return "trainable" in self.spec

    @property
    def external(self) -> bool:
        """Whether clients evaluate the trials (SuggestTrials, ReportTrial, CompleteTrial)."""
        return "external" in self.spec

    @property
    def has_test_split(self) -> bool:
        """Whether the best trial is scored on a test split at the end: only the built-in trainer's are."""
        return not (self.trainable or self.external)


class SpecValidator:
    """Checks a spec against the plugin registry; one instance serves every request.

    `data_root` is the server's `--data-root`: path options must lie inside it. "" means none is
    configured, and then only empty path values pass.
    """

    def __init__(self, registry: PluginRegistry, data_root: str = "") -> None:
        self.registry = registry
        self.data_root = data_root
        self.components = ComponentChecker(registry, data_root)
        self.space = SpaceChecker(self.components)
        self.objectives = ObjectiveChecker(registry)

    def validate(self, spec: dict[str, Any]) -> StudyPlan:
        """The normalised spec (every default applied) and its typed views, or InvalidArgument."""
        if not isinstance(spec, dict):
            raise InvalidArgument("spec", "must be an object")
        check_shape(spec, "spec")
        out: dict[str, Any] = {"name": str(spec.get("name", ""))}
        if len(out["name"]) > MAX_NAME_CHARS:
            raise InvalidArgument("spec.name", f"longer than {MAX_NAME_CHARS} characters")
        component = self.components.component
        out.update(check_trainer(spec, self.components))
        out["searcher"] = component("searcher", spec.get("searcher"), "spec.searcher", default=DEFAULT_SEARCHER)
        stopper = component("early_stopper", spec.get("early_stopping"), "spec.early_stopping", optional=True)
        if stopper:
            out["early_stopping"] = stopper
        objectives = self.objectives.check(spec, out)
        as_dict = [{"metric": o.metric, "mode": "MAXIMIZE" if o.mode == "max" else "MINIMIZE"} for o in objectives]
        out["objective"] = as_dict[0]
        if len(objectives) > 1:
            out["objectives"] = as_dict
        space = self.space.check(spec.get("search_space") or [], out)
        out["search_space"] = spec.get("search_space") or []
        budget = spec.get("budget") or {}
        max_trials, concurrent, failures, duration, retries = self._budget(budget)
        out["budget"] = budget
        out["resources"] = self._resources(spec.get("resources") or {})
        if "external" in out and Resources(**out["resources"]) != Resources():
            raise InvalidArgument("spec.resources", "a study its clients evaluate uses no devices of this server")
        if "trainable" in out and out["resources"]["gpus_per_trial"] > 1:
            why = "a trainable runs in one process on one device: at most 1 (0.5, 0.25, ... share one GPU)"
            raise InvalidArgument("spec.resources.gpus_per_trial", why)
        _check_fuse(out)
        self._check_population(out, objectives[0])
        constraints, initial, warm = self._guidance(spec, out, space, max_trials)
        return StudyPlan(
            constraints=constraints,
            initial_configs=tuple(initial),
            warm_start=tuple(warm),
            resources=Resources(**out["resources"]),
            spec=out,
            space=space,
            objective=objectives[0],
            objectives=objectives,
            max_trials=max_trials,
            max_concurrent_trials=concurrent,
            max_failures=failures,
            max_duration_s=duration,
            seed=out["training"]["seed"],
            trial_retries=retries,
        )

    def _guidance(
        self, spec: dict[str, Any], out: dict[str, Any], space: tuple[Parameter, ...], max_trials: int
    ) -> tuple[tuple[Constraint, ...], list[dict[str, Any]], list[str]]:
        """Constraints, initial configs and warm start, put in `out` only when the spec has them."""
        constraints = check_constraints(spec.get("constraints") or [], out, self.objectives)
        initial = check_initial_configs(spec.get("initial_configs") or [], space, max_trials)
        warm = check_warm_start(spec["warm_start"]) if spec.get("warm_start") is not None else []
        for key, value in (("constraints", constraints_dict(constraints)), ("initial_configs", initial)):
            if value:
                out[key] = value
        if warm:
            out["warm_start"] = {"study_ids": warm}
        return constraints, initial, warm

    def check_earlier_studies(self, plan: StudyPlan, store: Store) -> None:
        """A new study's warm start against the store: each earlier study exists and searches exactly
        this space, else InvalidArgument (`spec.warm_start.study_ids[i]`, naming study and parameter).
        Asked when a study is created, not when it resumes (an earlier study may be deleted since)."""
        if plan.warm_start:
            check_warm_studies(list(plan.warm_start), plan.space, store, self.space)

    def _budget(self, budget: Any) -> tuple[int, int, int, float | None, int]:
        path = "spec.budget"
        if not isinstance(budget, dict):
            raise InvalidArgument(path, "must be an object")
        max_trials = to_int(budget.get("max_trials", 0), f"{path}.max_trials")
        if not 0 < max_trials <= MAX_TRIALS:
            raise InvalidArgument(f"{path}.max_trials", f"must be between 1 and {MAX_TRIALS}, got {max_trials}")
        concurrent = to_int(budget.get("max_concurrent_trials", 0), f"{path}.max_concurrent_trials")
        if concurrent < 0:
            raise InvalidArgument(f"{path}.max_concurrent_trials", f"must not be negative, got {concurrent}")
        failures = to_int(budget.get("max_failures", 0), f"{path}.max_failures")
        if failures < 0:
            raise InvalidArgument(f"{path}.max_failures", f"must not be negative, got {failures}")
        duration = duration_s(budget.get("max_duration"), f"{path}.max_duration")
        retries = to_int(budget.get("trial_retries", 0), f"{path}.trial_retries")
        if not 0 <= retries <= MAX_TRIAL_RETRIES:
            raise InvalidArgument(f"{path}.trial_retries", f"must be between 0 and {MAX_TRIAL_RETRIES}, got {retries}")
        return max_trials, concurrent or max_trials, failures, duration, retries

    def _resources(self, resources: Any) -> dict[str, Any]:
        path = "spec.resources"
        if not isinstance(resources, dict):
            raise InvalidArgument(path, "must be an object")
        gpus = to_float(resources.get("gpus_per_trial", 0.0), f"{path}.gpus_per_trial")
        if not 0 <= gpus <= MAX_GPUS_PER_TRIAL:
            raise InvalidArgument(f"{path}.gpus_per_trial", f"must be between 0 and {MAX_GPUS_PER_TRIAL}, got {gpus}")
        if 0 < gpus < 1 and not ((1 / gpus).is_integer() and gpus >= MIN_GPU_SHARE):
            raise InvalidArgument(
                f"{path}.gpus_per_trial",
                f"a fraction must divide one GPU evenly, at least 1/{round(1 / MIN_GPU_SHARE)} "
                f"(0.5, 0.25, ..., {MIN_GPU_SHARE}), got {gpus}",
            )
        if gpus > 1 and not gpus.is_integer():
            raise InvalidArgument(f"{path}.gpus_per_trial", f"more than one GPU must be a whole number, got {gpus}")
        priority = to_float(resources.get("priority", 0.0), f"{path}.priority") or 1.0
        if not 0 < priority <= MAX_PRIORITY:
            raise InvalidArgument(f"{path}.priority", f"must be positive and at most {MAX_PRIORITY:g}, got {priority}")
        memory = to_float(resources.get("gpu_memory_gb", 0.0), f"{path}.gpu_memory_gb")
        if memory < 0:
            raise InvalidArgument(f"{path}.gpu_memory_gb", f"must not be negative, got {memory:g}")
        if memory > MAX_GPU_MEMORY_GB:
            raise InvalidArgument(f"{path}.gpu_memory_gb", f"must be at most {MAX_GPU_MEMORY_GB:g} GiB, got {memory:g}")
        fuse = to_int(resources.get("fuse", 0), f"{path}.fuse")
        if not 0 <= fuse <= MAX_FUSE:
            raise InvalidArgument(f"{path}.fuse", f"must be between 0 and {MAX_FUSE} (0 or 1: off), got {fuse}")
        return {"gpus_per_trial": gpus, "priority": priority, "gpu_memory_gb": memory, "fuse": fuse}

    def _check_population(self, out: dict[str, Any], objective: Objective) -> None:
        """A population stopper (PBT) goes on from checkpoints the server's workers keep, one per trial."""
        es = out.get("early_stopping")
        if not es:
            return
        stopper = self.registry.create(
            "early_stopper", es["name"], es["options"], objective=objective, max_epochs=1, space=[], study_seed=0
        )
        if not isinstance(stopper, PopulationStopper):
            return
        name, path = es["name"], "spec.early_stopping"
        if "external" in out:
            raise InvalidArgument(
                path, f"{name!r} goes on from checkpoints the server keeps: not for a study its clients evaluate"
            )
        if out["resources"]["fuse"] > 1:
            raise InvalidArgument(
                path, f"{name!r} changes one trial's run at a time: it cannot train fused (leave resources.fuse at 0)"
            )


def _check_fuse(out: dict[str, Any]) -> None:
    """Fusion trains the built-in trainer's trials, each on one device: anything else refuses it."""
    if out["resources"]["fuse"] <= 1:
        return
    path = "spec.resources.fuse"
    if "trainable" in out:
        raise InvalidArgument(path, "a trainable (a user's training function) cannot train fused: leave fuse at 0")
    if out["resources"]["gpus_per_trial"] > 1:
        raise InvalidArgument(path, "a data-parallel trial (gpus_per_trial > 1) cannot train fused: leave fuse at 0")

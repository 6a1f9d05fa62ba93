"""Checks the parts of a spec that guide the search beyond its space: outcome `constraints`,
`initial_configs` evaluated first, and `warm_start` from earlier studies.

A constraint `{metric, max}` (or `min`) holds for a trial whose final `metric` is at most `max` (at
least `min`). Its value for a searcher is Optuna's convention, c <= 0 when it holds: `metric - max`
or `min - metric`. A trial that does not report the metric (or reports a non-finite value) cannot be
shown to satisfy it: it counts as violating it, with c = 1.

An initial config sets some parameters of the space (the rest are the searcher's); each value must be
one the parameter's domain holds, and a conditional parameter needs its parent set, to a value that
makes it active. A warm start names earlier studies whose space is this one's: the same parameter
names, domains and conditions (`check_warm_studies`, which needs the store).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tuneyard.plugins.api import Choice, FloatRange, IntRange, Parameter
from tuneyard.server.limits import MAX_NAME_CHARS
from tuneyard.server.storage.store import Store
from tuneyard.server.study.domain import InvalidArgument, NotFound
from tuneyard.server.study.spec_objectives import ObjectiveChecker
from tuneyard.server.study.spec_space import SpaceChecker
from tuneyard.server.study.spec_values import to_float, to_int

MAX_CONSTRAINTS = 32
MAX_WARM_STUDIES = 16
MISSING_VIOLATION = 1.0  # a constraint's value for a trial without its metric


@dataclass(frozen=True)
class Constraint:
    """One outcome constraint: `metric` at most (`bound` "max") or at least ("min") `limit`."""

    metric: str
    bound: str
    limit: float

    @property
    def label(self) -> str:
        """How a violated constraint is stored and shown: "params <= 1e+06"."""
        return f"{self.metric} {'<=' if self.bound == 'max' else '>='} {self.limit:g}"

    def value(self, metrics: dict[str, float]) -> float:
        """Optuna's constraint value: <= 0 when the constraint holds."""
        got = metrics.get(self.metric)
        if not isinstance(got, (int, float)) or not math.isfinite(got):
            return MISSING_VIOLATION
        return float(got) - self.limit if self.bound == "max" else self.limit - float(got)


def violated(constraints: tuple[Constraint, ...], metrics: dict[str, float]) -> list[str]:
    """The labels of the constraints `metrics` violate, in spec order."""
    return [c.label for c in constraints if c.value(metrics) > 0]


def check_constraints(raw: Any, normalised: dict[str, Any], objectives: ObjectiveChecker) -> tuple[Constraint, ...]:
    """`spec.constraints`: each names a metric the trials report (the objectives' rule) and one bound."""
    path = "spec.constraints"
    if not isinstance(raw, list):
        raise InvalidArgument(path, "must be a list")
    if len(raw) > MAX_CONSTRAINTS:
        raise InvalidArgument(path, f"more than {MAX_CONSTRAINTS} constraints ({len(raw)})")
    out: list[Constraint] = []
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(item, dict):
            raise InvalidArgument(where, "must be an object")
        unknown = sorted(set(item) - {"metric", "max", "min"})
        if unknown:
            raise InvalidArgument(f"{where}.{unknown[0]}", "unknown field (a constraint has metric, and max or min)")
        if not item.get("metric"):
            raise InvalidArgument(f"{where}.metric", "required: name a metric the trials report")
        metric, _ = objectives.metric_name(item["metric"], f"{where}.metric", normalised)
        bounds = [b for b in ("max", "min") if item.get(b) is not None]
        if len(bounds) != 1:
            raise InvalidArgument(where, "give exactly one of max and min")
        constraint = Constraint(metric, bounds[0], to_float(item[bounds[0]], f"{where}.{bounds[0]}"))
        if any(c.metric == metric and c.bound == constraint.bound for c in out):
            raise InvalidArgument(where, f"a second {constraint.bound} on {metric!r}")
        out.append(constraint)
    return tuple(out)


def constraints_dict(constraints: tuple[Constraint, ...]) -> list[dict[str, Any]]:
    """The normalised spec's form of the constraints."""
    return [{"metric": c.metric, c.bound: c.limit} for c in constraints]


def check_initial_configs(raw: Any, space: tuple[Parameter, ...], max_trials: int) -> list[dict[str, Any]]:
    """`spec.initial_configs`, each value checked against its parameter's domain and normalised."""
    path = "spec.initial_configs"
    if not isinstance(raw, list):
        raise InvalidArgument(path, "must be a list")
    if len(raw) > max_trials:
        raise InvalidArgument(path, f"{len(raw)} configs, more than budget.max_trials ({max_trials})")
    out: list[dict[str, Any]] = []
    for i, config in enumerate(raw):
        checked = _initial_config(config, space, f"{path}[{i}]")
        if checked in out:
            raise InvalidArgument(f"{path}[{i}]", f"repeats {path}[{out.index(checked)}]")
        out.append(checked)
    return out


def _initial_config(config: Any, space: tuple[Parameter, ...], path: str) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise InvalidArgument(path, "must be an object of parameter names and values")
    names = {p.name for p in space}
    for name in config:
        if name not in names:
            raise InvalidArgument(f"{path}.{name}", "not a parameter of spec.search_space")
    out: dict[str, Any] = {}
    for param in space:
        if param.name not in config or param.name in out:
            continue
        where = f"{path}.{param.name}"
        condition = param.condition
        if condition is not None and condition.parent not in config:
            raise InvalidArgument(where, f"is conditional on {condition.parent!r}: set it too")
        if not param.is_active(out):
            if any(p.is_active(out) for p in space if p.name == param.name):
                continue  # another alternative of this name is the active one
            parent = condition.parent if condition else ""
            raise InvalidArgument(where, f"is inactive while {parent} is {out.get(parent)!r}")
        out[param.name] = in_domain(param.domain, config[param.name], where)
    return out


def in_domain(domain: IntRange | FloatRange | Choice, value: Any, path: str) -> Any:
    """`value` as the domain holds it (an int for an int range), or InvalidArgument."""
    if isinstance(domain, Choice):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        match = [v for v in domain.values if type(v) is type(value) and v == value]
        if not match:
            raise InvalidArgument(path, f"{value!r} is not one of the choice's values")
        return match[0]
    if isinstance(domain, IntRange):
        number: int | float = to_int(value, path)
        if (number - domain.low) % domain.step:
            raise InvalidArgument(path, f"{number} is off the range's grid (low {domain.low}, step {domain.step})")
    else:
        number = to_float(value, path)
    if not domain.low <= number <= domain.high:
        raise InvalidArgument(path, f"{number} lies outside [{domain.low}, {domain.high}]")
    return number


def check_warm_start(raw: Any) -> list[str]:
    """`spec.warm_start.study_ids`: distinct ids, 1 to MAX_WARM_STUDIES of them."""
    path = "spec.warm_start"
    if not isinstance(raw, dict):
        raise InvalidArgument(path, "must be an object")
    unknown = sorted(set(raw) - {"study_ids"})
    if unknown:
        raise InvalidArgument(f"{path}.{unknown[0]}", "unknown field (a warm start has study_ids)")
    ids = raw.get("study_ids")
    if not isinstance(ids, list) or not ids:
        raise InvalidArgument(f"{path}.study_ids", "name at least one earlier study")
    if len(ids) > MAX_WARM_STUDIES:
        raise InvalidArgument(f"{path}.study_ids", f"more than {MAX_WARM_STUDIES} studies ({len(ids)})")
    for i, study_id in enumerate(ids):
        if not isinstance(study_id, str) or not study_id or len(study_id) > MAX_NAME_CHARS:
            raise InvalidArgument(f"{path}.study_ids[{i}]", f"must be a study id, got {study_id!r}")
        if study_id in ids[:i]:
            raise InvalidArgument(f"{path}.study_ids[{i}]", f"repeats study {study_id!r}")
    return list(ids)


def check_warm_studies(study_ids: list[str], space: tuple[Parameter, ...], store: Store, parser: SpaceChecker) -> None:
    """Each earlier study exists and searches exactly this space (names, domains and conditions)."""
    mine = {(p.name, p.condition): p.domain for p in space}
    for i, study_id in enumerate(study_ids):
        path = f"spec.warm_start.study_ids[{i}]"
        try:
            spec = store.get_study(study_id).spec
        except NotFound:
            raise InvalidArgument(path, f"no study {study_id!r} on this server") from None
        try:
            theirs = {(p.name, p.condition): p.domain for p in parser.parse(spec.get("search_space") or [])}
        except InvalidArgument as exc:
            raise InvalidArgument(path, f"study {study_id!r} has a space this server cannot read: {exc}") from None
        for key, domain in mine.items():
            if key not in theirs:
                raise InvalidArgument(path, f"study {study_id!r} does not search {_named(key)}")
            if theirs[key] != domain:
                why = f"study {study_id!r} searches {_named(key)} over {theirs[key]}, this study over {domain}"
                raise InvalidArgument(path, why)
        extra = next((key for key in theirs if key not in mine), None)
        if extra is not None:
            raise InvalidArgument(path, f"study {study_id!r} also searches {_named(extra)}, which this study does not")


def _named(key: tuple[str, Any]) -> str:
    name, condition = key
    if condition is None:
        return repr(name)
    return f"{name!r} (when {condition.parent} is one of {list(condition.values)})"

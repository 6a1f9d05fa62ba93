"""Validation of a study spec (its proto3-JSON dict form) into a `StudyPlan`.

Every problem raises `InvalidArgument` with the path of the field, e.g.
`spec.search_space[2].int_range: low (5) > high (1)`. The spec dict is produced by the
conversion layer with proto field names; int64 fields may arrive as strings. Sizes are capped
(see `limits`).

Options of type "path" (annotated `DataPath`), set fixed or as choice values, must lie inside the
server's data root, checked by `resolve_data_path`: no `..` component, no absolute path elsewhere,
no symbolic link anywhere along the path that resolves outside, no NUL byte, no overlong path. A
path that does not exist yet is accepted (a dataset may download into it); an empty value means
"none" and is always accepted. With no data root configured every other value is refused. The
plugins check again when a trial opens the path, since files may change in between.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from tuneyard.plugins.api import (
    Bounds,
    Choice,
    Condition,
    FloatRange,
    IntRange,
    Objective,
    Parameter,
    ParamSpec,
    PluginEntry,
    resolve_data_path,
)
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.plugins.schema import MAX_EXACT_INT, coerce_option
from tuneyard.server.limits import (
    MAX_CHOICE_VALUES,
    MAX_GPU_MEMORY_GB,
    MAX_GPUS_PER_TRIAL,
    MAX_NAME_CHARS,
    MAX_NESTING,
    MAX_PARAMETERS,
    MAX_PRIORITY,
    MAX_STRING_CHARS,
    MAX_TRIALS,
    MIN_GPU_SHARE,
)
from tuneyard.server.study.domain import InvalidArgument

METRICS = (
    "val_accuracy",
    "val_loss",
    "train_accuracy",
    "train_loss",
    "params",
    "trainable_params",
    "inference_latency_ms",
    "epoch_seconds",
)
LOWER_IS_BETTER = ("val_loss", "train_loss", "params", "trainable_params", "inference_latency_ms", "epoch_seconds")
COMPONENTS = {"dataset": "dataset", "model": "model", "optimizer": "optimizer", "lr_scheduler": "lr_scheduler"}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DATA_PIPELINES = ("auto", "device", "loader")
MAX_EPOCHS = 100_000
MAX_TRIAL_RETRIES = 100
MAX_ACCUMULATION_STEPS = 1024
# Seeds reach numpy's RandomState (through Optuna's samplers), which takes 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1
# The one definition of every plain training field, checked alike whether a spec fixes it or
# searches it (`training.<field>`): type, bounds and, for strings, the allowed values.
TRAINING_FIELDS: dict[str, ParamSpec] = {
    spec.name: spec
    for spec in (
        ParamSpec("epochs", "int", bounds=Bounds(ge=1, le=MAX_EPOCHS)),
        ParamSpec("batch_size", "int", bounds=Bounds(ge=1, le=MAX_EXACT_INT)),
        ParamSpec("label_smoothing", "float", bounds=Bounds(ge=0, lt=1)),
        ParamSpec("seed", "int", bounds=Bounds(ge=0, le=MAX_SEED)),
        ParamSpec("precision", "str"),
        ParamSpec("grad_clip_norm", "float", bounds=Bounds(ge=0)),
        ParamSpec("grad_accumulation_steps", "int", bounds=Bounds(ge=1, le=MAX_ACCUMULATION_STEPS)),
        ParamSpec("ema_decay", "float", bounds=Bounds(ge=0, lt=1)),
        ParamSpec("early_stop_patience", "int", bounds=Bounds(ge=0, le=MAX_EPOCHS)),
        ParamSpec("deterministic", "bool"),
        ParamSpec("data_pipeline", "str"),
    )
}
TRAINING_CHOICES = {"precision": PRECISIONS, "data_pipeline": DATA_PIPELINES}
# A fixed field left at its proto3 zero value takes this default ("" and 0 mean "not set").
TRAINING_DEFAULTS: dict[str, Any] = {
    "batch_size": 64,
    "label_smoothing": 0.0,
    "seed": 0,
    "precision": "auto",
    "grad_clip_norm": 0.0,
    "grad_accumulation_steps": 1,
    "ema_decay": 0.0,
    "early_stop_patience": 0,
    "deterministic": False,
    "data_pipeline": "auto",
}
DEFAULT_OPTIMIZER = "adam"
DEFAULT_SEARCHER = "random"


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


_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,20}")


def _int(value: Any, path: str, limit: int | None = MAX_EXACT_INT) -> int:
    """An integer field's value, exactly: int64 fields arrive as decimal strings and must not pass
    through float (2**53 + 1 would silently become 2**53); numbers beyond 2**53 are refused."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        number = int(value.strip())
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        raise InvalidArgument(path, f"expected an integer, got {value!r}")
    if not -(2**63) <= number < 2**63:
        raise InvalidArgument(path, f"out of the range of a 64-bit integer: {value!r}")
    if limit is not None and abs(number) > limit:
        raise InvalidArgument(path, f"must be between {-limit} and {limit}, got {value}")
    return number


def _float(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidArgument(path, f"expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidArgument(path, f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InvalidArgument(path, f"must be finite, got {value!r}")
    return number


def check_training_value(name: str, value: Any, path: str) -> Any:
    """One training field's value in its type, or InvalidArgument: the same check for a fixed value,
    each searched choice value and both ends of a searched range."""
    field = TRAINING_FIELDS[name]
    if field.type == "int":  # its own bounds, all within 2**53, say best what is wrong
        value = _int(value, path, limit=None)
        problem = field.bounds.problem(value) if field.bounds else None
        if problem:
            raise InvalidArgument(path, problem)
    try:
        checked = coerce_option(field, value)
    except ValueError as exc:
        raise InvalidArgument(path, str(exc)) from None
    allowed = TRAINING_CHOICES.get(name)
    if allowed is not None and checked not in allowed:
        raise InvalidArgument(path, f"must be one of {', '.join(allowed)}, got {checked!r}")
    return checked


def _duration_s(value: Any, path: str) -> float | None:
    if value in (None, "", "0s"):
        return None
    if not isinstance(value, str) or not value.endswith("s"):
        raise InvalidArgument(path, f"expected a duration like '7200s', got {value!r}")
    try:
        seconds = float(value[:-1])
    except ValueError:
        raise InvalidArgument(path, f"expected a duration like '7200s', got {value!r}") from None
    if seconds < 0:
        raise InvalidArgument(path, "must not be negative")
    return seconds or None


def _check_shape(value: Any, path: str, depth: int = 0) -> None:
    """Refuses objects and lists more than MAX_NESTING levels below `spec` (`value` is at `depth`),
    keys longer than MAX_NAME_CHARS and strings longer than MAX_STRING_CHARS."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        if isinstance(key, str) and len(key) > MAX_NAME_CHARS:
            raise InvalidArgument(path, f"has a key longer than {MAX_NAME_CHARS} characters")
        child_path = f"{path}[{key}]" if isinstance(value, list) else f"{path}.{key}"
        if isinstance(child, str) and len(child) > MAX_STRING_CHARS:
            raise InvalidArgument(child_path, f"longer than {MAX_STRING_CHARS} characters ({len(child)})")
        if not isinstance(child, (dict, list)):
            continue
        if depth + 1 > MAX_NESTING:
            raise InvalidArgument(child_path, f"nested deeper than {MAX_NESTING} levels")
        _check_shape(child, child_path, depth + 1)


class _Alternatives:
    """The parameters that share one name so far. A name may repeat only as alternatives: conditions
    on one parent with disjoint values (that is how each optimizer gets its own `optimizer.lr` range).
    Checking a new one against the union of the values taken is linear in the spec's size."""

    def __init__(self, first: Parameter) -> None:
        self.first = first
        self.taken: set[Any] = set(first.condition.values) if first.condition else set()

    def add(self, param: Parameter, path: str) -> None:
        a, b = param.condition, self.first.condition
        if a is None or b is None or a.parent != b.parent or not self.taken.isdisjoint(a.values):
            raise InvalidArgument(
                path,
                f"{param.name!r} appears twice; repeat a name only under conditions on one parent with disjoint values",
            )
        self.taken.update(a.values)


class SpecValidator:
    """Checks a spec against the plugin registry; one instance serves every request.

    `data_root` is the server's `--data-root`: path options must lie inside it. "" means none is
    configured, and then only empty path values pass.
    """

    def __init__(self, registry: PluginRegistry, data_root: str = "") -> None:
        self.registry = registry
        self.data_root = data_root

    def _check_path(self, param: ParamSpec, value: Any, path: str) -> None:
        if param.type == "path" and value:
            try:
                resolve_data_path(self.data_root, value)
            except ValueError as exc:
                raise InvalidArgument(path, str(exc)) from None

    # ---- components and options ----

    def _plugin(self, kind: str, name: Any, path: str) -> PluginEntry:
        if not isinstance(name, str) or not name:
            raise InvalidArgument(path, f"a {kind} name is required")
        try:
            return self.registry.get(kind, name)
        except KeyError:
            known = ", ".join(self.registry.names(kind)) or "none installed"
            raise InvalidArgument(path, f"unknown {kind} {name!r} (known: {known})") from None

    def _options(self, entry: PluginEntry, options: Any, path: str) -> dict[str, Any]:
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise InvalidArgument(path, "must be an object")
        checked: dict[str, Any] = {}
        for key, value in options.items():
            param = entry.param(key)
            if param is None:
                known = ", ".join(p.name for p in entry.parameters) or "none"
                raise InvalidArgument(
                    f"{path}.{key}", f"unknown option of {entry.kind} {entry.name!r} (known: {known})"
                )
            try:
                checked[key] = coerce_option(param, value)
            except ValueError as exc:
                raise InvalidArgument(f"{path}.{key}", str(exc)) from None
            self._check_path(param, checked[key], f"{path}.{key}")
        return checked

    def _component(
        self, kind: str, value: Any, path: str, *, default: str | None = None, optional: bool = False
    ) -> dict[str, Any] | None:
        value = value or {}
        if not isinstance(value, dict):
            raise InvalidArgument(path, "must be an object")
        name = value.get("name") or default
        if not name:
            if optional and not value.get("options"):
                return None
            raise InvalidArgument(f"{path}.name", f"a {kind} name is required")
        entry = self._plugin(kind, name, f"{path}.name")
        return {"name": entry.name, "options": self._options(entry, value.get("options"), f"{path}.options")}

    # ---- the spec ----

    def validate(self, spec: dict[str, Any]) -> StudyPlan:
        if not isinstance(spec, dict):
            raise InvalidArgument("spec", "must be an object")
        _check_shape(spec, "spec")
        out: dict[str, Any] = {"name": str(spec.get("name", ""))}
        if len(out["name"]) > MAX_NAME_CHARS:
            raise InvalidArgument("spec.name", f"longer than {MAX_NAME_CHARS} characters")
        out["dataset"] = self._component("dataset", spec.get("dataset"), "spec.dataset")
        out["model"] = self._component("model", spec.get("model"), "spec.model")
        out["training"] = self._training(spec.get("training") or {})
        searcher = self._component("searcher", spec.get("searcher"), "spec.searcher", default=DEFAULT_SEARCHER)
        out["searcher"] = searcher
        stopper = self._component("early_stopper", spec.get("early_stopping"), "spec.early_stopping", optional=True)
        if stopper:
            out["early_stopping"] = stopper
        objectives = self._objectives(spec)
        objective = objectives[0]
        as_dict = [{"metric": o.metric, "mode": "MAXIMIZE" if o.mode == "max" else "MINIMIZE"} for o in objectives]
        out["objective"] = as_dict[0]
        if len(objectives) > 1:
            out["objectives"] = as_dict
        space = self._space(spec.get("search_space") or [], out)
        out["search_space"] = spec.get("search_space") or []
        budget = spec.get("budget") or {}
        max_trials, concurrent, failures, duration, retries = self._budget(budget)
        out["budget"] = budget
        out["resources"] = self._resources(spec.get("resources") or {})
        return StudyPlan(
            spec=out,
            space=space,
            objective=objective,
            objectives=objectives,
            max_trials=max_trials,
            max_concurrent_trials=concurrent,
            max_failures=failures,
            max_duration_s=duration,
            seed=out["training"]["seed"],
            trial_retries=retries,
        )

    def _training(self, training: Any) -> dict[str, Any]:
        path = "spec.training"
        if not isinstance(training, dict):
            raise InvalidArgument(path, "must be an object")
        if not training.get("epochs"):
            raise InvalidArgument(f"{path}.epochs", f"must be between 1 and {MAX_EPOCHS}, got 0")
        out: dict[str, Any] = {}
        for name in TRAINING_FIELDS:
            value = training.get(name)
            if value in (None, "", 0) and name in TRAINING_DEFAULTS:
                out[name] = TRAINING_DEFAULTS[name]
            else:
                out[name] = check_training_value(name, value, f"{path}.{name}")
        augmentations = []
        seen: set[str] = set()
        for i, aug in enumerate(training.get("augmentations") or []):
            checked = self._component("augmentation", aug, f"{path}.augmentations[{i}]")
            assert checked is not None
            if checked["name"] in seen:
                raise InvalidArgument(f"{path}.augmentations[{i}].name", f"{checked['name']!r} listed twice")
            seen.add(checked["name"])
            augmentations.append(checked)
        out["optimizer"] = self._component(
            "optimizer", training.get("optimizer"), f"{path}.optimizer", default=DEFAULT_OPTIMIZER
        )
        out["lr_scheduler"] = self._component(
            "lr_scheduler", training.get("lr_scheduler"), f"{path}.lr_scheduler", optional=True
        )
        out["augmentations"] = augmentations
        return out

    def _objectives(self, spec: dict[str, Any]) -> tuple[Objective, ...]:
        """`objective`, or several `objectives` (the first guides searchers and early stoppers)."""
        many = spec.get("objectives") or []
        if not isinstance(many, list):
            raise InvalidArgument("spec.objectives", "must be a list")
        if many and spec.get("objective"):
            raise InvalidArgument("spec.objectives", "give either objective or objectives, not both")
        if not many:
            return (self._objective(spec.get("objective") or {}, "spec.objective"),)
        objectives = tuple(self._objective(o, f"spec.objectives[{i}]") for i, o in enumerate(many))
        metrics = [o.metric for o in objectives]
        if len(set(metrics)) != len(metrics):
            raise InvalidArgument("spec.objectives", "each metric may appear once")
        return objectives

    def _objective(self, objective: Any, path: str) -> Objective:
        if not isinstance(objective, dict):
            raise InvalidArgument(path, "must be an object")
        metric = objective.get("metric") or "val_accuracy"
        if metric not in METRICS:
            raise InvalidArgument(f"{path}.metric", f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
        mode = objective.get("mode") or ("MINIMIZE" if metric in LOWER_IS_BETTER else "MAXIMIZE")
        if mode not in ("MAXIMIZE", "MINIMIZE"):
            raise InvalidArgument(f"{path}.mode", f"must be MAXIMIZE or MINIMIZE, got {mode!r}")
        return Objective(metric=metric, mode="max" if mode == "MAXIMIZE" else "min")

    def _budget(self, budget: Any) -> tuple[int, int, int, float | None, int]:
        path = "spec.budget"
        if not isinstance(budget, dict):
            raise InvalidArgument(path, "must be an object")
        max_trials = _int(budget.get("max_trials", 0), f"{path}.max_trials")
        if not 0 < max_trials <= MAX_TRIALS:
            raise InvalidArgument(f"{path}.max_trials", f"must be between 1 and {MAX_TRIALS}, got {max_trials}")
        concurrent = _int(budget.get("max_concurrent_trials", 0), f"{path}.max_concurrent_trials")
        if concurrent < 0:
            raise InvalidArgument(f"{path}.max_concurrent_trials", f"must not be negative, got {concurrent}")
        failures = _int(budget.get("max_failures", 0), f"{path}.max_failures")
        if failures < 0:
            raise InvalidArgument(f"{path}.max_failures", f"must not be negative, got {failures}")
        duration = _duration_s(budget.get("max_duration"), f"{path}.max_duration")
        retries = _int(budget.get("trial_retries", 0), f"{path}.trial_retries")
        if not 0 <= retries <= MAX_TRIAL_RETRIES:
            raise InvalidArgument(f"{path}.trial_retries", f"must be between 0 and {MAX_TRIAL_RETRIES}, got {retries}")
        return max_trials, concurrent or max_trials, failures, duration, retries

    def _resources(self, resources: Any) -> dict[str, Any]:
        path = "spec.resources"
        if not isinstance(resources, dict):
            raise InvalidArgument(path, "must be an object")
        gpus = _float(resources.get("gpus_per_trial", 0.0), f"{path}.gpus_per_trial")
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
        priority = _float(resources.get("priority", 0.0), f"{path}.priority") or 1.0
        if not 0 < priority <= MAX_PRIORITY:
            raise InvalidArgument(f"{path}.priority", f"must be positive and at most {MAX_PRIORITY:g}, got {priority}")
        memory = _float(resources.get("gpu_memory_gb", 0.0), f"{path}.gpu_memory_gb")
        if memory < 0:
            raise InvalidArgument(f"{path}.gpu_memory_gb", f"must not be negative, got {memory:g}")
        if memory > MAX_GPU_MEMORY_GB:
            raise InvalidArgument(f"{path}.gpu_memory_gb", f"must be at most {MAX_GPU_MEMORY_GB:g} GiB, got {memory:g}")
        return {"gpus_per_trial": gpus, "priority": priority, "gpu_memory_gb": memory}

    # ---- search space ----

    def _space(self, params: Any, spec: dict[str, Any]) -> tuple[Parameter, ...]:
        if not isinstance(params, list):
            raise InvalidArgument("spec.search_space", "must be a list")
        if len(params) > MAX_PARAMETERS:
            raise InvalidArgument("spec.search_space", f"more than {MAX_PARAMETERS} parameters ({len(params)})")
        out: list[Parameter] = []
        names: dict[str, Parameter] = {}
        alternatives: dict[str, _Alternatives] = {}
        for i, raw in enumerate(params):
            path = f"spec.search_space[{i}]"
            if not isinstance(raw, dict):
                raise InvalidArgument(path, "must be an object")
            name = raw.get("name")
            if not isinstance(name, str) or not name:
                raise InvalidArgument(f"{path}.name", "required")
            if len(name) > MAX_NAME_CHARS:
                raise InvalidArgument(f"{path}.name", f"longer than {MAX_NAME_CHARS} characters")
            domain = self._domain(raw, path)
            condition = self._condition(raw.get("condition"), names, f"{path}.condition")
            param = Parameter(name=name, domain=domain, condition=condition)
            if name in alternatives:
                alternatives[name].add(param, f"{path}.name")
            else:
                alternatives[name] = _Alternatives(param)
            self._check_target(param, spec, names, path)
            names.setdefault(name, param)
            out.append(param)
        return tuple(out)

    def _domain(self, raw: dict[str, Any], path: str) -> IntRange | FloatRange | Choice:
        present = [k for k in ("int_range", "float_range", "choice") if k in raw]
        if len(present) != 1:
            raise InvalidArgument(path, "exactly one of int_range, float_range, choice is required")
        kind = present[0]
        body = raw[kind] or {}
        p = f"{path}.{kind}"
        if kind == "choice":
            values = body.get("values") or []
            if not values:
                raise InvalidArgument(f"{p}.values", "must not be empty")
            if len(values) > MAX_CHOICE_VALUES:
                raise InvalidArgument(f"{p}.values", f"more than {MAX_CHOICE_VALUES} values ({len(values)})")
            if len({repr(v) for v in values}) != len(values):
                raise InvalidArgument(f"{p}.values", "values must be distinct")
            return Choice(values=tuple(int(v) if isinstance(v, float) and v.is_integer() else v for v in values))
        low: int | float
        high: int | float
        if kind == "int_range":
            low = _int(body.get("low", 0), f"{p}.low")
            high = _int(body.get("high", 0), f"{p}.high")
            step = _int(body.get("step", 0), f"{p}.step") or 1
            log = bool(body.get("log", False))
            if step < 0:
                raise InvalidArgument(f"{p}.step", f"must be positive, got {step}")
            if log and step != 1:
                raise InvalidArgument(f"{p}.step", "log ranges take no step")
            result: IntRange | FloatRange = IntRange(low=low, high=high, log=log, step=step)
        else:
            low, high = _float(body.get("low", 0.0), f"{p}.low"), _float(body.get("high", 0.0), f"{p}.high")
            log = bool(body.get("log", False))
            result = FloatRange(low=low, high=high, log=log)
        if low > high:
            raise InvalidArgument(p, f"low ({low}) > high ({high})")
        if log and low <= 0:
            raise InvalidArgument(f"{p}.low", f"a log range needs low > 0, got {low}")
        return result

    def _condition(self, raw: Any, names: dict[str, Parameter], path: str) -> Condition | None:
        if not raw:
            return None
        parent = raw.get("parent")
        if parent not in names:
            raise InvalidArgument(f"{path}.parent", f"{parent!r} is not a parameter listed before this one")
        values = raw.get("values") or []
        if not values:
            raise InvalidArgument(f"{path}.values", "must not be empty")
        if len(values) > MAX_CHOICE_VALUES:
            raise InvalidArgument(f"{path}.values", f"more than {MAX_CHOICE_VALUES} values ({len(values)})")
        for j, value in enumerate(values):
            if isinstance(value, (dict, list)):  # conditions compare values as set members
                why = f"must be a string, number or bool, got a {type(value).__name__}"
                raise InvalidArgument(f"{path}.values[{j}]", why)
        values = tuple(int(v) if isinstance(v, float) and v.is_integer() else v for v in values)
        return Condition(parent=parent, values=values)

    def _check_target(self, param: Parameter, spec: dict[str, Any], names: dict[str, Parameter], path: str) -> None:
        """Resolves the parameter's address and checks its domain against the setting's type."""
        parts = param.name.split(".")
        head = parts[0]
        where = f"{path}.name"
        if head == "training" and len(parts) == 2:
            if parts[1] not in TRAINING_FIELDS:
                known = ", ".join(TRAINING_FIELDS)
                raise InvalidArgument(where, f"unknown training field {parts[1]!r} (searchable: {known})")
            self._check_training_values(param, parts[1], path)
            return
        if head == "augmentations" and len(parts) == 3:
            listed = {a["name"]: a for a in spec["training"]["augmentations"]}
            if parts[1] not in listed:
                raise InvalidArgument(where, f"augmentation {parts[1]!r} is not in spec.training.augmentations")
            entry = self.registry.get("augmentation", parts[1])
            self._check_option(param, [entry], parts[2], path)
            return
        if head in COMPONENTS and len(parts) == 2:
            kind = COMPONENTS[head]
            if parts[1] == "name":
                self._check_names(param, kind, path)
                return
            self._check_option(param, self._candidates(head, kind, spec, names, param), parts[1], path)
            return
        raise InvalidArgument(
            where,
            f"unknown parameter path {param.name!r} (use <component>.name, <component>.<option>, "
            "augmentations.<name>.<option> or training.<field>)",
        )

    def _check_names(self, param: Parameter, kind: str, path: str) -> None:
        if not isinstance(param.domain, Choice):
            raise InvalidArgument(path, f"{param.name} needs a choice of {kind} names")
        for j, name in enumerate(param.domain.values):
            self._plugin(kind, name, f"{path}.choice.values[{j}]")

    def _candidates(
        self, head: str, kind: str, spec: dict[str, Any], names: dict[str, Parameter], param: Parameter
    ) -> list[PluginEntry]:
        """The plugins an option parameter may apply to: the searched names, narrowed by its condition."""
        chooser = names.get(f"{head}.name")
        if chooser is not None and isinstance(chooser.domain, Choice):
            picked = list(chooser.domain.values)
            if param.condition and param.condition.parent == chooser.name:
                picked = [v for v in picked if v in param.condition.values]
            return [self.registry.get(kind, n) for n in picked]
        base = spec["training"][head] if head in ("optimizer", "lr_scheduler") else spec[head]
        if base is None:
            raise InvalidArgument(f"{param.name}", f"spec has no {head} to set an option of")
        return [self.registry.get(kind, base["name"])]

    def _check_option(self, param: Parameter, entries: list[PluginEntry], option: str, path: str) -> None:
        targets = []
        for entry in entries:
            spec_param = entry.param(option)
            if spec_param is None:
                raise InvalidArgument(
                    f"{path}.name",
                    f"{entry.kind} {entry.name!r} has no option {option!r}"
                    + (" (add a condition on the name parameter)" if len(entries) > 1 else ""),
                )
            targets.append((spec_param, spec_param.type))
        self._check_values(param, targets, path)

    def _check_values(self, param: Parameter, targets: list[tuple[ParamSpec, str]], path: str) -> None:
        """Every value the parameter can take must be one its targets accept: each choice value, and
        the ends of a range (bounds are intervals, so the ends stand for all values between)."""
        domain = param.domain
        for spec_param, kind in targets:
            if isinstance(domain, FloatRange) and kind not in ("float", "any"):
                raise InvalidArgument(path, f"float_range cannot set {param.name}, which takes {kind}")
            if isinstance(domain, IntRange) and kind not in ("int", "float", "any"):
                raise InvalidArgument(path, f"int_range cannot set {param.name}, which takes {kind}")
            for where, value in _values_to_check(domain, path):
                try:
                    coerced = coerce_option(spec_param, value)
                except ValueError as exc:
                    raise InvalidArgument(where, str(exc)) from None
                self._check_path(spec_param, coerced, where)

    def _check_training_values(self, param: Parameter, field: str, path: str) -> None:
        kind = TRAINING_FIELDS[field].type
        if isinstance(param.domain, FloatRange) and kind != "float":
            raise InvalidArgument(path, f"float_range cannot set {param.name}, which takes {kind}")
        if isinstance(param.domain, IntRange) and kind not in ("int", "float"):
            raise InvalidArgument(path, f"int_range cannot set {param.name}, which takes {kind}")
        for where, value in _values_to_check(param.domain, path):
            check_training_value(field, value, where)


def _values_to_check(domain: IntRange | FloatRange | Choice, path: str) -> list[tuple[str, Any]]:
    """(field path, value) for each value of a choice, or the lowest and highest value of a range."""
    if isinstance(domain, Choice):
        return [(f"{path}.choice.values[{j}]", value) for j, value in enumerate(domain.values)]
    if isinstance(domain, IntRange):
        top = domain.low + (domain.high - domain.low) // domain.step * domain.step
        return [(f"{path}.int_range.low", domain.low), (f"{path}.int_range.high", top)]
    return [(f"{path}.float_range.low", domain.low), (f"{path}.float_range.high", domain.high)]

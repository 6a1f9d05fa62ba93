"""Checks a spec's search space: each parameter's domain and condition, and that what it sets exists
and takes every value the parameter can take (`<component>.name`, `<component>.<option>`,
`augmentations.<name>.<option>` or `training.<field>`)."""

from __future__ import annotations

from typing import Any

from tuneyard.plugins.api import Choice, Condition, FloatRange, IntRange, Parameter, ParamSpec, PluginEntry
from tuneyard.plugins.schema import coerce_option
from tuneyard.server.limits import MAX_CHOICE_VALUES, MAX_NAME_CHARS, MAX_PARAMETERS
from tuneyard.server.study.domain import InvalidArgument
from tuneyard.server.study.settings import COMPONENTS, TRAINING_FIELDS
from tuneyard.server.study.spec_components import ComponentChecker
from tuneyard.server.study.spec_trainer import check_searched
from tuneyard.server.study.spec_training import check_training_value
from tuneyard.server.study.spec_values import to_float, to_int


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


class SpaceChecker:
    """Checks the search space of a spec whose other sections are already normalised."""

    def __init__(self, components: ComponentChecker) -> None:
        self.components = components

    def check(self, params: Any, spec: dict[str, Any]) -> tuple[Parameter, ...]:
        """The parameters in order; a condition's parent must be listed before it."""
        return self.parse(params, spec)

    def parse(self, params: Any, spec: dict[str, Any] | None = None) -> tuple[Parameter, ...]:
        """The parameters with their domains and conditions checked; with `spec` (normalised), also
        what each sets. Without it, only the space itself (another study's, to compare with)."""
        if not isinstance(params, list):
            raise InvalidArgument("spec.search_space", "must be a list")
        if len(params) > MAX_PARAMETERS:
            raise InvalidArgument("spec.search_space", f"more than {MAX_PARAMETERS} parameters ({len(params)})")
        out: list[Parameter] = []
        names: dict[str, Parameter] = {}
        alternatives: dict[str, _Alternatives] = {}
        for i, raw in enumerate(params):
            path = f"spec.search_space[{i}]"
            param = self._parameter(raw, path, names)
            if param.name in alternatives:
                alternatives[param.name].add(param, f"{path}.name")
            else:
                alternatives[param.name] = _Alternatives(param)
            if spec is not None:
                self._check_target(param, spec, names, path)
            names.setdefault(param.name, param)
            out.append(param)
        return tuple(out)

    def _parameter(self, raw: Any, path: str, names: dict[str, Parameter]) -> Parameter:
        if not isinstance(raw, dict):
            raise InvalidArgument(path, "must be an object")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"{path}.name", "required")
        if len(name) > MAX_NAME_CHARS:
            raise InvalidArgument(f"{path}.name", f"longer than {MAX_NAME_CHARS} characters")
        domain = self._domain(raw, path)
        condition = self._condition(raw.get("condition"), names, f"{path}.condition")
        return Parameter(name=name, domain=domain, condition=condition)

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
            low = to_int(body.get("low", 0), f"{p}.low")
            high = to_int(body.get("high", 0), f"{p}.high")
            step = to_int(body.get("step", 0), f"{p}.step") or 1
            log = bool(body.get("log", False))
            if step < 0:
                raise InvalidArgument(f"{p}.step", f"must be positive, got {step}")
            if log and step != 1:
                raise InvalidArgument(f"{p}.step", "log ranges take no step")
            result: IntRange | FloatRange = IntRange(low=low, high=high, log=log, step=step)
        else:
            low, high = to_float(body.get("low", 0.0), f"{p}.low"), to_float(body.get("high", 0.0), f"{p}.high")
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
        if check_searched(param, spec, self.components, path):
            return
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
            entry = self.components.registry.get("augmentation", parts[1])
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
            self.components.plugin(kind, name, f"{path}.choice.values[{j}]")

    def _candidates(
        self, head: str, kind: str, spec: dict[str, Any], names: dict[str, Parameter], param: Parameter
    ) -> list[PluginEntry]:
        """The plugins an option parameter may apply to: the searched names, narrowed by its condition."""
        chooser = names.get(f"{head}.name")
        if chooser is not None and isinstance(chooser.domain, Choice):
            picked = list(chooser.domain.values)
            if param.condition and param.condition.parent == chooser.name:
                picked = [v for v in picked if v in param.condition.values]
            return [self.components.registry.get(kind, n) for n in picked]
        base = spec["training"].get(head) if head in ("optimizer", "lr_scheduler") else spec.get(head)
        if base is None:
            raise InvalidArgument(f"{param.name}", f"spec has no {head} to set an option of")
        return [self.components.registry.get(kind, base["name"])]

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
                self.components.check_path(spec_param, coerced, where)

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

"""Checks a spec's `training` section: the plain fields declared by `TrainingSettings`, the optimizer,
the learning-rate schedule and the augmentations. Every default is applied here, once."""

from __future__ import annotations

from typing import Any

from tuneyard.plugins.schema import coerce_option
from tuneyard.server.study.domain import InvalidArgument
from tuneyard.server.study.settings import MAX_EPOCHS, TRAINING_CHOICES, TRAINING_DEFAULTS, TRAINING_FIELDS
from tuneyard.server.study.spec_components import ComponentChecker
from tuneyard.server.study.spec_values import to_int

DEFAULT_OPTIMIZER = "adam"


def check_training_value(name: str, value: Any, path: str) -> Any:
    """One training field's value in its type, or InvalidArgument: the same check for a fixed value,
    each searched choice value and both ends of a searched range."""
    field = TRAINING_FIELDS[name]
    if field.type == "int":  # its own bounds, all within 2**53, say best what is wrong
        value = to_int(value, path, limit=None)
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


def check_training(training: Any, components: ComponentChecker) -> dict[str, Any]:
    """The normalised `training` section: every plain field set (its default where the spec left it
    at proto3's zero value), the optimizer (adam by default), the schedule or None, the augmentations."""
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
    augmentations = _augmentations(training.get("augmentations") or [], components, f"{path}.augmentations")
    out["optimizer"] = components.component(
        "optimizer", training.get("optimizer"), f"{path}.optimizer", default=DEFAULT_OPTIMIZER
    )
    out["lr_scheduler"] = components.component(
        "lr_scheduler", training.get("lr_scheduler"), f"{path}.lr_scheduler", optional=True
    )
    out["augmentations"] = augmentations
    return out


def _augmentations(raw: Any, components: ComponentChecker, path: str) -> list[dict[str, Any]]:
    """Each listed augmentation checked; a name may be listed once (searched options address it by name)."""
    augmentations = []
    seen: set[str] = set()
    for i, aug in enumerate(raw):
        checked = components.component("augmentation", aug, f"{path}[{i}]")
        assert checked is not None
        if checked["name"] in seen:
            raise InvalidArgument(f"{path}[{i}].name", f"{checked['name']!r} listed twice")
        seen.add(checked["name"])
        augmentations.append(checked)
    return augmentations

"""What a `register(...)` call may say, checked before its plugin enters the registry.

A registration that the server could not honour (a bad name, an unknown flag, bounds that admit no
value or exclude the default, a task's malformed metrics) is refused here, at start-up, as a load
error, rather than met by a user later.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

from tuneyard.plugins.api import METRIC_MODES, REQUIRED, Bounds, Metric, ParamSpec
from tuneyard.plugins.schema import coerce_option

_EXTRAS: dict[str, frozenset[str]] = {
    "augmentation": frozenset({"batch_level"}),
    "lr_scheduler": frozenset({"interval", "monitor"}),
    "dataset": frozenset({"task"}),
    "task": frozenset({"metrics"}),
    "model": frozenset({"fusable_options"}),
}
# LR schedulers' register(interval=...): when the trainer calls scheduler.step().
_INTERVALS: tuple[str, ...] = ("batch", "epoch")
RESERVED_METRICS = ("loss", "seconds")  # the trainer reports <split>_loss and train_seconds itself
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")


def check_registration(kind: str, name: Any, factory: Any, description: Any, extra: dict[str, Any]) -> str | None:
    if not isinstance(name, str) or not _NAME.match(name):
        return "a name is letters, digits, '_' and '-' (no dots or spaces)"
    if not callable(factory):
        return f"factory {factory!r} is not callable"
    if not isinstance(description, str):
        return "description must be a string"
    unknown = sorted(set(extra) - _EXTRAS.get(kind, frozenset()))
    if unknown:
        return f"unknown register() argument {unknown[0]!r} for kind {kind}"
    if kind == "lr_scheduler":
        interval = extra.get("interval", "epoch")
        if not isinstance(interval, str) or interval not in _INTERVALS:
            return f"interval must be one of {', '.join(map(repr, _INTERVALS))}, got {interval!r}"
        monitor = extra.get("monitor", "")
        if not isinstance(monitor, str):
            return f"monitor must be a metric name (a string, or '' for none), got {monitor!r}"
    if kind == "dataset" and not (isinstance(extra.get("task", ""), str) and _NAME.match(extra.get("task") or "x")):
        return f"task must be a task plugin's name, got {extra.get('task')!r}"
    if kind == "task":
        return _metrics_problem(extra.get("metrics", {}))
    if kind == "model":
        return _fusable_problem(factory, extra.get("fusable_options", ()))
    return None


def _fusable_problem(factory: Any, options: Any) -> str | None:
    if isinstance(options, str) or not all(isinstance(o, str) for o in options or ()):
        return f"fusable_options must be a list of option names, got {options!r}"
    known = set(inspect.signature(factory).parameters)
    unknown = [o for o in options or () if o not in known]
    if unknown:
        return f"fusable_options names {unknown[0]!r}, which is not an option of the factory"
    return None


def _metrics_problem(metrics: Any) -> str | None:
    if not isinstance(metrics, Mapping):
        return f"metrics must map metric names to 'min' or 'max', got {type(metrics).__name__}"
    for name, mode in metrics.items():
        if not isinstance(name, str) or not _NAME.match(name):
            return f"a metric name is letters, digits, '_' and '-', got {name!r}"
        if name in RESERVED_METRICS:
            return f"metric {name!r} would clash with the trainer's own <split>_{name} or train_{name}"
        if mode not in METRIC_MODES:
            return f"metric {name!r}: the mode must be 'min' or 'max', got {mode!r}"
    return None


def entry_flags(kind: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The kind-specific fields of a `PluginEntry` from a checked registration's flags."""
    flags: dict[str, Any] = {
        "batch_level": bool(extra.get("batch_level", False)),
        "interval": str(extra.get("interval", "epoch")),
        "monitor": str(extra.get("monitor", "")),
        "metrics": tuple(Metric(name, mode) for name, mode in (extra.get("metrics") or {}).items()),
    }
    if kind == "dataset" and extra.get("task"):
        flags["task"] = extra["task"]
    if kind == "model":
        flags["fusable_options"] = tuple(extra.get("fusable_options") or ())
    return flags


def bounded(params: tuple[ParamSpec, ...], bounds: Mapping[str, Bounds] | None) -> tuple[ParamSpec, ...]:
    """``params`` with the declared ``bounds`` stored in them.

    A declaration the server could not enforce is refused here, at start-up, rather than met by a
    user later: ValueError for an unknown or non-numeric option, a limit that is not a number, bounds
    that admit no value, or a default that lies outside them.
    """
    if bounds is None:
        return params
    if not isinstance(bounds, Mapping):
        raise ValueError(f"bounds must map option names to Bounds, got {type(bounds).__name__}")
    by_name = {p.name: p for p in params}
    for option, limits in bounds.items():
        param = by_name.get(option) if isinstance(option, str) else None
        if param is None:
            known = ", ".join(by_name) or "none"
            raise ValueError(f"bounds name {option!r}, which is not an option of the factory (options: {known})")
        problem = _bounds_problem(param, limits)
        if problem is not None:
            raise ValueError(f"bounds of option {option!r}: {problem}")
        by_name[option] = replace(param, bounds=limits)
    return tuple(by_name.values())


def _bounds_problem(param: ParamSpec, limits: Any) -> str | None:
    """Why ``limits`` cannot bound ``param`` (None when they can)."""
    if param.type not in ("int", "float"):
        return f"only int and float options take bounds, and this one takes {param.type}"
    if not isinstance(limits, Bounds):
        return f"expected tuneyard.plugins.api.Bounds, got {limits!r}"
    for limit in fields(Bounds):
        value = getattr(limits, limit.name)
        if value is not None and not _is_number(value):
            return f"{limit.name} must be a number, got {value!r}"
    if _empty(limits):
        return f"{limits.describe()} admits no value"
    if param.default is REQUIRED or param.default is None:
        return None
    try:
        coerce_option(replace(param, bounds=limits), param.default)
    except ValueError as exc:
        return f"the default {param.default!r} is outside them ({exc})"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _empty(limits: Bounds) -> bool:
    """True when no number satisfies every limit at once (e.g. ``ge=5, le=1`` or ``gt=1, lt=1``)."""
    lows = ((limits.ge, False), (limits.gt, True))  # (limit, exclusive)
    highs = ((limits.le, False), (limits.lt, True))
    return any(
        low is not None and high is not None and (low > high or (low == high and (open_low or open_high)))
        for low, open_low in lows
        for high, open_high in highs
    )

"""How the Optuna adapters name and sample our space (a private module of the built-in searchers):
one Optuna name per parameter (`internal_names`), a choice by its index (`internal_values`), and
each domain's `trial.suggest_*` call (`suggest_one`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tuneyard.plugins.api import Choice, FloatRange, IntRange, Parameter
from tuneyard.plugins.builtin.searchers import space as _space
from tuneyard.plugins.builtin.searchers.space import Config


def internal_names(space: Sequence[Parameter]) -> list[str]:
    """Our names, made distinct for alternatives: `name|value,value` of the condition."""
    counts: dict[str, int] = {}
    for p in space:
        counts[p.name] = counts.get(p.name, 0) + 1
    out: list[str] = []
    for p in space:
        name = p.name
        if counts[p.name] > 1 and p.condition is not None:
            name = f"{p.name}|{','.join(str(v) for v in p.condition.values)}"
        while name in out:
            name += "'"
        out.append(name)
    return out


def internal_values(space: Sequence[Parameter], names: Sequence[str], config: Config) -> dict[str, Any]:
    """`config`'s values under Optuna's names (a choice by its index)."""
    fixed = {}
    for i in _space.active_indices(space, config):
        d, value = space[i].domain, config[space[i].name]
        fixed[names[i]] = d.values.index(value) if isinstance(d, Choice) else value
    return fixed


def suggest_one(trial: Any, name: str, d: IntRange | FloatRange | Choice) -> Any:
    """One parameter's value, from the `trial.suggest_*` call that matches its domain."""
    if isinstance(d, Choice):
        return d.values[trial.suggest_categorical(name, list(range(len(d.values))))]
    if isinstance(d, IntRange):
        count = _space.int_count(d)
        high = int(d.low) + int(d.step) * (count - 1)
        if count > _space.ENUMERATION_LIMIT:  # GPSampler lists a discrete range's values: search it as floats
            return _space.snap(d, trial.suggest_float(name, float(d.low), float(high), log=d.log))
        if d.log and d.step > 1:  # Optuna has no log range with a step: snap to the grid
            return _space.snap(d, trial.suggest_int(name, int(d.low), high, log=True))
        return int(trial.suggest_int(name, int(d.low), high, step=int(d.step), log=d.log))
    return float(trial.suggest_float(name, float(d.low), float(d.high), log=d.log))

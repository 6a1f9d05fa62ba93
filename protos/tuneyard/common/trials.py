"""The wire's Trial messages as plain values and short text: states, labels, numbers, configs.

Shared by the client's tables, the offline report and the server's dashboard, so a trial reads the
same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

from tuneyard.v1 import service_pb2, spec_pb2

__all__ = ["config_to_dict", "integer_parameters", "last_line", "number", "trial_label", "trial_state"]


def trial_state(state: int) -> str:
    """``TRIAL_PRUNED`` -> ``PRUNED``."""
    return service_pb2.TrialState.Name(state).removeprefix("TRIAL_")


def trial_label(trial: service_pb2.Trial, *, retries: bool = True) -> str:
    """The state with its cause: ``FAILED (oom)``, ``COMPLETED after 1 retry``, ``INFEASIBLE``."""
    label = trial_state(trial.state)
    if trial.failure_reason:
        label += f" ({trial.failure_reason})"
    if retries and trial.retries:
        label += f" after {trial.retries} {'retry' if trial.retries == 1 else 'retries'}"
    return label


def last_line(text: str) -> str:
    """The last non-blank line: a traceback's ``SomeError: message``."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def number(value: Any) -> str:
    """Short form of a metric or parameter value: 4 significant digits for floats."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def integer_parameters(spec: spec_pb2.StudySpec) -> set[str]:
    """Names of searched parameters whose values are integers.

    ``int_range`` parameters, and ``choice`` parameters whose values are all
    whole numbers (``filter_size: [3, 5]``, ``batch_size: [32, 64]``).
    """
    names: set[str] = set()
    for param in spec.search_space:
        domain = param.WhichOneof("domain")
        if domain == "int_range":
            names.add(param.name)
        elif (
            domain == "choice"
            and param.choice.values
            and all(
                v.WhichOneof("kind") == "number_value" and float(v.number_value).is_integer()
                for v in param.choice.values
            )
        ):
            names.add(param.name)
    return names


def config_to_dict(config: struct_pb2.Struct | Mapping[str, Any], spec: spec_pb2.StudySpec) -> dict[str, Any]:
    """A trial's config as a plain dict, with integer parameters as ``int`` again.

    ``google.protobuf.Struct`` stores every number as a double, so a searched
    ``num_filters`` of 64 arrives as ``64.0``; the spec says which parameters
    are integers, and this restores them (used by the SDK and the CLI alike).
    Keys follow the order of ``spec.search_space``.
    """
    if isinstance(config, struct_pb2.Struct):
        values: dict[str, Any] = json_format.MessageToDict(config)
    else:
        values = dict(config)
    for name in integer_parameters(spec):
        value = values.get(name)
        if isinstance(value, float) and value.is_integer():
            values[name] = int(value)
    # Struct keys come back in no useful order; list them as the search space does.
    order = {param.name: i for i, param in enumerate(spec.search_space)}
    return dict(sorted(values.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))

"""Studies and trials as plain Python values: frozen dataclasses, enum names, ints, datetimes.

The wire's messages carry enum numbers (``state: 3``), every number as a double (``num_filters:
17.0``) and protobuf timestamps; scripts want ``"COMPLETED"``, ``17`` and ``datetime``. These
records are built once from the messages (``Trial.from_proto``, ``Study.from_proto``) and hold
nothing of protobuf, so they pickle, compare and print like any dataclass. ``trial_rows`` flattens
trials into the columns of Optuna's ``trials_dataframe`` for a DataFrame, CSV or JSON.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from google.protobuf import json_format, timestamp_pb2

from tuneyard.client.resolved import resolved_config
from tuneyard.common.trials import config_to_dict, trial_state
from tuneyard.v1 import service_pb2, spec_pb2

__all__ = [
    "EpochMetrics",
    "Objective",
    "RunResult",
    "Study",
    "Trial",
    "objectives_of",
    "trial_rows",
    "trials_dataframe",
]

PANDAS_MISSING = "trials_dataframe needs pandas: pip install pandas (or use trial_rows for plain dicts)"


def _time(stamp: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    """A set timestamp as an aware UTC datetime; None when the message does not have it."""
    if not present:
        return None
    return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, tz=timezone.utc)


@dataclass(frozen=True)
class Objective:
    """One objective of a study: the metric and ``"MAXIMIZE"`` or ``"MINIMIZE"``."""

    metric: str
    mode: str


def objectives_of(spec: spec_pb2.StudySpec) -> tuple[Objective, ...]:
    """The spec's objectives in order (``objectives:``, else the single ``objective:``)."""
    listed = list(spec.objectives) or ([spec.objective] if spec.HasField("objective") else [])
    return tuple(Objective(o.metric, spec_pb2.Objective.Mode.Name(o.mode)) for o in listed if o.metric)


@dataclass(frozen=True)
class EpochMetrics:
    """The metrics one epoch (one reported step) ended with."""

    epoch: int
    values: dict[str, float]
    time: datetime | None = None


@dataclass(frozen=True)
class Trial:
    """One trial: ``state`` is ``"COMPLETED"`` etc., ``config`` has ints as ints, times are UTC datetimes.

    ``values`` maps each objective's metric to this trial's value of it (empty when it has none);
    ``value`` is the first objective's. ``metrics`` are the last epoch's, ``history`` every epoch's.
    """

    study_id: str
    trial_id: int
    state: str
    config: dict[str, Any]
    values: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    history: tuple[EpochMetrics, ...] = ()
    device: str = ""
    epochs_completed: int = 0
    start_time: datetime | None = None
    end_time: datetime | None = None
    error: str = ""
    failure_reason: str = ""
    exit_code: int | None = None
    exit_signal: str = ""
    retries: int = 0
    checkpoint: str = ""

    @property
    def value(self) -> float | None:
        """The first objective's value (the one searchers and early stoppers follow)."""
        return next(iter(self.values.values()), None)

    @property
    def duration(self) -> float | None:
        """Seconds from start to end; None until the trial has both."""
        if self.start_time is None or self.end_time is None:
            return None
        return (self.end_time - self.start_time).total_seconds()

    @classmethod
    def from_proto(cls, trial: service_pb2.Trial, spec: spec_pb2.StudySpec) -> Trial:
        """``spec`` (the study's) says which parameters are ints and names the objectives."""
        return cls(
            study_id=trial.study_id,
            trial_id=trial.trial_id,
            state=trial_state(trial.state),
            config=config_to_dict(trial.config, spec),
            values=objective_values(trial, spec),
            metrics=dict(trial.final_metrics),
            history=tuple(
                EpochMetrics(m.epoch, dict(m.values), _time(m.time, m.HasField("time"))) for m in trial.metrics
            ),
            device=trial.device,
            epochs_completed=trial.epochs_completed,
            start_time=_time(trial.start_time, trial.HasField("start_time")),
            end_time=_time(trial.end_time, trial.HasField("end_time")),
            error=trial.error,
            failure_reason=trial.failure_reason,
            exit_code=trial.exit_code if trial.HasField("exit_code") else None,
            exit_signal=trial.exit_signal,
            retries=trial.retries,
            checkpoint=trial.checkpoint,
        )


def objective_values(trial: service_pb2.Trial, spec: spec_pb2.StudySpec) -> dict[str, float]:
    """``{metric: value}`` for each objective the trial has a value of, in the spec's order."""
    names = [o.metric for o in objectives_of(spec)]
    if trial.objective_values:
        return {n: float(v) for n, v in zip(names, trial.objective_values, strict=False)}
    if trial.HasField("objective_value"):
        return {(names[0] if names else "objective"): float(trial.objective_value)}
    return {}


@dataclass(frozen=True)
class Study:
    """One study: ``state`` is ``"RUNNING"`` etc.; ``spec`` is the stored spec as a plain dict."""

    study_id: str
    name: str
    state: str
    spec: dict[str, Any]
    objectives: tuple[Objective, ...]
    trial_counts: dict[str, int]
    best_trial: Trial | None = None
    test_metrics: dict[str, float] = field(default_factory=dict)
    pareto_front: tuple[Trial, ...] = ()
    error: str = ""
    request_id: str = ""
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    epochs_spent: int = 0

    @property
    def best_config(self) -> dict[str, Any]:
        """The best trial's searched parameters (empty before any trial has a result)."""
        return dict(self.best_trial.config) if self.best_trial else {}

    @classmethod
    def from_proto(cls, study: service_pb2.Study) -> Study:
        spec = study.spec
        counts = {f.name: getattr(study.trial_counts, f.name) for f in study.trial_counts.DESCRIPTOR.fields}
        return cls(
            study_id=study.study_id,
            name=spec.name,
            state=service_pb2.StudyState.Name(study.state).removeprefix("STUDY_"),
            spec=json_format.MessageToDict(spec, preserving_proto_field_name=True),
            objectives=objectives_of(spec),
            trial_counts=counts,
            best_trial=Trial.from_proto(study.best_trial, spec) if study.HasField("best_trial") else None,
            test_metrics=dict(study.test_metrics),
            pareto_front=tuple(Trial.from_proto(t, spec) for t in study.pareto_front),
            error=study.error,
            request_id=study.request_id,
            create_time=_time(study.create_time, study.HasField("create_time")),
            start_time=_time(study.start_time, study.HasField("start_time")),
            end_time=_time(study.end_time, study.HasField("end_time")),
            epochs_spent=study.epochs_spent,
        )


def trial_rows(trials: Iterable[Trial], objectives: Iterable[Objective]) -> list[dict[str, Any]]:
    """One flat dict per trial, in the columns of Optuna's ``trials_dataframe``.

    ``number, state, value`` (one objective) or ``values_<metric>`` (several), ``params_<name>``,
    ``metrics_<name>`` (the last epoch's), ``datetime_start, datetime_complete, duration``
    (seconds), ``device``, ``epochs``. Every row has every column (None where a trial has none).
    """
    trials = list(trials)
    metrics = [o.metric for o in objectives]
    params = list(dict.fromkeys(name for t in trials for name in t.config))
    measured = sorted({name for t in trials for name in t.metrics})
    rows = []
    for t in trials:
        row: dict[str, Any] = {"number": t.trial_id, "state": t.state}
        if len(metrics) == 1:
            row["value"] = t.values.get(metrics[0])
        else:
            row.update({f"values_{m}": t.values.get(m) for m in metrics})
        row.update({f"params_{p}": t.config.get(p) for p in params})
        row.update({f"metrics_{m}": t.metrics.get(m) for m in measured})
        row.update(
            datetime_start=t.start_time,
            datetime_complete=t.end_time,
            duration=t.duration,
            device=t.device,
            epochs=t.epochs_completed,
        )
        rows.append(row)
    return rows


def trials_dataframe(trials: Iterable[Trial], objectives: Iterable[Objective]) -> Any:
    """``trial_rows`` as a pandas DataFrame (one row per trial); ImportError naming pandas without it."""
    try:
        pandas = importlib.import_module("pandas")
    except ImportError as exc:
        raise ImportError(PANDAS_MISSING) from exc
    rows = trial_rows(trials, objectives)
    frame = pandas.DataFrame.from_records(rows)
    if rows:
        for column in ("datetime_start", "datetime_complete"):
            frame[column] = pandas.to_datetime(frame[column], utc=True)
    return frame


def as_json(value: Any) -> Any:
    """A record (or rows) as JSON data: datetimes in ISO 8601, tuples as lists."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    return value


@dataclass
class RunResult:
    """What a finished study produced, as plain Python values.

    ``study`` is the raw ``Study`` message (kept for existing callers); ``state``, ``best_trial`` and
    the rest are plain: ``"COMPLETED"``, a :class:`~tuneyard.client.results.Trial`, ints as ints.
    ``best_config`` holds the searched parameters of the best trial, ``resolved_config`` the whole
    configuration it ran with (see :mod:`tuneyard.client.resolved`).
    """

    study: service_pb2.Study
    best_config: dict[str, Any] = field(default_factory=dict)
    best_metrics: dict[str, float] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)
    best_trial: Trial | None = None
    resolved_config: dict[str, Any] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.study.state == service_pb2.STUDY_COMPLETED

    @property
    def study_id(self) -> str:
        return self.study.study_id

    @property
    def state(self) -> str:
        """The study's state by name: ``"COMPLETED"``, ``"FAILED"``, ``"CANCELLED"``."""
        return service_pb2.StudyState.Name(self.study.state).removeprefix("STUDY_")

    @property
    def error(self) -> str:
        return self.study.error

    @classmethod
    def from_study(
        cls,
        study: service_pb2.Study,
        spec: spec_pb2.StudySpec | None = None,
        plugins: service_pb2.ListPluginsResponse | None = None,
    ) -> RunResult:
        """Build from a ``Study``; ``spec`` (default: the study's own) says which parameters are ints,
        ``plugins`` (the server's list) completes ``resolved_config`` with the plugins' defaults."""
        if not study.HasField("best_trial"):
            return cls(study=study, test_metrics=dict(study.test_metrics))
        spec = spec if spec is not None else study.spec
        best = Trial.from_proto(study.best_trial, spec)
        return cls(
            study=study,
            best_config=dict(best.config),
            best_metrics=dict(best.metrics),
            test_metrics=dict(study.test_metrics),
            best_trial=best,
            resolved_config=resolved_config(study.spec, best.config, plugins),
        )

"""Domain records and errors of the server. Knows nothing of grpc or protobuf."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any


class StudyState(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (StudyState.COMPLETED, StudyState.FAILED, StudyState.CANCELLED)


class TrialState(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    PRUNED = "PRUNED"
    CANCELLED = "CANCELLED"
    INFEASIBLE = "INFEASIBLE"

    @property
    def terminal(self) -> bool:
        return self not in (TrialState.PENDING, TrialState.RUNNING)


class DomainError(Exception):
    """Base of the errors that map onto a status code (see `errors.STATUS_OF`)."""


class InvalidArgument(DomainError):
    """Bad input: `field` is the path of the offending field, `reason` says what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@contextmanager
def under(path: str) -> Iterator[None]:
    """Checks of a nested message: an InvalidArgument raised inside names its field from the request's
    top (`completions[1].` + `metrics`)."""
    try:
        yield
    except InvalidArgument as exc:
        raise InvalidArgument(path + exc.field, exc.reason) from None


class NotFound(DomainError):
    pass


class WrongState(DomainError):
    pass


class ResourceExhausted(DomainError):
    """A server limit is reached; the message says which and what to do."""


class Unavailable(DomainError):
    """The server cannot serve this now (it is shutting down); the client should reconnect."""


class StoreError(DomainError):
    """The SQLite store itself failed (not the request): raised by `Storage` in place of sqlite3's errors.

    Catch this base to survive any store failure; the subclasses say which, and their message says
    what the operator should do.
    """


class StoreInvalid(StoreError):
    """Refused at open: the file is not a valid tuneyard store (empty, not SQLite, truncated, damaged
    header, or another application's database)."""


class StoreDamaged(StoreError):
    """A page of the store is damaged (SQLite: "database disk image is malformed"), or
    `PRAGMA integrity_check` found problems; data may be lost."""


class StoreFull(StoreError):
    """The store cannot grow: the disk is full (SQLITE_FULL). Writes work again once space is freed."""


class StoreUnavailable(StoreError):
    """The store cannot be used just now (locked by another process, an I/O error); a retry may work."""


@dataclass
class EpochRecord:
    epoch: int
    values: dict[str, float]
    time: float


@dataclass(frozen=True)
class ConfigChange:
    """A population stopper's exploit (PBT) of the trial: from the epoch after `epoch` it trains
    `config` (its whole searched config), going on from trial `source_trial_id`'s checkpoint of
    `epoch`. Journaled with the step before the runner acts; `applied` once the trial's files are
    the source's, so a restart copies them again only when they were not."""

    epoch: int
    source_trial_id: int
    config: dict[str, Any]
    applied: bool = False


@dataclass
class TrialRecord:
    study_id: str
    trial_id: int
    state: TrialState
    config: dict[str, Any]
    device: str = ""
    metrics: list[EpochRecord] = field(default_factory=list)
    final_metrics: dict[str, float] = field(default_factory=dict)
    objective_value: float | None = None
    error: str = ""
    checkpoint: str = ""  # where the checkpoint lies under the server's checkpoint directory now
    epochs_completed: int = 0
    start_time: float | None = None
    end_time: float | None = None
    objective_values: list[float] = field(default_factory=list)
    failure_reason: str = ""  # crash | timeout | oom | error, for FAILED trials
    exit_code: int | None = None
    exit_signal: str = ""
    stderr_tail: str = ""
    retries: int = 0
    pruned_epoch: int = 0  # the epoch the early stopper said STOP at (0: it has not), journaled with it
    # The spec's constraints its final metrics violate ("params <= 1e+06"): a COMPLETED trial with any
    # is infeasible for the objective, never the best trial nor on the Pareto front.
    violated_constraints: list[str] = field(default_factory=list)
    fused_group: str = ""  # the fused group (resources.fuse) it trains or last trained in; "" solo
    config_history: list[ConfigChange] = field(default_factory=list)  # its PBT exploits, oldest first

    @property
    def feasible(self) -> bool:
        """Whether the trial may count for the objective (it violates no constraint)."""
        return not self.violated_constraints

    @property
    def current_config(self) -> dict[str, Any]:
        """The config it trains now: its last exploit's, else the one it started with."""
        return self.config_history[-1].config if self.config_history else self.config


@dataclass(frozen=True)
class TrialEnd:
    """How a trial ended: the columns `Store.end_trial` writes, all at once (a field left at its default
    stores the default, as for a trial that never had it)."""

    state: TrialState
    end_time: float
    objective_value: float | None = None
    objective_values: list[float] = field(default_factory=list)  # one per objective, for several objectives
    error: str = ""
    failure_reason: str = ""  # crash | timeout | oom | error, for FAILED trials
    exit_code: int | None = None
    exit_signal: str = ""
    stderr_tail: str = ""
    final_metrics: dict[str, float] | None = None  # None keeps the last epoch's; a trainable may return others
    violated_constraints: list[str] = field(default_factory=list)


@dataclass
class TrialCounts:
    pending: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    pruned: int = 0
    cancelled: int = 0
    infeasible: int = 0

    @property
    def finished(self) -> int:
        return self.completed + self.failed + self.pruned + self.cancelled + self.infeasible


@dataclass
class StudyRecord:
    study_id: str
    spec: dict[str, Any]
    state: StudyState
    request_id: str = ""
    error: str = ""
    test_metrics: dict[str, float] = field(default_factory=dict)
    best_trial_id: int | None = None
    create_time: float = 0.0
    start_time: float | None = None
    end_time: float | None = None
    pareto_ids: list[int] = field(default_factory=list)
    # Filled on read, not stored in the studies row.
    counts: TrialCounts = field(default_factory=TrialCounts)
    best_trial: TrialRecord | None = None
    epochs_spent: int = 0
    pareto_front: list[TrialRecord] = field(default_factory=list)


@dataclass
class EventRecord:
    """A stored study event. `kind` names the oneof field; `payload` is plain data."""

    study_id: str
    sequence: int
    time: float
    kind: str
    payload: dict[str, Any]

    TERMINAL_KIND = "study_state"

    @property
    def terminal(self) -> bool:
        return self.kind == self.TERMINAL_KIND and StudyState(self.payload["state"]).terminal


def trial_to_dict(trial: TrialRecord) -> dict[str, Any]:
    """Plain-data snapshot of a trial, as stored inside events: a copy of every field (one level deep is
    enough, every value below is plain data that is never changed in place)."""
    data = {f.name: getattr(trial, f.name) for f in fields(TrialRecord)}
    data["state"] = trial.state.value
    data["config"] = dict(trial.config)
    data["metrics"] = [{"epoch": m.epoch, "values": dict(m.values), "time": m.time} for m in trial.metrics]
    data["final_metrics"] = dict(trial.final_metrics)
    data["objective_values"] = list(trial.objective_values)
    data["violated_constraints"] = list(trial.violated_constraints)
    data["config_history"] = [asdict(change) for change in trial.config_history]
    return data


def trial_from_dict(data: dict[str, Any]) -> TrialRecord:
    fields = dict(data)
    fields["state"] = TrialState(fields["state"])
    fields["metrics"] = [EpochRecord(**m) for m in fields.get("metrics", [])]
    fields["config_history"] = [ConfigChange(**c) for c in fields.get("config_history", [])]
    return TrialRecord(**fields)

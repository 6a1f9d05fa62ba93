"""The types a plugin author sees: frozen views of the search space and objective,
the protocols searchers, early stoppers and tasks implement, what a dataset returns, and the
`TrialContext` a trainable (a user's own training function) receives.

Plugins receive plain values and these frozen views, and return decisions; they never
reach into the study runner. The sequence for one trial is:

    searcher.suggest(trial_id) -> config          (None: the space is exhausted)
    run: the built-in trainer reports metrics once per epoch, or a trainable calls trial.report(step, ...)
    early_stopper.report(trial_id, epoch, value) -> Decision.CONTINUE | Decision.STOP
    searcher.observe_step(trial_id, epoch, value)  (optional: only a searcher that has it)
    early_stopper.complete(trial_id, value)        (when the trial ends)
    searcher.observe(trial_id, state, value)       (state: "COMPLETED", "FAILED", "PRUNED", ...)

A plugin that finds its configuration impossible (a model too deep for the input size, an
option pair that contradicts) raises `Infeasible`: the trial ends INFEASIBLE, the searcher is
told (state "INFEASIBLE", no value), and it is not counted as a failure.

An option that names a file or folder is annotated `DataPath` (a plain `str` to type checkers).
Its value must lie inside the server's data root (`--data-root`): the server refuses a request whose
value leaves it (`..`, an absolute path elsewhere, a symbolic link pointing out) before anything runs,
and the plugin resolves the value again with `resolve_data_path` when it opens it, since files may
change in between.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# Re-exported: plugin authors import every name they need from this module.
from tuneyard.plugins.data_paths import DATA_PATH as DATA_PATH
from tuneyard.plugins.data_paths import MAX_PATH_CHARS as MAX_PATH_CHARS
from tuneyard.plugins.data_paths import MAX_PATH_PART_BYTES as MAX_PATH_PART_BYTES
from tuneyard.plugins.data_paths import DataPath as DataPath
from tuneyard.plugins.data_paths import resolve_data_path as resolve_data_path
from tuneyard.plugins.population import Exploit as Exploit
from tuneyard.plugins.population import PopulationStopper as PopulationStopper
from tuneyard.plugins.trial_context import TrialContext as TrialContext

KINDS: tuple[str, ...] = (
    "optimizer",
    "lr_scheduler",
    "augmentation",
    "model",
    "dataset",
    "searcher",
    "early_stopper",
    "trainable",
    "task",
)

# Keyword arguments the framework supplies to a factory of each kind; they are not
# user options and do not appear in the plugin's parameter schema.
INJECTED: dict[str, frozenset[str]] = {
    "optimizer": frozenset(),
    "lr_scheduler": frozenset({"epochs", "steps_per_epoch"}),
    "augmentation": frozenset({"input_shape", "num_classes"}),
    "model": frozenset({"input_shape", "num_classes"}),
    "dataset": frozenset({"root"}),
    "searcher": frozenset({"space", "objective", "seed"}),
    "early_stopper": frozenset({"objective", "max_epochs", "space", "study_seed"}),
    "trainable": frozenset({"trial", "epochs"}),
    "task": frozenset({"num_classes", "label_smoothing"}),
}

# The task of a dataset that declares none, and the metric modes a task may declare.
DEFAULT_TASK = "classification"
METRIC_MODES = ("min", "max")


class Infeasible(Exception):
    """Raised by a plugin (or the model it builds) when a configuration cannot run at all."""


class Pruned(Exception):  # noqa: N818 - named for what happened to the trial, as `Infeasible` is
    """Raised by `TrialContext.report` when the trial must end: the early stopper pruned it, the
    study was cancelled, or its `max_duration` passed. A trainable may catch it to clean up; the
    trial ends with the metrics it reported (PRUNED, CANCELLED when the study was cancelled, or
    COMPLETED at the deadline). A trainable that raises it on its own, unasked, ends as if it had
    returned None: COMPLETED with its last report."""


class _Required:
    """Marks a parameter without a default."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Bounds:
    """Inclusive (`ge`, `le`) and exclusive (`gt`, `lt`) limits of a numeric option.

    A plugin declares them when it registers (`register(..., bounds={"grace_period": Bounds(ge=1)})`);
    the server checks every fixed value, every choice value and both ends of a searched range against
    them before anything runs, so a value the plugin cannot take is an INVALID_ARGUMENT, not a failed
    trial.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def problem(self, value: float) -> str | None:
        """Why `value` lies outside the bounds (e.g. "must be >= 1, got 0"), or None when inside."""
        for limit, holds, sign in (
            (self.ge, lambda v, b: v >= b, ">="),
            (self.gt, lambda v, b: v > b, ">"),
            (self.le, lambda v, b: v <= b, "<="),
            (self.lt, lambda v, b: v < b, "<"),
        ):
            if limit is not None and not holds(value, limit):
                return f"must be {sign} {_number(limit)}, got {_number(value)}"
        return None

    def describe(self) -> str:
        """The bounds as text for people, e.g. ">= 1, < 4294967296"; "" when there are none."""
        parts = [
            f"{sign} {_number(v)}"
            for v, sign in ((self.ge, ">="), (self.gt, ">"), (self.le, "<="), (self.lt, "<"))
            if v is not None
        ]
        return ", ".join(parts)


def _number(value: float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() and abs(value) < 2**63 else str(value)


@dataclass(frozen=True)
class ParamSpec:
    """One user-settable option of a plugin, derived from a keyword-only parameter.

    `type` is one of "int", "float", "bool", "str", "path", "list", "dict", "any"; a "path" is a
    str annotated `DataPath`. `bounds` limits an "int" or "float" option (see `Bounds`).
    """

    name: str
    type: str
    default: Any = REQUIRED
    doc: str = ""
    bounds: Bounds | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class Metric:
    """A metric a task declares: its name without the split prefix, and "min" or "max" (better)."""

    name: str
    mode: str


@dataclass(frozen=True)
class PluginEntry:
    """A registered plugin: what `ListPlugins` shows and what the trainer calls."""

    kind: str
    name: str
    factory: Any
    description: str
    parameters: tuple[ParamSpec, ...]
    distribution: str
    version: str
    # Augmentations only: True for batch-level transforms (MixUp, CutMix), whose object is
    # called as `transform(inputs, labels) -> (inputs, soft_labels)` on a whole batch.
    batch_level: bool = False
    # LR schedulers only: "batch" steps after every optimizer step, "epoch" after every epoch.
    interval: str = "epoch"
    # LR schedulers only: a metric name passed to `step(value)` (ReduceLROnPlateau), or "".
    monitor: str = ""
    # Datasets only: the task of its targets ("classification", "regression", ...). A dataset with
    # a `task` option takes its task from that option instead.
    task: str = DEFAULT_TASK
    # Tasks only: the metrics the task adds, each reported for the train and val splits as
    # `train_<name>`, `val_<name>` (and `test_<name>` by the test evaluation), with whether lower
    # or higher is better.
    metrics: tuple[Metric, ...] = ()
    # Models only: options that leave every tensor's shape alone (e.g. dropout), in which the
    # members of a fused group (`resources.fuse`) may differ.
    fusable_options: tuple[str, ...] = ()

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.parameters if p.name == name), None)


@dataclass(frozen=True)
class LoadError:
    """A plugin that failed to import, raised while registering, or reused a name."""

    source: str
    message: str


# ---- search space (frozen views handed to searchers) ----


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False
    step: int = 1


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Condition:
    """The parameter is active only while `parent`'s value is one of `values`."""

    parent: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Parameter:
    name: str
    domain: IntRange | FloatRange | Choice
    condition: Condition | None = None

    def is_active(self, config: dict[str, Any]) -> bool:
        """Active when unconditional, or when the parent is set to one of the values."""
        if self.condition is None:
            return True
        return self.condition.parent in config and config[self.condition.parent] in self.condition.values


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str = "max"  # "max" or "min"

    def better(self, a: float, b: float) -> bool:
        """True when value `a` is strictly better than `b`."""
        return a > b if self.mode == "max" else a < b


class Decision(enum.Enum):
    CONTINUE = "CONTINUE"
    STOP = "STOP"


@runtime_checkable
class Searcher(Protocol):
    """Optional, so not a member here: `observe_step(trial_id, step, value)`, each stored step's objective
    value (maybe NaN), called only on a searcher that has it (`bohb`). After `load_state_dict` a restart
    repeats the steps stored for the trials that were running: a repeated step must change nothing."""

    def suggest(self, trial_id: int) -> dict[str, Any] | None: ...

    def observe(self, trial_id: int, state: str, value: float | None) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class SearchGuidance(Protocol):
    """Optional searcher methods, called only on a searcher that has them (changes go in `state_dict`):
    `use_constraints(labels)` once when built, then `observe_constrained` (a value per constraint, <= 0
    where it holds: Optuna's constraints_func) for each COMPLETED or PRUNED end, else a violating trial
    is `observe(id, "INFEASIBLE", None)`; `observe_prior`, an earlier study's finished trial (warm start),
    before any suggestion; `suggest_initial(trial_id, partial)` sets `partial`'s values (else over `suggest`)."""

    def use_constraints(self, labels: list[str]) -> None: ...

    def observe_constrained(self, trial_id: int, state: str, value: float | None, constraints: list[float]) -> None: ...

    def observe_prior(
        self, config: dict[str, Any], state: str, value: float | None, constraints: list[float]
    ) -> None: ...

    def suggest_initial(self, trial_id: int, partial: dict[str, Any]) -> dict[str, Any] | None: ...


@runtime_checkable
class EarlyStopper(Protocol):
    def report(self, trial_id: int, step: int, value: float) -> Decision: ...

    def complete(self, trial_id: int, value: float | None) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class DatasetSplits:
    """What a dataset factory returns: map-style datasets of (tensor, label) pairs."""

    train: Any
    val: Any
    test: Any
    num_classes: int
    input_shape: tuple[int, ...]
    # Per-channel statistics of the training split, for normalisation after augmentation.
    mean: tuple[float, ...] = field(default_factory=tuple)
    std: tuple[float, ...] = field(default_factory=tuple)
    # What the targets are, which decides the built-in trainer's loss and metrics (a task plugin):
    # "classification" (int labels, `num_classes` of them), "regression" (float targets of shape
    # (num_classes,), `num_classes` being the number of targets) or "multilabel" (0/1 float
    # targets of shape (num_classes,)). It must be the task the dataset registered.
    task: str = DEFAULT_TASK


class Task(Protocol):
    """The built-in trainer's loss and metrics for one kind of target (`tuneyard_register_tasks`).

    The trainer sums `sums(...)` over an epoch's batches on the device, reads the totals once, and
    reports `metrics(totals, count)` of the train and val splits as `train_<name>` and `val_<name>`
    (the test evaluation as `test_<name>`), beside `<split>_loss`.
    """

    def loss(self, outputs: Any, targets: Any) -> Any:
        """The batch's mean loss (a 0-d tensor). Classification targets may be soft labels (N, C)
        from a batch-level augmentation; other tasks get the dataset's targets."""
        ...

    def sums(self, outputs: Any, targets: Any) -> dict[str, Any]:
        """Per-batch sums (0-d tensors on the outputs' device) from which `metrics` are computed."""
        ...

    def metrics(self, totals: dict[str, float], count: int) -> dict[str, float]:
        """The metrics (names as registered, without a split prefix) of `count` samples' totals."""
        ...

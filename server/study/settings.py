"""A trial's settings, typed: what the trainer reads, built from a validated spec and a trial's config.

`TrainingSettings` is the one declaration of every training field in Python: its type, its default
(none means the spec must set it) and its bounds or allowed values, in `field(metadata=...)`. Spec
validation derives its table of training fields from it (`TRAINING_FIELDS`), so a new field is the
proto plus one dataclass field. Validation applies the defaults; `resolve` only writes a trial's
searched values in, and the trainer reads attributes. Everything here is plain data, so settings
cross a pipe (pickle) and Ray (cloudpickle) unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, get_type_hints

from tuneyard.plugins.api import DEFAULT_TASK, REQUIRED, Bounds, ParamSpec
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.plugins.schema import MAX_EXACT_INT

# Where a searched parameter `<head>.<...>` points: a component and its plugin kind.
COMPONENTS = {
    "dataset": "dataset",
    "model": "model",
    "optimizer": "optimizer",
    "lr_scheduler": "lr_scheduler",
    "task": "task",
    "trainable": "trainable",
}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DATA_PIPELINES = ("auto", "device", "loader")
MAX_EPOCHS = 100_000
MAX_ACCUMULATION_STEPS = 1024
# Seeds reach numpy's RandomState (through Optuna's samplers), which takes 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


def _declared(default: Any = MISSING, bounds: Bounds | None = None, choices: tuple[str, ...] = ()) -> Any:
    """A plain training field, settable fixed or searched as `training.<name>`."""
    metadata = {"bounds": bounds, "choices": choices}
    return field(metadata=metadata) if default is MISSING else field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class Component:
    """A plugin by name with its options (plain values, already checked against its parameters)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingSettings:
    """How a trial trains. The plain fields, in this order, are the spec's searchable training fields."""

    epochs: int = _declared(bounds=Bounds(ge=1, le=MAX_EPOCHS))
    batch_size: int = _declared(64, Bounds(ge=1, le=MAX_EXACT_INT))
    label_smoothing: float = _declared(0.0, Bounds(ge=0, lt=1))
    seed: int = _declared(0, Bounds(ge=0, le=MAX_SEED))
    precision: str = _declared("auto", choices=PRECISIONS)
    grad_clip_norm: float = _declared(0.0, Bounds(ge=0))
    grad_accumulation_steps: int = _declared(1, Bounds(ge=1, le=MAX_ACCUMULATION_STEPS))
    ema_decay: float = _declared(0.0, Bounds(ge=0, lt=1))
    early_stop_patience: int = _declared(0, Bounds(ge=0, le=MAX_EPOCHS))  # 0: never stop on a plateau
    deterministic: bool = _declared(False)
    data_pipeline: str = _declared("auto", choices=DATA_PIPELINES)
    optimizer: Component
    lr_scheduler: Component | None = None
    augmentations: tuple[Component, ...] = ()


@dataclass(frozen=True, slots=True)
class TrialSettings:
    """Everything the built-in trainer needs to build and train one trial."""

    dataset: Component
    model: Component
    training: TrainingSettings
    task: Component = Component(DEFAULT_TASK)  # the dataset's task, with the spec's `task.options`


@dataclass(frozen=True, slots=True)
class TrainableSettings:
    """A trial of a user's training function: the function with its options, its steps and seed."""

    trainable: Component
    epochs: int  # the most steps it reports (`training.epochs`)
    seed: int


Settings = TrialSettings | TrainableSettings  # what a trial runs: the built-in trainer's, or a trainable's


def _plain_fields() -> tuple[ParamSpec, ...]:
    hints = get_type_hints(TrainingSettings)
    return tuple(
        ParamSpec(
            f.name,
            hints[f.name].__name__,
            default=REQUIRED if f.default is MISSING else f.default,
            bounds=f.metadata["bounds"],
        )
        for f in fields(TrainingSettings)
        if "bounds" in f.metadata
    )


# The spec's table of plain training fields, checked alike whether a spec fixes or searches one.
TRAINING_FIELDS: dict[str, ParamSpec] = {spec.name: spec for spec in _plain_fields()}
TRAINING_CHOICES: dict[str, tuple[str, ...]] = {
    f.name: f.metadata["choices"] for f in fields(TrainingSettings) if f.metadata.get("choices")
}
# A fixed field left at its proto3 zero value takes its default ("" and 0 mean "not set").
TRAINING_DEFAULTS: dict[str, Any] = {name: spec.default for name, spec in TRAINING_FIELDS.items() if not spec.required}
_CASTS = {"int": int, "float": float, "bool": bool, "str": str}  # int64 fields may hold decimal strings


def _component(raw: dict[str, Any] | None) -> Component | None:
    if not raw or not raw.get("name"):
        return None
    return Component(raw["name"], dict(raw.get("options") or {}))


def _typed(raw: dict[str, Any]) -> Settings:
    """The settings dict (validated, searched values written in) as typed settings."""
    training = raw["training"]
    trainable = _component(raw.get("trainable"))
    if trainable is not None:
        return TrainableSettings(trainable, epochs=int(training["epochs"]), seed=int(training["seed"]))
    plain = {name: _CASTS[spec.type](training[name]) for name, spec in TRAINING_FIELDS.items()}
    optimizer = _component(training["optimizer"])
    assert optimizer is not None  # validation names one (adam by default)
    dataset, model = _component(raw["dataset"]), _component(raw["model"])
    assert dataset is not None and model is not None  # validation requires both
    task = _component(raw["task"])
    assert task is not None  # validation names the dataset's task
    return TrialSettings(
        dataset=dataset,
        model=model,
        task=task,
        training=TrainingSettings(
            **plain,
            optimizer=optimizer,
            lr_scheduler=_component(training.get("lr_scheduler")),
            augmentations=tuple(Component(a["name"], dict(a["options"])) for a in training["augmentations"]),
        ),
    )


def _component_dict(settings: dict[str, Any], head: str) -> dict[str, Any]:
    if head in ("optimizer", "lr_scheduler"):
        training = settings["training"]
        if training.get(head) is None:
            training[head] = {"name": "", "options": {}}
        return training[head]
    return settings[head]


def resolve(spec: dict[str, Any], config: dict[str, Any], registry: PluginRegistry) -> Settings:
    """A validated spec's settings with every searched value of `config` written in.

    Names are applied before options, and when a search switches a component to another
    plugin, base options that the new plugin does not accept are dropped.
    """
    heads = ("dataset", "model", "task", "trainable", "training")
    settings: dict[str, Any] = {head: copy.deepcopy(spec.get(head)) for head in heads}
    ordered = sorted(config.items(), key=lambda kv: not kv[0].endswith(".name"))
    for name, value in ordered:
        parts = name.split(".")
        head = parts[0]
        if head == "training":
            settings["training"][parts[1]] = value
        elif head == "augmentations":
            for aug in settings["training"]["augmentations"]:
                if aug["name"] == parts[1]:
                    aug["options"][parts[2]] = value
        elif head in COMPONENTS:
            component = _component_dict(settings, head)
            if parts[1] == "name":
                entry = registry.get(COMPONENTS[head], value)
                accepted = {p.name for p in entry.parameters}
                component["options"] = {k: v for k, v in component["options"].items() if k in accepted}
                component["name"] = value
            else:
                component["options"][parts[1]] = value
    return _typed(settings)


# The settings a fused group's members may differ in (issue 17); the worker's `fused.members`
# checks a group against the same key, and its `group_problem` has the final word.
FUSABLE = ("training.optimizer.options", "training.label_smoothing", "training.lr_scheduler.options")


def explorable(name: str) -> bool:
    """Whether PBT (`early_stopping: pbt`) may change searched parameter `name` during training: the
    optimizer's and schedule's options and label smoothing (what a checkpoint does not fix, as
    FUSABLE), and every option of a trainable (it reads its config when it resumes)."""
    head, _, rest = name.partition(".")
    if head in ("optimizer", "lr_scheduler"):
        return rest != "name"
    return name == "training.label_smoothing" or head == "trainable"


def _fusable_model_options(registry: PluginRegistry | None, name: str) -> tuple[str, ...]:
    if registry is None:
        return ()
    try:
        return registry.get("model", name).fusable_options
    except KeyError:  # a model no longer registered: its options all count
        return ()


def fusion_key(settings: Settings, registry: PluginRegistry | None = None) -> TrialSettings | None:
    """The settings with the fusable ones blanked: trials whose keys are equal may train as one fused
    group. With the registry, also the model options its plugin declares fusable (`fusable_options`,
    e.g. dropout). None for a trainable's settings, which never fuse. Decided in the server without torch."""
    if not isinstance(settings, TrialSettings):
        return None
    model = settings.model
    fusable = _fusable_model_options(registry, model.name)
    if fusable:
        kept = {key: value for key, value in model.options.items() if key not in fusable}
        settings = replace(settings, model=Component(model.name, kept))
    training, schedule = settings.training, settings.training.lr_scheduler
    blank = replace(
        training,
        optimizer=Component(training.optimizer.name),
        label_smoothing=0.0,
        lr_scheduler=None if schedule is None else Component(schedule.name),
    )
    return replace(settings, training=blank)

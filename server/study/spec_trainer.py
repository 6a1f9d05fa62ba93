"""Checks which trainer a spec uses, and its sections: the built-in trainer's (`dataset`, `model`, the
dataset's `task`, `training`), a user's trainable (`trainable`, and of `training` only `epochs` and
`seed`), or none, for a study its clients evaluate (`external {lease}`; `training` as a trainable's,
`epochs` optional). A spec uses one of them; a mix is refused, naming the section that does not belong."""

from __future__ import annotations

from typing import Any

from tuneyard.plugins.api import Choice, Parameter
from tuneyard.plugins.schema import accepted_kwargs
from tuneyard.server.study.domain import InvalidArgument
from tuneyard.server.study.spec_components import ComponentChecker
from tuneyard.server.study.spec_training import check_training, check_training_value
from tuneyard.server.study.spec_values import check_shape, duration_s

BUILTIN_ONLY = ("dataset", "model", "task")
DEFAULT_EXTERNAL_STEPS = 100  # an external study's training.epochs when unset: the most steps a trial reports
DEFAULT_LEASE_S = 600.0
MAX_LEASE_S = 7 * 24 * 3600.0
TRAINABLE_TRAINING = ("epochs", "seed")  # the training fields a trainable study keeps
TRAINABLE_SEARCHED = ("trainable",)  # besides training.epochs and training.seed
_UNSET: tuple[Any, ...] = (None, "", 0, 0.0, False, [], {})


def check_trainer(spec: dict[str, Any], components: ComponentChecker) -> dict[str, Any]:
    """The normalised trainer sections of `spec`: {dataset, model, task, training}, {trainable, training}
    or {external, training}."""
    if "external" in spec:  # an empty `external: {}` is set too
        return _external(spec)
    if spec.get("trainable"):
        return _trainable(spec, components)
    return _builtin(spec, components)


def _builtin(spec: dict[str, Any], components: ComponentChecker) -> dict[str, Any]:
    dataset = components.component("dataset", spec.get("dataset"), "spec.dataset")
    assert dataset is not None
    training = check_training(spec.get("training") or {}, components)
    task = _task(spec.get("task"), dataset, components)
    # A task that takes label smoothing has class labels, which label smoothing and MixUp-like batch
    # augmentations (they mix one-hot labels) need.
    takes = accepted_kwargs(components.registry.get("task", task["name"]).factory, {"label_smoothing": 0.0})
    if training["label_smoothing"] and not takes:
        raise InvalidArgument("spec.training.label_smoothing", f"a {task['name']} task takes no label smoothing")
    for i, aug in enumerate(training["augmentations"]):
        if not takes and components.registry.get("augmentation", aug["name"]).batch_level:
            why = f"{aug['name']} mixes class labels; a {task['name']} task has none"
            raise InvalidArgument(f"spec.training.augmentations[{i}].name", why)
    return {
        "dataset": dataset,
        "model": components.component("model", spec.get("model"), "spec.model"),
        "training": training,
        "task": task,
    }


def dataset_task(dataset: dict[str, Any], components: ComponentChecker) -> str:
    """The task a checked dataset component declares: its `task` option's value, or its registration's."""
    entry = components.registry.get("dataset", dataset["name"])
    option = entry.param("task")
    if option is None:
        return entry.task
    return str(dataset["options"].get("task", option.default))


def _task(raw: Any, dataset: dict[str, Any], components: ComponentChecker) -> dict[str, Any]:
    """The dataset's task with the spec's `task.options`; a `task.name` must be the dataset's."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise InvalidArgument("spec.task", "must be an object")
    name = dataset_task(dataset, components)
    given = raw.get("name")
    if given and given != name:
        raise InvalidArgument(
            "spec.task.name", f"dataset {dataset['name']!r} is a {name} dataset, not {given!r} (leave the name out)"
        )
    try:
        entry = components.registry.get("task", name)
    except KeyError:
        known = ", ".join(components.registry.names("task")) or "none installed"
        raise InvalidArgument("spec.dataset", f"its task {name!r} is not a registered task (known: {known})") from None
    return {"name": name, "options": components.options(entry, raw.get("options"), "spec.task.options")}


def _own_training(spec: dict[str, Any], who: str, default_epochs: int | None = None) -> dict[str, Any]:
    """`training` of a study whose trials train themselves: only `epochs` and `seed`."""
    training = spec.get("training") or {}
    if not isinstance(training, dict):
        raise InvalidArgument("spec.training", "must be an object")
    check_shape(training, "spec.training")
    for name, value in training.items():
        if name not in TRAINABLE_TRAINING and value not in _UNSET:
            raise InvalidArgument(f"spec.training.{name}", f"{who}: of training only epochs and seed apply")
    epochs = training.get("epochs") or default_epochs
    if not epochs:
        raise InvalidArgument("spec.training.epochs", "required: the most steps a trial reports")
    return {
        "epochs": check_training_value("epochs", epochs, "spec.training.epochs"),
        "seed": check_training_value("seed", training.get("seed") or 0, "spec.training.seed"),
    }


def _not_builtin(spec: dict[str, Any], heads: tuple[str, ...], why: str) -> None:
    for head in heads:
        if spec.get(head):
            raise InvalidArgument(f"spec.{head}", why.format(head=head))


def _trainable(spec: dict[str, Any], components: ComponentChecker) -> dict[str, Any]:
    _not_builtin(spec, BUILTIN_ONLY, "a study with a trainable takes no {head}: the trainable builds what it trains")
    return {
        "trainable": components.component("trainable", spec.get("trainable"), "spec.trainable"),
        "training": _own_training(spec, "a trainable trains itself"),
    }


def _external(spec: dict[str, Any]) -> dict[str, Any]:
    why = "a study its clients evaluate takes no {head}: the clients train what they want"
    _not_builtin(spec, (*BUILTIN_ONLY, "trainable"), why)
    external = spec["external"] or {}
    if not isinstance(external, dict):
        raise InvalidArgument("spec.external", "must be an object")
    lease = duration_s(external.get("lease"), "spec.external.lease") or DEFAULT_LEASE_S
    if lease > MAX_LEASE_S:
        raise InvalidArgument("spec.external.lease", f"must be at most {MAX_LEASE_S:.0f}s, got {lease:g}s")
    return {
        "external": {"lease": f"{lease:g}s"},
        "training": _own_training(spec, "clients train their trials", DEFAULT_EXTERNAL_STEPS),
    }


def lease_s(spec: dict[str, Any]) -> float:
    """The lease of a normalised external spec, in seconds."""
    return float(spec["external"]["lease"].removesuffix("s"))


def check_searched(param: Parameter, spec: dict[str, Any], components: ComponentChecker, path: str) -> bool:
    """A searched name must address the spec's own trainer, and keep the study to one task. True when
    the name is free (an external study's: the clients read it), so it addresses no setting."""
    head = param.name.partition(".")[0]
    where = f"{path}.name"
    if "external" in spec:
        if any(c.isspace() for c in param.name):
            raise InvalidArgument(where, f"a parameter name has no whitespace, got {param.name!r}")
        return True
    if "trainable" in spec:
        if head not in TRAINABLE_SEARCHED and param.name not in {f"training.{f}" for f in TRAINABLE_TRAINING}:
            why = f"a trainable study searches trainable.<option>, training.epochs or training.seed, not {param.name!r}"
            raise InvalidArgument(where, why)
        return False
    if head == "trainable":
        raise InvalidArgument(where, "the spec has no trainable to set an option of")
    if param.name in ("task.name", "dataset.task"):
        raise InvalidArgument(where, "a study has one task, its dataset's; search task.<option> instead")
    if param.name == "dataset.name" and isinstance(param.domain, Choice):
        for j, name in enumerate(param.domain.values):
            entry = components.plugin("dataset", name, f"{path}.choice.values[{j}]")
            task = dataset_task({"name": entry.name, "options": spec["dataset"]["options"]}, components)
            if task != spec["task"]["name"]:
                study_task = spec["task"]["name"]
                why = f"dataset {name!r} is a {task} dataset; every searched dataset must share the {study_task} task"
                raise InvalidArgument(f"{path}.choice.values[{j}]", why)
    return False

"""The full configuration a trial ran with: the stored spec's settings with its searched values written in.

A trial's ``config`` holds only the searched parameters (``model.num_filters: 17``); the trainer ran
with the whole of the study's validated spec -- dataset, model, task, every training field, the
optimizer and its options -- with those values written in. The server stores both, and the rule
that combines them is its ``study.settings.resolve``: the same is done here, on the client, from
the stored spec and the trial's config. Given the server's plugin list, each component's options
are completed with the plugin's defaults and typed (an ``int`` option is an int again), and the
options a searched component name's plugin does not accept are dropped, as the server drops them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from tuneyard.v1 import service_pb2, spec_pb2

__all__ = ["resolved_config"]

_SECTIONS = ("dataset", "model", "task", "trainable", "training")
# Searched-parameter heads naming a component, and the plugin kind of each.
_COMPONENTS = {
    "dataset": "dataset",
    "model": "model",
    "task": "task",
    "trainable": "trainable",
    "optimizer": "optimizer",
    "lr_scheduler": "lr_scheduler",
}
Plugins = Mapping[tuple[str, str], service_pb2.Plugin]


def _component(settings: dict[str, Any], head: str) -> dict[str, Any]:
    """The (mutable) component ``head`` of ``settings``, created empty when the spec has none."""
    owner = settings.setdefault("training", {}) if head in ("optimizer", "lr_scheduler") else settings
    component = owner.get(head)
    if not isinstance(component, dict):
        component = owner[head] = {"name": "", "options": {}}
    component.setdefault("options", {})
    return component


def _write(settings: dict[str, Any], name: str, value: Any, plugins: Plugins | None) -> None:
    """Write one searched value, as the server's ``resolve`` does."""
    parts = name.split(".")
    head = parts[0]
    if head == "training" and len(parts) == 2:
        settings.setdefault("training", {})[parts[1]] = value
    elif head == "augmentations" and len(parts) == 3:
        for aug in settings.get("training", {}).get("augmentations", []):
            if aug.get("name") == parts[1]:
                aug.setdefault("options", {})[parts[2]] = value
    elif head in _COMPONENTS and len(parts) == 2:
        component = _component(settings, head)
        if parts[1] == "name":
            plugin = plugins.get((_COMPONENTS[head], str(value))) if plugins is not None else None
            if plugin is not None:
                accepted = {p.name for p in plugin.parameters}
                component["options"] = {k: v for k, v in component["options"].items() if k in accepted}
            component["name"] = value
        else:
            component["options"][parts[1]] = value


def _typed(value: Any, kind: str) -> Any:
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _complete(component: dict[str, Any], plugin: service_pb2.Plugin | None) -> None:
    """Fill a component's missing options with its plugin's defaults; ints as ints."""
    if plugin is None:
        return
    options = component.setdefault("options", {})
    for param in plugin.parameters:
        if param.name not in options and param.HasField("default"):
            options[param.name] = json_format.MessageToDict(param.default)
        if param.name in options:
            options[param.name] = _typed(options[param.name], param.type)
    # The declared order, then any option the plugin does not list (kept as the server keeps it).
    order = {p.name: i for i, p in enumerate(plugin.parameters)}
    component["options"] = dict(sorted(options.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def _components(settings: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(plugin kind, component) for every component present in ``settings``."""
    found = [(kind, settings[head]) for head, kind in _COMPONENTS.items() if isinstance(settings.get(head), dict)]
    training = settings.get("training", {})
    found += [(h, training[h]) for h in ("optimizer", "lr_scheduler") if isinstance(training.get(h), dict)]
    found += [("augmentation", aug) for aug in training.get("augmentations", []) if isinstance(aug, dict)]
    return [(kind, c) for kind, c in found if c.get("name")]


def resolved_config(
    spec: spec_pb2.StudySpec,
    config: Mapping[str, Any],
    plugins: service_pb2.ListPluginsResponse | None = None,
) -> dict[str, Any]:
    """The nested configuration (``dataset``, ``model``, ``task``, ``training``...) a trial ran with.

    ``config`` is the trial's searched values as plain values (ints restored, see
    ``config_to_dict``); ``plugins`` (``Client.plugins()``) adds each plugin's default options.
    External studies have no trainer: their configuration is the searched values alone.
    """
    if spec.HasField("external"):
        return dict(config)
    # Every training field, those at their proto default (seed 0, label_smoothing 0.0) included.
    stored = json_format.MessageToDict(
        spec, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    settings = {head: copy.deepcopy(stored[head]) for head in _SECTIONS if spec.HasField(head)}
    by_name = {(p.kind, p.name): p for p in plugins.plugins} if plugins is not None else None
    if "seed" in settings.get("training", {}):
        settings["training"]["seed"] = int(settings["training"]["seed"])  # int64: a string in proto JSON
    for name, value in sorted(config.items(), key=lambda kv: not kv[0].endswith(".name")):
        _write(settings, name, value, by_name)
    if by_name is not None:
        for kind, component in _components(settings):
            _complete(component, by_name.get((kind, component["name"])))
    return settings

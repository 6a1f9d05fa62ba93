"""Applies a trial's searched parameters to a validated spec, giving the trainer's settings."""

from __future__ import annotations

import copy
from typing import Any

from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.study.spec import COMPONENTS


def _component(settings: dict[str, Any], head: str) -> dict[str, Any]:
    if head in ("optimizer", "lr_scheduler"):
        training = settings["training"]
        if training.get(head) is None:
            training[head] = {"name": "", "options": {}}
        return training[head]
    return settings[head]


def resolve(spec: dict[str, Any], config: dict[str, Any], registry: PluginRegistry) -> dict[str, Any]:
    """Returns `{dataset, model, training}` with every searched value written in.

    Names are applied before options, and when a search switches a component to another
    plugin, base options that the new plugin does not accept are dropped.
    """
    settings = {
        "dataset": copy.deepcopy(spec["dataset"]),
        "model": copy.deepcopy(spec["model"]),
        "training": copy.deepcopy(spec["training"]),
    }
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
            component = _component(settings, head)
            if parts[1] == "name":
                entry = registry.get(COMPONENTS[head], value)
                accepted = {p.name for p in entry.parameters}
                component["options"] = {k: v for k, v in component["options"].items() if k in accepted}
                component["name"] = value
            else:
                component["options"][parts[1]] = value
    return settings

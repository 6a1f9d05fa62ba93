"""Checks a spec's components (dataset, model, optimizer, ...) and their options against the registry.

Options of type "path" (annotated `DataPath`), set fixed or as choice values, must lie inside the
server's data root, checked by `resolve_data_path`: no `..` component, no absolute path elsewhere,
no symbolic link anywhere along the path that resolves outside, no NUL byte, no overlong path. A
path that does not exist yet is accepted (a dataset may download into it); an empty value means
"none" and is always accepted. With no data root configured every other value is refused. The
plugins check again when a trial opens the path, since files may change in between.
"""

from __future__ import annotations

from typing import Any

from tuneyard.plugins.api import ParamSpec, PluginEntry, resolve_data_path
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.plugins.schema import coerce_option
from tuneyard.server.study.domain import InvalidArgument


class ComponentChecker:
    """Plugin names, options and path values; `data_root` "" means none is configured."""

    def __init__(self, registry: PluginRegistry, data_root: str = "") -> None:
        self.registry = registry
        self.data_root = data_root

    def check_path(self, param: ParamSpec, value: Any, path: str) -> None:
        """A "path" option's value must lie inside the data root."""
        if param.type == "path" and value:
            try:
                resolve_data_path(self.data_root, value)
            except ValueError as exc:
                raise InvalidArgument(path, str(exc)) from None

    def plugin(self, kind: str, name: Any, path: str) -> PluginEntry:
        """The registered plugin `name` of `kind`; an unknown one names the known ones."""
        if not isinstance(name, str) or not name:
            raise InvalidArgument(path, f"a {kind} name is required")
        try:
            return self.registry.get(kind, name)
        except KeyError:
            known = ", ".join(self.registry.names(kind)) or "none installed"
            raise InvalidArgument(path, f"unknown {kind} {name!r} (known: {known})") from None

    def options(self, entry: PluginEntry, options: Any, path: str) -> dict[str, Any]:
        """The options in their parameters' types; an unknown option names the known ones."""
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise InvalidArgument(path, "must be an object")
        checked: dict[str, Any] = {}
        for key, value in options.items():
            param = entry.param(key)
            if param is None:
                known = ", ".join(p.name for p in entry.parameters) or "none"
                raise InvalidArgument(
                    f"{path}.{key}", f"unknown option of {entry.kind} {entry.name!r} (known: {known})"
                )
            try:
                checked[key] = coerce_option(param, value)
            except ValueError as exc:
                raise InvalidArgument(f"{path}.{key}", str(exc)) from None
            self.check_path(param, checked[key], f"{path}.{key}")
        return checked

    def component(
        self, kind: str, value: Any, path: str, *, default: str | None = None, optional: bool = False
    ) -> dict[str, Any] | None:
        """`{name, options}` checked; None for an absent optional component."""
        value = value or {}
        if not isinstance(value, dict):
            raise InvalidArgument(path, "must be an object")
        name = value.get("name") or default
        if not name:
            if optional and not value.get("options"):
                return None
            raise InvalidArgument(f"{path}.name", f"a {kind} name is required")
        entry = self.plugin(kind, name, f"{path}.name")
        return {"name": entry.name, "options": self.options(entry, value.get("options"), f"{path}.options")}

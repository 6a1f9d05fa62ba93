"""`PluginRegistry`: the one facade over pluggy's PluginManager.

Call sites use its typed methods and never touch ``pm.hook``. Start-up order is fixed:
built-ins, then entry points (group ``tuneyard``), then ``check_pending()``. Built-ins go
through exactly the same path as third-party plugins. Nothing a plugin does while loading
is fatal: it becomes a `LoadError` that ``tuneyard plugins`` shows.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pluggy

import tuneyard
from tuneyard.plugins import hookspecs
from tuneyard.plugins.api import KINDS, Bounds, LoadError, PluginEntry
from tuneyard.plugins.plugin_files import import_plugin_files
from tuneyard.plugins.registration import bounded, check_registration, entry_flags
from tuneyard.plugins.schema import accepted_kwargs, derive_params, describe, resolve_options

log = logging.getLogger("tuneyard.plugins")

ENTRY_POINT_GROUP = "tuneyard"
LOAD_ENV = "TUNEYARD_LOAD_PLUGINS"
TRACE_ENV = "TUNEYARD_TRACE_PLUGINS"

# The built-in plugins, registered like any third-party plugin (datasette/llm style).
BUILTIN_MODULES: tuple[str, ...] = (
    "tuneyard.plugins.builtin.optimizers",
    "tuneyard.plugins.builtin.lr_schedulers",
    "tuneyard.plugins.builtin.augmentations",
    "tuneyard.plugins.builtin.models",
    "tuneyard.plugins.builtin.datasets",
    "tuneyard.plugins.builtin.searchers",
    "tuneyard.plugins.builtin.early_stoppers",
    "tuneyard.plugins.builtin.pbt",
    "tuneyard.plugins.builtin.tasks",
    "tuneyard.plugins.builtin.tensorboard_logger",
    "tuneyard.plugins.builtin.mlflow_logger",
)

REGISTER_HOOKS: dict[str, str] = {
    "optimizer": "tuneyard_register_optimizers",
    "lr_scheduler": "tuneyard_register_lr_schedulers",
    "augmentation": "tuneyard_register_augmentations",
    "model": "tuneyard_register_models",
    "dataset": "tuneyard_register_datasets",
    "searcher": "tuneyard_register_searchers",
    "early_stopper": "tuneyard_register_early_stoppers",
    "trainable": "tuneyard_register_trainables",
    "task": "tuneyard_register_tasks",
}


class PluginRegistry:
    """Registered plugins by (kind, name), plus the errors met while loading them."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._entries: dict[tuple[str, str], PluginEntry] = {}
        self._owner: dict[tuple[str, str], str] = {}  # (kind, name) -> plugin name
        self.errors: list[LoadError] = []

    @classmethod
    def load(cls, *, entry_points: bool = True, plugins_dir: str = "") -> PluginRegistry:
        """Built-ins, then the entry points allowed by TUNEYARD_LOAD_PLUGINS, then every `*.py` of
        `plugins_dir` (`serve --plugins-dir`), then check_pending()."""
        reg = cls()
        if os.environ.get(TRACE_ENV, "") not in ("", "0"):
            reg._pm.add_hookcall_monitoring(_trace_before, _trace_after)
        version = getattr(tuneyard, "__version__", "0")
        for module_name in BUILTIN_MODULES:
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:
                reg._error(module_name, f"built-in plugin {module_name} failed to import: {_why(exc)}")
                continue
            reg.add_plugin(module, name=module_name, distribution="tuneyard", version=version)
        if entry_points:
            reg._load_entry_points()
        if plugins_dir:
            reg._load_plugins_dir(Path(plugins_dir))
        reg._pm.check_pending()  # every plugin was checked on arrival; this cannot fail now
        return reg

    def _load_entry_points(self) -> None:
        allowed = os.environ.get(LOAD_ENV)
        wanted = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
        found = set()
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            found.add(ep.name)
            if wanted is not None and ep.name not in wanted:
                continue
            dist = getattr(ep, "dist", None)
            dist_name = dist.name if dist is not None else ep.name
            dist_version = dist.version if dist is not None else "0"
            try:
                plugin = ep.load()
            except Exception as exc:
                self._error(
                    ep.name,
                    f"plugin {ep.name!r} ({ep.value}, from {dist_name} {dist_version}) failed to import: {_why(exc)}",
                )
                continue
            self.add_plugin(plugin, name=ep.name, distribution=dist_name, version=dist_version)
        for missing in sorted((wanted or set()) - found):
            self._error(missing, f"{LOAD_ENV} names {missing!r} but no {ENTRY_POINT_GROUP!r} entry point has it")

    def _load_plugins_dir(self, folder: Path) -> None:
        if not folder.is_dir():
            self._error("plugins-dir", f"the plugins directory {folder.name!r} does not exist or is not a directory")
            return
        for found in import_plugin_files(folder):
            if found.module is None:
                self._error(
                    found.file_name, f"plugin file {found.file_name} (--plugins-dir) failed to import: {found.error}"
                )
            else:
                self.add_plugin(found.module, name=found.module.__name__, distribution="plugins-dir", version="0")

    # ---- adding and removing plugins (built-ins, entry points and tests all come through here) ----

    def add_plugin(self, plugin: object, *, name: str | None = None, distribution: str = "", version: str = "") -> bool:
        """Register ``plugin`` with pluggy and run its registration hooks, on their own.

        Returns False (and records a LoadError) when the plugin is invalid or raised while
        registering; in that case none of its registrations are kept.
        """
        label = name or getattr(plugin, "__name__", None) or repr(plugin)
        source = f"{distribution} {version}".strip() or "unknown distribution"
        try:
            registered = self._pm.register(plugin, name=name)
            if registered is None:
                self._error(label, f"plugin {label!r} is blocked")
                return False
            label = registered
            try:
                self._pm.check_pending()
            except pluggy.PluginValidationError:
                self._pm.unregister(plugin)
                raise
        except (pluggy.PluginValidationError, ValueError) as exc:
            self._error(label, f"plugin {label!r} ({source}) is not a valid tuneyard plugin: {exc}")
            return False

        pending: list[PluginEntry] = []
        others = [p for p in self._pm.get_plugins() if p is not plugin]
        for kind, hook_name in REGISTER_HOOKS.items():
            register = self._register_callback(kind, label, distribution, version, pending)
            try:
                self._pm.subset_hook_caller(hook_name, remove_plugins=others)(register=register)
            except Exception as exc:
                self._pm.unregister(plugin)
                self._error(label, f"plugin {label!r} ({source}) raised in {hook_name}: {_why(exc)}")
                return False
        for entry in pending:
            key = (entry.kind, entry.name)
            if key in self._entries:
                first = self._entries[key]
                self._error(
                    label,
                    f"plugin {label!r} ({source}) registers {entry.kind} {entry.name!r}, already registered "
                    f"by {self._owner[key]!r} ({first.distribution} {first.version}); keeping the first",
                )
                continue
            self._entries[key] = entry
            self._owner[key] = label
        return True

    def remove_plugin(self, name: str) -> None:
        """Unregister a plugin and forget what it registered (tests use this in ``finally``)."""
        if self._pm.get_plugin(name) is not None:
            self._pm.unregister(name=name)
        for key in [k for k, owner in self._owner.items() if owner == name]:
            del self._entries[key], self._owner[key]

    def _register_callback(
        self, kind: str, plugin: str, distribution: str, version: str, pending: list[PluginEntry]
    ) -> Callable[..., None]:
        def register(
            name: str,
            factory: Callable[..., Any],
            description: str = "",
            *,
            bounds: Mapping[str, Bounds] | None = None,
            **extra: Any,
        ) -> None:
            problem = check_registration(kind, name, factory, description, extra)
            if problem is None:
                try:
                    params = bounded(derive_params(factory, kind), bounds)
                except (TypeError, ValueError) as exc:
                    problem = str(exc)
            if problem is not None:
                self._error(plugin, f"plugin {plugin!r} cannot register {kind} {name!r}: {problem}")
                return
            if any(e.name == name and e.kind == kind for e in pending):
                self._error(plugin, f"plugin {plugin!r} registers {kind} {name!r} twice; keeping the first")
                return
            pending.append(
                PluginEntry(
                    kind=kind,
                    name=name,
                    factory=factory,
                    description=description or describe(factory),
                    parameters=params,
                    distribution=distribution,
                    version=version,
                    **entry_flags(kind, extra),
                )
            )

        return register

    def _error(self, source: str, message: str) -> None:
        log.warning("%s", message)
        self.errors.append(LoadError(source=source, message=message))

    # ---- lookup ----

    def get(self, kind: str, name: str) -> PluginEntry:
        """The entry for (kind, name); KeyError when the kind or the name is unknown."""
        _check_kind(kind)
        try:
            return self._entries[(kind, name)]
        except KeyError:
            raise KeyError(f"unknown {kind} {name!r}") from None

    def names(self, kind: str) -> list[str]:
        _check_kind(kind)
        return sorted(n for k, n in self._entries if k == kind)

    def entries(self, kind: str | None = None) -> list[PluginEntry]:
        if kind is not None:
            _check_kind(kind)
        return [self._entries[k] for k in sorted(self._entries) if kind is None or k[0] == kind]

    def create(
        self, kind: str, name: str, options: dict[str, Any], *, args: tuple[Any, ...] = (), **injected: Any
    ) -> Any:
        """Build a plugin object: options coerced and defaulted, injected kwargs the factory takes.

        ValueError names a bad option; errors raised by the factory itself propagate.
        """
        entry = self.get(kind, name)
        kwargs = resolve_options(entry.parameters, dict(options or {}), f"{kind} {name!r}")
        for key in accepted_kwargs(entry.factory, injected):
            kwargs[key] = injected[key]
        return entry.factory(*args, **kwargs)

    # ---- trial observers: each plugin called on its own, exceptions logged ----

    def on_trial_start(self, study_id: str, trial_id: int, config: dict[str, Any]) -> None:
        self._observe("tuneyard_on_trial_start", study_id=study_id, trial_id=trial_id, config=dict(config))

    def on_trial_report(self, study_id: str, trial_id: int, epoch: int, metrics: dict[str, float]) -> None:
        self._observe(
            "tuneyard_on_trial_report",
            study_id=study_id,
            trial_id=trial_id,
            epoch=epoch,
            metrics=dict(metrics),
        )

    def on_trial_end(self, study_id: str, trial_id: int, state: str, metrics: dict[str, float]) -> None:
        self._observe("tuneyard_on_trial_end", study_id=study_id, trial_id=trial_id, state=state, metrics=dict(metrics))

    def _observe(self, hook_name: str, **kwargs: Any) -> None:
        impls = getattr(self._pm.hook, hook_name).get_hookimpls()
        if not impls:
            return
        plugins = self._pm.get_plugins()
        for impl in impls:
            others = [p for p in plugins if p is not impl.plugin]
            try:
                self._pm.subset_hook_caller(hook_name, remove_plugins=others)(**kwargs)
            except Exception:
                log.exception("plugin %r raised in %s (ignored)", impl.plugin_name, hook_name)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise KeyError(f"unknown plugin kind {kind!r} (known: {', '.join(KINDS)})")


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _trace_before(hook_name: str, hook_impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
    log.info("hook %s -> %s", hook_name, [impl.plugin_name for impl in hook_impls])


def _trace_after(
    outcome: pluggy.Result[Any], hook_name: str, hook_impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]
) -> None:
    failed = outcome.exception
    log.info("hook %s done%s", hook_name, f" (raised {failed!r})" if failed else "")

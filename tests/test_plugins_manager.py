"""PluginRegistry: built-ins, throwaway plugins, load errors, entry points, observers."""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tuneyard
from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import KINDS
from tuneyard.plugins.manager import BUILTIN_MODULES, PluginRegistry


@pytest.fixture
def reg(monkeypatch: pytest.MonkeyPatch) -> PluginRegistry:
    monkeypatch.delenv("TUNEYARD_TRACE_PLUGINS", raising=False)
    return PluginRegistry.load(entry_points=False)


def test_builtins_load_without_errors(reg: PluginRegistry) -> None:
    assert reg.errors == []
    # optimizer / lr_scheduler names: tests/test_optimizers.py, tests/test_lr_schedulers.py
    assert {"horizontal_flip", "random_crop", "mixup"} <= set(reg.names("augmentation"))
    assert "simple_cnn" in reg.names("model")  # the full list: tests/test_models.py
    assert {"digits", "synthetic"} <= set(reg.names("dataset"))
    assert {"grid", "random", "sobol", "tpe", "cmaes", "evolution"} <= set(reg.names("searcher"))
    entries = reg.entries()
    assert [(e.kind, e.name) for e in entries] == sorted((e.kind, e.name) for e in entries)
    assert {(e.distribution, e.version) for e in entries} == {("tuneyard", tuneyard.__version__)}
    assert all(e.description for e in entries)
    assert "simple_cnn" in [e.name for e in reg.entries("model")]


def test_unknown_kind_or_name_is_a_key_error(reg: PluginRegistry) -> None:
    with pytest.raises(KeyError, match="unknown optimizer 'lion'"):
        reg.get("optimizer", "lion")
    for call in (lambda: reg.get("widget", "x"), lambda: reg.names("widget"), lambda: reg.entries("widget")):
        with pytest.raises(KeyError, match="unknown plugin kind 'widget'"):
            call()
    assert reg.names("early_stopper") == ["asha", "hyperband", "median", "pbt"]
    assert set(KINDS) >= {e.kind for e in reg.entries()}


class ThrowawayPlugin:
    """A datasette-style plugin object: hookimpls as methods."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    @hookimpl
    def tuneyard_register_optimizers(self, register: Any) -> None:
        def lion(params: Any, *, lr: float = 1e-4, decay: int = 0) -> tuple[Any, float, int]:
            """Lion, for tests."""
            return (list(params), lr, decay)

        register("lion", lion)

    @hookimpl
    def tuneyard_register_augmentations(self, register: Any) -> None:
        def mixup(*, alpha: float = 0.2) -> str:
            return f"mixup {alpha}"

        register("tp_mixup", mixup, description="MixUp on batches", batch_level=True)

    @hookimpl
    def tuneyard_on_trial_start(self, study_id: str, trial_id: int, config: dict) -> None:
        self.calls.append(("start", (study_id, trial_id, config)))

    @hookimpl
    def tuneyard_on_trial_report(self, study_id: str, trial_id: int, epoch: int, metrics: dict) -> None:
        self.calls.append(("report", (study_id, trial_id, epoch, metrics)))

    @hookimpl
    def tuneyard_on_trial_end(self, study_id: str, trial_id: int, state: str, metrics: dict) -> None:
        self.calls.append(("end", (study_id, trial_id, state, metrics)))


def test_throwaway_plugin_registers_and_unregisters(reg: PluginRegistry) -> None:
    plugin = ThrowawayPlugin()
    assert reg.add_plugin(plugin, name="throwaway", distribution="tp", version="9.9")
    try:
        lion = reg.get("optimizer", "lion")
        assert (lion.distribution, lion.version, lion.description) == ("tp", "9.9", "Lion, for tests.")
        assert [p.name for p in lion.parameters] == ["lr", "decay"]
        mixup = reg.get("augmentation", "tp_mixup")
        assert mixup.batch_level and mixup.description == "MixUp on batches"
        assert not reg.get("augmentation", "random_crop").batch_level
        assert reg.errors == []
    finally:
        reg.remove_plugin("throwaway")
    assert "lion" not in reg.names("optimizer")
    reg.on_trial_start("s", 1, {})
    assert plugin.calls == []


def test_create_coerces_fills_defaults_and_passes_only_accepted_injected(reg: PluginRegistry) -> None:
    reg.add_plugin(ThrowawayPlugin(), name="throwaway")
    params, lr, decay = reg.create("optimizer", "lion", {"decay": 3.0}, args=(iter([1, 2]),), epochs=5)
    assert (params, lr, decay) == ([1, 2], 1e-4, 3) and type(decay) is int
    assert reg.create("augmentation", "tp_mixup", {"alpha": 1}, input_shape=(1, 8, 8)) == "mixup 1.0"
    with pytest.raises(ValueError, match="option 'decay' of optimizer 'lion': expected int, got 0.5"):
        reg.create("optimizer", "lion", {"decay": 0.5}, args=([],))
    with pytest.raises(ValueError, match="unknown option 'beta'"):
        reg.create("optimizer", "lion", {"beta": 0.5}, args=([],))
    with pytest.raises(KeyError):
        reg.create("optimizer", "nope", {})


def test_duplicate_name_is_a_load_error_and_the_first_wins(reg: PluginRegistry) -> None:
    class Duplicate:
        @hookimpl
        def tuneyard_register_optimizers(self, register: Any) -> None:
            register("adam", lambda params, *, lr=1.0: None)
            register("adam2", lambda params, *, lr=1.0: None)

    assert reg.add_plugin(Duplicate(), name="dup", distribution="dup-dist", version="1")
    assert reg.get("optimizer", "adam").distribution == "tuneyard"
    assert reg.get("optimizer", "adam2").distribution == "dup-dist"
    [error] = reg.errors
    assert error.source == "dup"
    assert "'dup'" in error.message and "optimizer 'adam'" in error.message
    assert "tuneyard.plugins.builtin.optimizers" in error.message and "keeping the first" in error.message


def test_plugin_raising_while_registering_is_a_load_error(reg: PluginRegistry) -> None:
    class Broken:
        @hookimpl
        def tuneyard_register_models(self, register: Any) -> None:
            register("half", lambda *, input_shape, num_classes: None)
            raise RuntimeError("boom")

        @hookimpl
        def tuneyard_on_trial_start(self, study_id: str, trial_id: int, config: dict) -> None:
            raise AssertionError("a plugin that failed to load must not observe")

    assert not reg.add_plugin(Broken(), name="broken")
    [error] = reg.errors
    assert error.source == "broken"
    assert "tuneyard_register_models" in error.message and "RuntimeError: boom" in error.message
    assert "half" not in reg.names("model")
    reg.on_trial_start("s", 1, {})


def test_hookimpl_matching_no_spec_is_a_load_error(reg: PluginRegistry) -> None:
    class Typo:
        @hookimpl
        def tuneyard_register_optimiser(self, register: Any) -> None:
            pass

    class WrongArgs:
        @hookimpl
        def tuneyard_register_models(self, reg: Any) -> None:
            pass

    assert not reg.add_plugin(Typo(), name="typo")
    assert not reg.add_plugin(WrongArgs(), name="wrong-args")
    assert [e.source for e in reg.errors] == ["typo", "wrong-args"]
    assert "tuneyard_register_optimiser" in reg.errors[0].message
    assert reg.add_plugin(ThrowawayPlugin(), name="after")  # the manager still works


def test_invalid_registrations_are_skipped_and_reported(reg: PluginRegistry) -> None:
    class Sloppy:
        @hookimpl
        def tuneyard_register_models(self, register: Any) -> None:
            register("has.dot", lambda *, input_shape, num_classes: None)
            register("not_callable", 42)
            register("bad_extra", lambda *, input_shape, num_classes: None, batch_level=True)
            register("fine", lambda *, input_shape, num_classes: None)
            register("fine", lambda *, input_shape, num_classes: None)

    assert reg.add_plugin(Sloppy(), name="sloppy")
    assert "fine" in reg.names("model") and not {"has.dot", "not_callable", "bad_extra"} & set(reg.names("model"))
    messages = "\n".join(e.message for e in reg.errors)
    assert len(reg.errors) == 4
    for fragment in ("'has.dot'", "not callable", "'batch_level'", "'fine' twice"):
        assert fragment in messages


def test_observers_get_copies_and_a_raising_observer_is_logged(
    reg: PluginRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    class Raiser:
        @hookimpl
        def tuneyard_on_trial_report(self, study_id: str, trial_id: int, epoch: int, metrics: dict) -> None:
            raise RuntimeError("observer broke")

    good = ThrowawayPlugin()
    reg.add_plugin(Raiser(), name="raiser")
    reg.add_plugin(good, name="good")
    with caplog.at_level(logging.ERROR, logger="tuneyard.plugins"):
        reg.on_trial_start("s1", 0, {"optimizer.lr": 0.1})
        reg.on_trial_report("s1", 0, 1, {"val_accuracy": 0.5})
        reg.on_trial_end("s1", 0, "COMPLETED", {"val_accuracy": 0.9})
    assert good.calls == [
        ("start", ("s1", 0, {"optimizer.lr": 0.1})),
        ("report", ("s1", 0, 1, {"val_accuracy": 0.5})),
        ("end", ("s1", 0, "COMPLETED", {"val_accuracy": 0.9})),
    ]
    assert "'raiser' raised in tuneyard_on_trial_report" in caplog.text and "observer broke" in caplog.text


def test_trace_switch_logs_hook_calls(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("TUNEYARD_TRACE_PLUGINS", "1")
    with caplog.at_level(logging.INFO, logger="tuneyard.plugins"):
        reg = PluginRegistry.load(entry_points=False)
        reg.add_plugin(ThrowawayPlugin(), name="traced")
        reg.on_trial_end("s", 1, "FAILED", {})
    assert "hook tuneyard_register_optimizers" in caplog.text
    assert "hook tuneyard_on_trial_end -> ['traced']" in caplog.text


def test_builtins_are_listed_in_one_tuple() -> None:
    assert all(m.startswith("tuneyard.plugins.builtin.") for m in BUILTIN_MODULES)
    reg = PluginRegistry.load(entry_points=False)
    assert reg.errors == []


# ---- entry points: a real distribution (dist-info on sys.path), found by importlib.metadata ----


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Install a fake distribution with a good and a broken entry point; return their names."""
    tag = uuid.uuid4().hex[:8]
    good, bad = f"tp_good_{tag}", f"tp_bad_{tag}"
    (tmp_path / f"{good}.py").write_text(
        "from tuneyard.plugins import hookimpl\n\n"
        "def lamb(params, *, lr: float = 0.001):\n"
        "    '''LAMB optimizer.'''\n\n"
        "@hookimpl\n"
        "def tuneyard_register_optimizers(register):\n"
        f"    register('lamb_{tag}', lamb)\n"
    )
    (tmp_path / f"{bad}.py").write_text("raise ImportError('missing dependency xyz')\n")
    dist_info = tmp_path / f"tuneyard_testplug_{tag}-1.2.3.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: tuneyard-testplug-{tag}\nVersion: 1.2.3\n")
    (dist_info / "entry_points.txt").write_text(f"[tuneyard]\ngood_{tag} = {good}\nbad_{tag} = {bad}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("TUNEYARD_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("TUNEYARD_TRACE_PLUGINS", raising=False)
    try:
        yield {"tag": tag, "good": f"good_{tag}", "bad": f"bad_{tag}", "optimizer": f"lamb_{tag}"}
    finally:
        sys.modules.pop(good, None)
        sys.modules.pop(bad, None)


def _mine(reg: PluginRegistry, names: dict[str, str]) -> list[str]:
    return [e.source for e in reg.errors if names["tag"] in e.source]


def test_entry_points_load_with_their_distribution(installed: dict[str, str]) -> None:
    reg = PluginRegistry.load()
    entry = reg.get("optimizer", installed["optimizer"])
    assert (entry.distribution, entry.version) == (f"tuneyard-testplug-{installed['tag']}", "1.2.3")
    assert entry.description == "LAMB optimizer."
    assert _mine(reg, installed) == [installed["bad"]]
    [error] = [e for e in reg.errors if e.source == installed["bad"]]
    assert "failed to import" in error.message and "missing dependency xyz" in error.message
    assert "1.2.3" in error.message
    assert "adam" in reg.names("optimizer")


def test_allow_list_env_var(installed: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEYARD_LOAD_PLUGINS", f" {installed['good']} ,")
    reg = PluginRegistry.load()
    assert installed["optimizer"] in reg.names("optimizer")
    assert reg.errors == []

    monkeypatch.setenv("TUNEYARD_LOAD_PLUGINS", "")
    reg = PluginRegistry.load()
    assert installed["optimizer"] not in reg.names("optimizer") and reg.errors == []
    assert "adam" in reg.names("optimizer")

    monkeypatch.setenv("TUNEYARD_LOAD_PLUGINS", f"nope_{installed['tag']}")
    reg = PluginRegistry.load()
    [error] = reg.errors
    assert f"nope_{installed['tag']}" in error.message and "TUNEYARD_LOAD_PLUGINS" in error.message


def test_entry_points_can_be_turned_off(installed: dict[str, str]) -> None:
    reg = PluginRegistry.load(entry_points=False)
    assert installed["optimizer"] not in reg.names("optimizer") and reg.errors == []

"""Typed trial settings: validation applies the defaults once, `resolve` writes a trial's values in
typed, and the result is plain frozen data that crosses a pipe unchanged."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.study.settings import (
    TRAINING_DEFAULTS,
    TRAINING_FIELDS,
    Component,
    TrainingSettings,
    TrialSettings,
    resolve,
)
from tuneyard.server.study.spec import SpecValidator

SEARCHED = {
    "dataset": {"name": "digits"},
    "model": {"name": "simple_cnn", "options": {"num_filters": 8}},
    "training": {
        "epochs": 3,
        "optimizer": {"name": "adam", "options": {"lr": 0.01, "beta1": 0.8}},
        "augmentations": [{"name": "random_crop", "options": {"padding": 1}}],
    },
    "search_space": [
        {"name": "optimizer.name", "choice": {"values": ["sgd", "adam"]}},
        {"name": "training.batch_size", "int_range": {"low": 16, "high": 64}},
        {"name": "training.label_smoothing", "choice": {"values": [0, 0.1]}},
        {"name": "training.seed", "choice": {"values": ["7", "8"]}},
        {"name": "model.num_conv_layers", "int_range": {"low": 1, "high": 2}},
        {"name": "augmentations.random_crop.padding", "int_range": {"low": 0, "high": 2}},
    ],
    "budget": {"max_trials": 2},
}


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return PluginRegistry.load(entry_points=False)


def _resolved(registry: PluginRegistry, spec: dict, config: dict) -> TrialSettings:
    plan = SpecValidator(registry).validate(spec)
    return resolve(plan.spec, config, registry)


def test_resolve_of_a_searched_config_gives_typed_values(registry):
    config = {
        "optimizer.name": "sgd",
        "training.batch_size": 32,
        "training.label_smoothing": 0,
        "training.seed": "7",
        "model.num_conv_layers": 2,
        "augmentations.random_crop.padding": 2,
    }
    settings = _resolved(registry, SEARCHED, config)
    training = settings.training
    assert training.batch_size == 32 and type(training.batch_size) is int
    assert training.seed == 7 and type(training.seed) is int  # an int64 choice may arrive as text
    assert training.label_smoothing == 0.0 and type(training.label_smoothing) is float
    assert training.optimizer == Component("sgd", {"lr": 0.01})  # beta1 is adam's: dropped with the switch
    assert settings.model == Component("simple_cnn", {"num_filters": 8, "num_conv_layers": 2})
    assert training.augmentations == (Component("random_crop", {"padding": 2}),)
    assert settings.dataset == Component("digits", {})


def test_resolve_leaves_the_validated_spec_as_it_was(registry):
    plan = SpecValidator(registry).validate(SEARCHED)
    before = repr(plan.spec)
    resolve(plan.spec, {"optimizer.name": "sgd", "model.num_conv_layers": 2}, registry)
    assert repr(plan.spec) == before


def test_trial_settings_pickle_and_round_trip(registry):
    settings = _resolved(registry, SEARCHED, {"optimizer.name": "adam", "training.batch_size": 16})
    again = pickle.loads(pickle.dumps(settings))
    assert again == settings and isinstance(again.training, TrainingSettings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.training.epochs = 5  # type: ignore[misc]


def test_a_spec_without_optional_fields_resolves_to_the_documented_defaults(registry):
    bare = {"dataset": {"name": "digits"}, "model": {"name": "simple_cnn"}, "training": {"epochs": 3}}
    settings = _resolved(registry, {**bare, "budget": {"max_trials": 1}}, {})
    assert settings.training == TrainingSettings(
        epochs=3,
        batch_size=64,
        label_smoothing=0.0,
        seed=0,
        precision="auto",
        grad_clip_norm=0.0,
        grad_accumulation_steps=1,
        ema_decay=0.0,
        early_stop_patience=0,
        deterministic=False,
        data_pipeline="auto",
        optimizer=Component("adam", {}),
        lr_scheduler=None,
        augmentations=(),
    )
    assert settings.training == TrainingSettings(epochs=3, optimizer=Component("adam"))  # the one declaration


def test_the_spec_table_of_training_fields_is_derived_from_the_dataclass():
    plain = [f.name for f in dataclasses.fields(TrainingSettings) if "bounds" in f.metadata]
    assert list(TRAINING_FIELDS) == plain
    assert "epochs" not in TRAINING_DEFAULTS  # a spec must set it
    assert {n: f.default for n, f in TrainingSettings.__dataclass_fields__.items() if n in TRAINING_DEFAULTS} == (
        TRAINING_DEFAULTS
    )
    assert TRAINING_FIELDS["grad_accumulation_steps"].type == "int" and TRAINING_FIELDS["deterministic"].type == "bool"

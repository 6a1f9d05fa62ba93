"""A spec's task follows its dataset: the objectives it may name, the task options it may set and search,
and what it refuses (a task that is not the dataset's, class-label techniques on a regression task)."""

from __future__ import annotations

import types
from typing import Any

import pytest

from tuneyard.plugins import hookimpl
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.study.domain import InvalidArgument
from tuneyard.server.study.settings import TrialSettings, resolve
from tuneyard.server.study.spec import SpecValidator


def _vectors(*, root: str, targets: int = 1) -> Any:
    raise AssertionError("validation never builds a dataset")


def _labels(*, root: str, task: str = "classification") -> Any:
    raise AssertionError("validation never builds a dataset")


@hookimpl
def tuneyard_register_datasets(register: Any) -> None:
    register("vectors", _vectors, task="regression")
    register("labelled", _labels)  # takes its task from its option, as csv does


def _plugin(hook: str, impl: Any) -> types.ModuleType:
    module = types.ModuleType(f"test_{hook}")
    setattr(module, hook, impl)
    return module


@pytest.fixture(scope="module")
def validator() -> SpecValidator:
    registry = PluginRegistry.load(entry_points=False)
    registry.add_plugin(_plugin("tuneyard_register_datasets", tuneyard_register_datasets), name="vectors")
    assert not registry.errors, registry.errors
    return SpecValidator(registry)


def regression_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset": {"name": "vectors"},
        "model": {"name": "simple_cnn"},
        "training": {"epochs": 2},
        "budget": {"max_trials": 2},
    }
    spec.update(overrides)
    return spec


def refused(validator: SpecValidator, spec: dict[str, Any]) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as err:
        validator.validate(spec)
    return err.value


def test_a_regression_dataset_makes_a_regression_study_minimising_its_loss_by_default(validator) -> None:
    plan = validator.validate(regression_spec())
    assert plan.spec["task"] == {"name": "regression", "options": {}}
    assert (plan.objective.metric, plan.objective.mode) == ("val_loss", "min")
    for metric, mode in [("val_mse", "min"), ("val_mae", "min"), ("val_r2", "max"), ("train_mse", "min")]:
        objective = validator.validate(regression_spec(objective={"metric": metric})).objective
        assert (objective.metric, objective.mode) == (metric, mode)


def test_the_objective_must_be_a_metric_of_the_task(validator) -> None:
    err = refused(validator, regression_spec(objective={"metric": "val_accuracy"}))
    assert err.field == "spec.objective.metric"
    assert "regression" in str(err) and "val_mse" in str(err)
    err = refused(validator, regression_spec(objectives=[{"metric": "val_mse"}, {"metric": "test_mse"}]))
    assert err.field == "spec.objectives[1].metric"


def test_every_metric_the_trainer_reports_is_an_objective_of_a_classification_study(validator) -> None:
    spec = regression_spec(dataset={"name": "digits"})
    for metric in ["val_accuracy", "train_accuracy", "val_loss", "train_seconds", "lr", "epoch_seconds", "params"]:
        assert validator.validate(spec | {"objective": {"metric": metric}}).objective.metric == metric
    assert validator.validate(spec).objective.metric == "val_accuracy"


def test_task_options_are_checked_fixed_and_searched_and_reach_the_settings(validator) -> None:
    spec = regression_spec(
        task={"options": {"huber_delta": 0.5}},
        search_space=[{"name": "task.loss", "choice": {"values": ["mse", "huber", "l1"]}}],
    )
    plan = validator.validate(spec)
    settings = resolve(plan.spec, {"task.loss": "huber"}, validator.registry)
    assert isinstance(settings, TrialSettings)
    assert (settings.task.name, settings.task.options) == ("regression", {"huber_delta": 0.5, "loss": "huber"})
    assert (
        refused(validator, regression_spec(task={"options": {"huber_delta": 0}})).field
        == "spec.task.options.huber_delta"
    )
    assert refused(validator, regression_spec(task={"options": {"smooth": 1}})).field == "spec.task.options.smooth"
    err = refused(
        validator, regression_spec(search_space=[{"name": "task.huber_delta", "float_range": {"low": 0, "high": 1}}])
    )
    assert err.field.startswith("spec.search_space[0].float_range")


def test_a_task_that_is_not_the_datasets_is_refused(validator) -> None:
    err = refused(validator, regression_spec(task={"name": "classification"}))
    assert err.field == "spec.task.name" and "regression dataset" in str(err)
    err = refused(
        validator, regression_spec(search_space=[{"name": "task.name", "choice": {"values": ["regression"]}}])
    )
    assert err.field == "spec.search_space[0].name"


def test_a_dataset_option_names_the_task_and_an_unknown_one_is_refused(validator) -> None:
    plan = validator.validate(regression_spec(dataset={"name": "labelled", "options": {"task": "multilabel"}}))
    assert plan.spec["task"]["name"] == "multilabel" and plan.objective.metric == "val_accuracy"
    err = refused(validator, regression_spec(dataset={"name": "labelled", "options": {"task": "ranking"}}))
    assert err.field == "spec.dataset" and "ranking" in str(err)
    err = refused(
        validator, regression_spec(search_space=[{"name": "dataset.task", "choice": {"values": ["regression"]}}])
    )
    assert err.field == "spec.search_space[0].name"


def test_searching_datasets_of_another_task_is_refused(validator) -> None:
    err = refused(
        validator, regression_spec(search_space=[{"name": "dataset.name", "choice": {"values": ["vectors", "digits"]}}])
    )
    assert err.field == "spec.search_space[0].choice.values[1]"
    assert "classification dataset" in str(err)


def test_class_label_techniques_are_refused_for_a_regression_task(validator) -> None:
    err = refused(validator, regression_spec(training={"epochs": 2, "label_smoothing": 0.1}))
    assert err.field == "spec.training.label_smoothing"
    err = refused(validator, regression_spec(training={"epochs": 2, "augmentations": [{"name": "mixup"}]}))
    assert err.field == "spec.training.augmentations[0].name" and "mixup" in str(err)


def test_a_task_registering_a_reserved_or_malformed_metric_is_a_load_error() -> None:
    @hookimpl
    def tuneyard_register_tasks(register: Any) -> None:
        register("ranking", lambda *, num_classes: None, metrics={"loss": "min"})
        register("scoring", lambda *, num_classes: None, metrics={"ndcg": "higher"})
        register("fine", lambda *, num_classes: None, metrics={"ndcg": "max"})

    registry = PluginRegistry.load(entry_points=False)
    registry.add_plugin(_plugin("tuneyard_register_tasks", tuneyard_register_tasks), name="tasks")
    messages = [e.message for e in registry.errors]
    assert any("'ranking'" in m and "clash" in m for m in messages), messages
    assert any("'scoring'" in m and "'min' or 'max'" in m for m in messages), messages
    assert [m.name for m in registry.get("task", "fine").metrics] == ["ndcg"]

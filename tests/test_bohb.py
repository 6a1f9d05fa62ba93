"""The `bohb` searcher: valid configs for every parameter type, a model of the highest budget with
enough results, exact resume; and `observe_step` through a real external study with ASHA, replayed
after a server restart, while searchers without it keep working."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_searchers_more import CONDITIONAL

from tuneyard.plugins.api import Choice, FloatRange, Objective, Parameter, Searcher
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

EVERY_TYPE = (  # the conditional space of the other searchers' tests, with a choice of ints and a fixed float
    *CONDITIONAL,
    Parameter("model.kernel", Choice((3, 5, 7))),
    Parameter("model.dropout", FloatRange(0.25, 0.25)),
)
PLANE = (Parameter("x", FloatRange(0.0, 1.0)), Parameter("y", FloatRange(0.0, 1.0)))


@pytest.fixture(scope="module")
def reg() -> PluginRegistry:
    return PluginRegistry.load(entry_points=False)


def make(reg: PluginRegistry, name: str, space: Any, seed: int = 0, mode: str = "min", **options: Any) -> Any:
    searcher = reg.create("searcher", name, options, space=space, objective=Objective("v", mode), seed=seed)
    assert isinstance(searcher, Searcher)
    return searcher


def check(config: dict[str, Any]) -> None:
    sgd = config["optimizer.name"] == "sgd"
    fixed = {"optimizer.name", "optimizer.lr", "model.layers", "training.batch_size", "model.kernel", "model.dropout"}
    assert set(config) == fixed | ({"optimizer.momentum"} if sgd else set()), config
    lr = config["optimizer.lr"]
    assert type(lr) is float and ((1e-3 <= lr <= 1.0) if sgd else (1e-5 <= lr <= 1e-2)), config
    assert not sgd or 0.0 <= config["optimizer.momentum"] <= 0.99
    assert type(config["model.layers"]) is int and 1 <= config["model.layers"] <= 4
    size = config["training.batch_size"]
    assert type(size) is int and 16 <= size <= 256 and size % 16 == 0, config
    assert config["model.kernel"] in (3, 5, 7) and config["model.dropout"] == 0.25


def loss(config: dict[str, Any]) -> float:
    """Best: adam, lr 1e-3, 3 layers, kernel 5."""
    target = 0.1 if config["optimizer.name"] == "sgd" else 1e-3
    return (
        math.log10(config["optimizer.lr"] / target) ** 2
        + (config["model.layers"] - 3) ** 2
        + (config["model.kernel"] != 5)
        + (config["optimizer.name"] == "sgd")
    )


def drive(searcher: Any, trials: int, start: int = 1) -> list[dict[str, Any]]:
    """Suggest, report steps 1 and 3 (the rungs of a 4-step ASHA), end COMPLETED."""
    configs = []
    for trial_id in range(start, start + trials):
        config = searcher.suggest(trial_id)
        assert config is not None
        configs.append(config)
        for step in (1, 3):
            if hasattr(searcher, "observe_step"):  # optional: random has none
                searcher.observe_step(trial_id, step, loss(config) + 1.0 / step)
        searcher.observe(trial_id, "COMPLETED", loss(config))
    return configs


def test_every_parameter_type_gets_valid_model_based_configs_deterministically(reg: PluginRegistry) -> None:
    searcher = make(reg, "bohb", EVERY_TYPE, seed=3, random_fraction=0.0)
    configs = drive(searcher, 40)
    assert searcher.model() is not None and searcher.model().budget == 3  # the model made most of them
    for config in configs:
        check(config)
    assert len({json.dumps(c, sort_keys=True) for c in configs}) == 40  # never a repeat
    assert configs == drive(make(reg, "bohb", EVERY_TYPE, seed=3, random_fraction=0.0), 40)
    assert configs[:10] != drive(make(reg, "bohb", EVERY_TYPE, seed=4, random_fraction=0.0), 10)
    late = [loss(c) for c in configs[20:]]
    randomly = [loss(c) for c in drive(make(reg, "random", EVERY_TYPE, seed=3), 40)[20:]]
    assert statistics.median(late) < 0.5 * statistics.median(randomly)


def distance(config: dict[str, Any], to: tuple[float, float]) -> float:
    return math.hypot(config["x"] - to[0], config["y"] - to[1])


@pytest.mark.parametrize("ranking", ["reach", "budget"])
def test_suggestions_follow_the_highest_rung_with_enough_results(reg: PluginRegistry, ranking: str) -> None:
    """Step 1 is misleading (best near A), step 3 tells the truth (best near B): once step 3 has
    min_points + 2 = 5 results the model is fitted there, and suggestions move from A to B."""
    a, b = (0.2, 0.8), (0.8, 0.2)
    searcher = make(reg, "bohb", PLANE, seed=1, random_fraction=0.0, ranking=ranking)
    rand = make(reg, "random", PLANE, seed=1)
    for trial_id in range(1, 21):  # 20 trials at step 1 only (stopped at the first rung)
        searcher.observe_step(trial_id, 1, distance(searcher.suggest(trial_id), a))
    assert searcher.model().budget == 1
    near_a = [searcher.suggest(t) for t in range(21, 31)]
    baseline = statistics.median(distance(rand.suggest(t), a) for t in range(1, 11))
    assert statistics.median(distance(c, a) for c in near_a) < 0.5 * baseline
    for trial_id, config in enumerate(near_a, start=21):
        searcher.observe_step(trial_id, 1, distance(config, a))
    for trial_id in range(31, 36):  # five more promoted to step 3, where B is best
        config = searcher.suggest(trial_id)
        for step in (1, 3):
            searcher.observe_step(trial_id, step, distance(config, a if step == 1 else b))
    assert searcher.model().budget == 3
    for trial_id in range(36, 61):  # the model of step 3 leads towards B
        config = searcher.suggest(trial_id)
        for step in (1, 3):
            searcher.observe_step(trial_id, step, distance(config, a if step == 1 else b))
    late = [searcher.suggest(t) for t in range(61, 71)]
    assert statistics.median(distance(c, b) for c in late) < 0.5 * statistics.median(distance(c, b) for c in near_a)


def test_state_dict_is_plain_json_and_resumes_exactly_and_a_replayed_step_changes_nothing(
    reg: PluginRegistry,
) -> None:
    first = make(reg, "bohb", EVERY_TYPE, seed=5, mode="max", random_fraction=0.2)
    drive(first, 15)
    first.observe_step(99, 1, 1.0)  # a trial it never suggested: ignored
    first.observe_step(15, 2, math.nan)  # a diverged step: the worst, stored as null
    state = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    first.observe_step(15, 3, loss(first._configs[15]) + 1.0 / 3)  # a restart replays a step seen before
    assert json.loads(json.dumps(first.state_dict())) == state
    second = make(reg, "bohb", EVERY_TYPE, seed=0, mode="max", random_fraction=0.2)
    second.load_state_dict(state)
    assert drive(first, 10, start=16) == drive(second, 10, start=16)


def test_options_are_bounded(reg: PluginRegistry) -> None:
    bad_options = (
        {"top_n_percent": 0},
        {"random_fraction": 1.5},
        {"min_bandwidth": 0.0},
        {"num_samples": 0},
        {"prior_weight": -1.0},
        {"ranking": "rungs"},
    )
    for bad in bad_options:
        with pytest.raises(ValueError):
            make(reg, "bohb", PLANE, **bad)


# ---- through a real server ----


def external_spec(searcher: str) -> dict[str, Any]:
    return {
        "name": f"bohb-{searcher}",
        "external": {},
        "search_space": [
            {"name": "x", "float_range": {"low": 0.0, "high": 1.0}},
            {"name": "n", "int_range": {"low": 1, "high": 8, "log": True}},
        ],
        "searcher": {"name": searcher},
        "early_stopping": {"name": "asha", "options": {"grace_period": 1, "reduction_factor": 2}},
        "objective": {"metric": "value", "mode": "MINIMIZE"},
        "budget": {"max_trials": 14, "max_concurrent_trials": 1},
        "training": {"epochs": 4, "seed": 2},
    }


def value(config: dict[str, Any], step: int) -> float:
    return (config["x"] - 0.3) ** 2 + 0.01 * config["n"] + 0.5 / step


def searcher_steps(handle: Any, study_id: str) -> dict[int, list[int]]:
    """The steps in the journaled bohb state, by trial."""
    state, _ = handle.storage.search_state(study_id)
    return {int(t): [int(b) for b, _ in losses] for t, _, losses in state["trials"] if losses}


def test_observe_step_runs_through_report_trial_and_a_restart_replays_the_unjournaled_steps(tmp_path: Path) -> None:
    from tuneyard.client import Client
    from tuneyard.server.app import start_server

    handle = start_server(data_dir=tmp_path, devices="cpu", cpu_slots=1)
    try:
        with Client(handle.address) as client:
            older = client.optimize(external_spec("random"), lambda t: _steps(t, 4), 1, progress=None)
            counts = older.study.trial_counts
            assert older.succeeded and counts.completed + counts.pruned == 14 and counts.pruned > 0
            study = client.optimize(external_spec("bohb"), lambda t: _steps(t, 4), 1, progress=None).study
            steps = searcher_steps(handle, study.study_id)
            trials = {t.trial_id: t for t in client.list_trials(study.study_id)}
            assert set(steps) == set(trials) and any(t.state == pb.TRIAL_PRUNED for t in trials.values())
            assert all(steps[i] == list(range(1, t.epochs_completed + 1)) for i, t in trials.items())
            # a trial whose steps come after the last journaled state, then a restart
            study_id = client.create_study({**external_spec("bohb"), "name": "bohb-restart"}).study_id
            (trial,) = client.ask(study_id, client_id="c1")
            for step in (1, 2):
                trial.report(step, value(trial.config, step))
            assert searcher_steps(handle, study_id) == {}  # journaled at the trial's start, before its steps
    finally:
        handle.stop()
    handle = start_server(data_dir=tmp_path, devices="cpu", cpu_slots=1)
    try:
        with grpc.insecure_channel(handle.address) as channel:
            stub = service_pb2_grpc.TrainingServiceStub(channel)
            request = pb.CompleteTrialRequest(study_id=study_id, trial_id=trial.trial_id, state=pb.TRIAL_COMPLETED)
            stub.CompleteTrial(request, timeout=30)
        assert searcher_steps(handle, study_id) == {trial.trial_id: [1, 2]}  # replayed, then journaled at its end
    finally:
        handle.stop()


def _steps(trial: Any, steps: int) -> float:
    for step in range(1, steps + 1):
        trial.report(step, value(trial.config, step))
    return value(trial.config, steps)

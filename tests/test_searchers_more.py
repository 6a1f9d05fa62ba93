"""Every built-in searcher: seeded, no repeats among pending trials, conditional spaces with
alternatives, exact resume, every trial state accepted; and the model-based ones learn."""

from __future__ import annotations

import json
import math
import statistics
import sys
from typing import Any

import pytest

from tuneyard.plugins.api import Choice, Condition, FloatRange, IntRange, Objective, Parameter, Searcher
from tuneyard.plugins.manager import PluginRegistry

ALL = ("random", "grid", "sobol", "tpe", "cmaes", "gp", "evolution", "bohb")
# A GP suggestion costs up to a second of CPU: the GP has its own compact test below instead.
FAST = tuple(name for name in ALL if name != "gp")
SGD, ADAM = Condition("optimizer.name", ("sgd",)), Condition("optimizer.name", ("adam",))
CONDITIONAL = (
    Parameter("optimizer.name", Choice(("sgd", "adam"))),
    Parameter("optimizer.lr", FloatRange(1e-3, 1.0, log=True), SGD),
    Parameter("optimizer.lr", FloatRange(1e-5, 1e-2, log=True), ADAM),
    Parameter("optimizer.momentum", FloatRange(0.0, 0.99), SGD),
    Parameter("model.layers", IntRange(1, 4)),
    Parameter("training.batch_size", IntRange(16, 256, log=True, step=16)),
)
FINITE = (
    Parameter("a", Choice(("x", "y"))),
    Parameter("n", IntRange(1, 3)),
    Parameter("m", IntRange(0, 10, step=5), Condition("a", ("x",))),
)  # 12 configs
# Small settings so the model-based searchers leave their start-up phase within a short test.
OPTIONS: dict[str, dict[str, Any]] = {
    "grid": {"num_points": 2},
    "tpe": {"n_startup_trials": 5},
    "gp": {"n_startup_trials": 2},
    "evolution": {"population_size": 6, "sample_size": 3},
}
STATES = ("COMPLETED", "COMPLETED", "PRUNED", "COMPLETED", "FAILED", "COMPLETED", "CANCELLED")


@pytest.fixture(scope="module")
def reg() -> PluginRegistry:
    return PluginRegistry.load(entry_points=False)


def make(
    reg: PluginRegistry, name: str, space: Any = CONDITIONAL, seed: int = 0, mode: str = "max", **options: Any
) -> Searcher:
    merged = {**OPTIONS.get(name, {}), **options}
    searcher = reg.create("searcher", name, merged, space=space, objective=Objective("v", mode), seed=seed)
    assert isinstance(searcher, Searcher)
    return searcher


def score(config: dict[str, Any]) -> float:
    """A deterministic value to feed back (higher is better)."""
    if "optimizer.name" not in config:  # FINITE
        return -float(config["n"]) - 0.1 * config.get("m", 0)
    lr_target = 0.1 if config["optimizer.name"] == "sgd" else 1e-3
    return -((math.log10(config["optimizer.lr"] / lr_target)) ** 2) - 0.1 * (config["model.layers"] - 3) ** 2


def drive(searcher: Searcher, n: int, start: int = 1, pending: int = 1) -> list[dict[str, Any] | None]:
    """Suggest `n` configs with up to `pending` open at once; observe with a cycle of all states."""
    out: list[dict[str, Any] | None] = []
    open_: list[tuple[int, dict[str, Any]]] = []
    for trial_id in range(start, start + n):
        config = searcher.suggest(trial_id)
        out.append(config)
        if config is not None:
            open_.append((trial_id, config))
        if len(open_) >= pending:
            tid, cfg = open_.pop(0)
            state = STATES[tid % len(STATES)]
            searcher.observe(tid, state, score(cfg) if state in ("COMPLETED", "PRUNED") else None)
    return out


def keys(configs: list[dict[str, Any] | None]) -> set[str]:
    return {json.dumps(c, sort_keys=True) for c in configs}


def check_conditional(config: dict[str, Any]) -> None:
    sgd = config["optimizer.name"] == "sgd"
    expected = {"optimizer.name", "optimizer.lr", "model.layers", "training.batch_size"} | (
        {"optimizer.momentum"} if sgd else set()
    )
    assert set(config) == expected, config
    lr = config["optimizer.lr"]
    assert type(lr) is float and ((1e-3 <= lr <= 1.0) if sgd else (1e-5 <= lr <= 1e-2)), config
    if sgd:
        assert type(config["optimizer.momentum"]) is float and 0.0 <= config["optimizer.momentum"] <= 0.99
    assert type(config["model.layers"]) is int and 1 <= config["model.layers"] <= 4
    size = config["training.batch_size"]
    assert type(size) is int and 16 <= size <= 256 and size % 16 == 0, config


def test_all_searchers_are_registered_with_documented_options(reg: PluginRegistry) -> None:
    for name in ALL:
        entry = reg.get("searcher", name)
        assert entry.description, name
        for param in entry.parameters:
            assert param.doc, (name, param.name)


@pytest.mark.parametrize("name", FAST)
def test_same_seed_and_results_give_the_same_configs(reg: PluginRegistry, name: str) -> None:
    first = drive(make(reg, name, seed=3), 12, pending=2)
    assert first == drive(make(reg, name, seed=3), 12, pending=2)
    assert all(c is not None for c in first)
    if name != "grid":
        assert first[:4] != drive(make(reg, name, seed=4), 4, pending=2)


@pytest.mark.parametrize("name", ALL)
def test_pending_suggestions_never_repeat(reg: PluginRegistry, name: str) -> None:
    searcher = make(reg, name, seed=1)
    configs = [searcher.suggest(trial_id) for trial_id in range(1, 9)]
    assert None not in configs and len(keys(configs)) == 8


@pytest.mark.parametrize("name", FAST)
def test_a_finite_space_is_covered_without_repeats_then_exhausted(reg: PluginRegistry, name: str) -> None:
    searcher = make(reg, name, space=FINITE, seed=2, **({"num_points": 5} if name == "grid" else {}))
    configs = drive(searcher, 12, pending=4)
    assert None not in configs and len(keys(configs)) == 12
    assert all(("m" in c) == (c["a"] == "x") and type(c["n"]) is int for c in configs if c)
    assert searcher.suggest(13) is None


@pytest.mark.parametrize("name", FAST)
def test_conditional_space_with_alternatives_is_honoured(reg: PluginRegistry, name: str) -> None:
    configs = drive(make(reg, name, seed=5), 30, pending=3)
    if name == "grid":  # 2 points per range: 16 sgd configs and 8 adam ones, then exhausted
        assert configs[24:] == [None] * 6
        configs = configs[:24]
    assert None not in configs and len(keys(configs)) == len(configs)
    for config in configs:
        assert config is not None
        check_conditional(config)
    assert {c["optimizer.name"] for c in configs if c} == {"sgd", "adam"}


@pytest.mark.parametrize("name", FAST)
def test_state_dict_resumes_exactly_mid_run(reg: PluginRegistry, name: str) -> None:
    searcher = make(reg, name, seed=7)
    drive(searcher, 9, pending=3)  # trials 8 and 9 still pending at the snapshot
    snapshot = json.loads(json.dumps(searcher.state_dict(), allow_nan=False))  # survives JSON storage
    searcher.observe(8, "COMPLETED", -0.5)
    expected = drive(searcher, 8, start=10, pending=3)
    restored = make(reg, name, seed=7)
    restored.load_state_dict(snapshot)
    restored.observe(8, "COMPLETED", -0.5)
    assert drive(restored, 8, start=10, pending=3) == expected
    assert None not in expected


@pytest.mark.parametrize("name", ["tpe", "cmaes", "gp", "evolution"])
def test_results_of_every_state_are_accepted_also_for_unknown_trials(reg: PluginRegistry, name: str) -> None:
    searcher = make(reg, name, mode="min")
    for trial_id in range(1, 8):
        assert searcher.suggest(trial_id) is not None
    searcher.observe(1, "COMPLETED", 0.5)
    searcher.observe(2, "PRUNED", 0.9)
    searcher.observe(3, "PRUNED", None)
    searcher.observe(4, "FAILED", None)
    searcher.observe(5, "CANCELLED", None)
    searcher.observe(6, "COMPLETED", float("nan"))
    searcher.observe(99, "COMPLETED", 1.0)  # never suggested: ignored
    json.dumps(searcher.state_dict(), allow_nan=False)
    check_conditional(searcher.suggest(8) or {})


def test_gp_resumes_exactly_by_seeded_replay_and_honours_conditions(reg: PluginRegistry) -> None:
    def run(searcher: Searcher, snapshot_at: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        configs = [searcher.suggest(1), searcher.suggest(2)]  # random start-up trials
        searcher.observe(1, "COMPLETED", -1.0)
        searcher.observe(2, "COMPLETED", -2.0)
        configs += [searcher.suggest(3), searcher.suggest(4)]  # the GP, then the GP with trial 3 pending
        snapshot_at.append(json.loads(json.dumps(searcher.state_dict())))
        searcher.observe(3, "PRUNED", -0.5)
        configs.append(searcher.suggest(5))
        return configs

    snapshots: list[dict[str, Any]] = []
    first = run(make(reg, "gp", seed=3), snapshots)
    assert None not in first and len(keys(first)) == 5
    for config in first:
        check_conditional(config or {})
    restored = make(reg, "gp", seed=3)
    restored.load_state_dict(snapshots[0])  # replays trials 1-4 with the same seed: the same state
    restored.observe(3, "PRUNED", -0.5)
    assert restored.suggest(5) == first[4]


def quadratic(config: dict[str, Any]) -> float:
    return (config["x"] - 0.3) ** 2 + (config["y"] + 0.2) ** 2


QUADRATIC = (Parameter("x", FloatRange(-1.0, 1.0)), Parameter("y", FloatRange(-1.0, 1.0)))


def best_after(searcher: Searcher, n: int) -> tuple[float, list[float]]:
    values = []
    for trial_id in range(1, n + 1):
        config = searcher.suggest(trial_id)
        assert config is not None
        values.append(quadratic(config))
        searcher.observe(trial_id, "COMPLETED", values[-1])
    return min(values), values


def test_tpe_beats_random_on_a_quadratic(reg: PluginRegistry) -> None:
    def median_best(name: str) -> float:
        return statistics.median(
            best_after(
                make(
                    reg,
                    name,
                    space=QUADRATIC,
                    seed=s,
                    mode="min",
                    **({"n_startup_trials": 10} if name == "tpe" else {}),
                ),
                40,
            )[0]
            for s in range(3)
        )

    assert median_best("tpe") < median_best("random") / 3


def test_evolution_improves_over_its_first_population(reg: PluginRegistry) -> None:
    searcher = make(reg, "evolution", space=QUADRATIC, seed=0, mode="min", population_size=10, sample_size=3)
    best, values = best_after(searcher, 80)
    assert statistics.median(values[-10:]) < statistics.median(values[:10]) / 3
    assert best < min(values[:10])


def test_sobol_uses_one_coordinate_per_name_and_covers_each_dimension(reg: PluginRegistry) -> None:
    plain = make(reg, "sobol", scramble=False)
    first = plain.suggest(1)
    lows = {
        "optimizer.name": "sgd",
        "optimizer.lr": pytest.approx(1e-3),
        "optimizer.momentum": 0.0,
        "model.layers": 1,
        "training.batch_size": 16,
    }
    assert first == lows  # the plain sequence starts at the lower corner
    searcher = make(reg, "sobol", space=QUADRATIC, seed=0)
    xs = sorted(searcher.suggest(i)["x"] for i in range(16))  # type: ignore[index]
    assert all(-1.0 + 2.0 * k / 16 <= x < -1.0 + 2.0 * (k + 1) / 16 for k, x in enumerate(xs))  # one per stratum


@pytest.mark.parametrize("name", ["tpe", "cmaes", "gp"])
def test_optuna_searchers_say_how_to_install_optuna(
    reg: PluginRegistry, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ImportError, match=r"pip install 'tuneyard\[optuna\]'"):
        make(reg, name)

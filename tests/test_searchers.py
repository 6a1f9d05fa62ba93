"""The built-in random and grid searchers: determinism, conditions, exhaustion, exact resume."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tuneyard.plugins.api import Choice, Condition, FloatRange, IntRange, Objective, Parameter, Searcher
from tuneyard.plugins.manager import PluginRegistry

SPACE = (
    Parameter("optimizer.name", Choice(("sgd", "adam"))),
    Parameter("optimizer.lr", FloatRange(1e-4, 1e-1, log=True)),
    Parameter("optimizer.momentum", FloatRange(0.0, 0.99), Condition("optimizer.name", ("sgd",))),
    Parameter("model.num_conv_layers", IntRange(1, 3)),
    Parameter("training.batch_size", IntRange(16, 256, log=True, step=16)),
    Parameter("model.dropout", FloatRange(0.25, 0.25)),
)
DISCRETE = (
    Parameter("a", Choice(("x", "y"))),
    Parameter("n", IntRange(1, 3)),
    Parameter("m", IntRange(0, 10, step=5), Condition("a", ("x",))),
)  # configs: y*3 + x*3*3 = 12
OBJECTIVE = Objective("val_accuracy", "max")


@pytest.fixture(scope="module")
def reg() -> PluginRegistry:
    return PluginRegistry.load(entry_points=False)


def make(reg: PluginRegistry, name: str, space: Any = SPACE, seed: int = 0, **options: Any) -> Searcher:
    searcher = reg.create("searcher", name, options, space=space, objective=OBJECTIVE, seed=seed)
    assert isinstance(searcher, Searcher)
    return searcher


def take(searcher: Searcher, n: int, start: int = 0) -> list[dict[str, Any] | None]:
    return [searcher.suggest(start + i) for i in range(n)]


def check_config(config: dict[str, Any]) -> None:
    assert config["optimizer.name"] in ("sgd", "adam")
    assert 1e-4 <= config["optimizer.lr"] <= 1e-1
    assert ("optimizer.momentum" in config) == (config["optimizer.name"] == "sgd")
    if "optimizer.momentum" in config:
        assert 0.0 <= config["optimizer.momentum"] <= 0.99
    assert config["model.num_conv_layers"] in (1, 2, 3) and type(config["model.num_conv_layers"]) is int
    size = config["training.batch_size"]
    assert type(size) is int and 16 <= size <= 256 and size % 16 == 0
    assert config["model.dropout"] == 0.25


def test_random_is_seeded_and_honours_domains_and_conditions(reg: PluginRegistry) -> None:
    first = take(make(reg, "random", seed=7), 40)
    assert first == take(make(reg, "random", seed=7), 40)
    assert first != take(make(reg, "random", seed=8), 40)
    for config in first:
        assert config is not None
        check_config(config)
    assert {c["optimizer.name"] for c in first} == {"sgd", "adam"}
    lrs = [c["optimizer.lr"] for c in first]
    assert sum(lr < 1e-2 for lr in lrs) > len(lrs) / 3  # log-uniform, not uniform
    assert len({json.dumps(c, sort_keys=True) for c in first}) == 40


def test_random_exhausts_a_finite_space_without_repeats(reg: PluginRegistry) -> None:
    searcher = make(reg, "random", space=DISCRETE, seed=3, max_retries=2)
    configs = take(searcher, 12)
    keys = {json.dumps(c, sort_keys=True) for c in configs}
    assert len(keys) == 12
    assert all(("m" in c) == (c["a"] == "x") for c in configs)
    assert searcher.suggest(12) is None and searcher.suggest(13) is None


def test_random_gives_up_on_a_degenerate_continuous_space(reg: PluginRegistry) -> None:
    searcher = make(reg, "random", space=(Parameter("x", FloatRange(1.0, 1.0)),), max_retries=3)
    assert searcher.suggest(0) == {"x": 1.0}
    assert searcher.suggest(1) is None


def test_grid_enumerates_in_order_with_conditions(reg: PluginRegistry) -> None:
    configs = take(make(reg, "grid", space=DISCRETE), 13)
    assert configs[-1] is None
    assert configs[:4] == [
        {"a": "x", "n": 1, "m": 0},
        {"a": "x", "n": 1, "m": 5},
        {"a": "x", "n": 1, "m": 10},
        {"a": "x", "n": 2, "m": 0},
    ]
    assert configs[9:12] == [{"a": "y", "n": 1}, {"a": "y", "n": 2}, {"a": "y", "n": 3}]
    assert take(make(reg, "grid", space=DISCRETE, seed=99), 13) == configs


def test_grid_discretises_ranges(reg: PluginRegistry) -> None:
    space = (
        Parameter("lr", FloatRange(1e-4, 1e-0, log=True)),
        Parameter("p", FloatRange(0.0, 1.0)),
        Parameter("w", IntRange(0, 100, step=10)),
        Parameter("b", IntRange(1, 1000, log=True)),
        Parameter("c", IntRange(2, 4)),
    )
    configs = [c for c in take(make(reg, "grid", space=space, num_points=3), 300) if c is not None]
    values = {name: sorted({c[name] for c in configs}) for name in ("lr", "p", "w", "b", "c")}
    assert values["lr"] == pytest.approx([1e-4, 1e-2, 1.0])
    assert values["p"] == [0.0, 0.5, 1.0]
    assert values["w"] == [0, 50, 100]
    assert values["b"] == [1, 32, 1000] and all(type(v) is int for v in values["b"])
    assert values["c"] == [2, 3, 4]
    assert len(configs) == 3**5
    assert make(reg, "grid", space=space[:1], num_points=1).suggest(0) == {"lr": pytest.approx(1e-2)}
    with pytest.raises(ValueError):
        make(reg, "grid", num_points=0)


@pytest.mark.parametrize("name", ["random", "grid"])
def test_state_dict_resumes_exactly(reg: PluginRegistry, name: str) -> None:
    searcher = make(reg, name, seed=5)
    take(searcher, 3)
    snapshot = json.loads(json.dumps(searcher.state_dict()))  # state must survive JSON storage
    expected = take(searcher, 3, start=3)
    searcher.observe(0, "COMPLETED", 0.5)
    restored = make(reg, name, seed=5)
    restored.load_state_dict(snapshot)
    assert take(restored, 3, start=3) == expected
    assert all(c is not None for c in expected)


def test_random_restored_searcher_still_avoids_earlier_configs(reg: PluginRegistry) -> None:
    searcher = make(reg, "random", space=DISCRETE, seed=1)
    first = take(searcher, 6)
    restored = make(reg, "random", space=DISCRETE, seed=1)
    restored.load_state_dict(searcher.state_dict())
    rest = take(restored, 7)
    assert rest[-1] is None
    assert len({json.dumps(c, sort_keys=True) for c in first + rest[:-1]}) == 12


def test_invalid_spaces_are_rejected(reg: PluginRegistry) -> None:
    for bad in (IntRange(5, 1), FloatRange(0.0, 1.0, log=True), IntRange(1, 5, step=0), Choice(())):
        with pytest.raises(ValueError):
            make(reg, "random", space=(Parameter("x", bad),))
    assert math.isfinite(make(reg, "random", space=(Parameter("x", FloatRange(-1.0, 1.0)),)).suggest(0)["x"])

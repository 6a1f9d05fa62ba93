"""A huge discrete space costs what its spec says, not what listing it would: sizes are counted, no
searcher builds a value list past `ENUMERATION_LIMIT`, and a real server answers while it searches one.

Issue 13, item 5: an all-discrete `int_range [0, 6*10**7]` made the server list every value in its
own process (2.25 GB, RPCs stalled); at 5*10**8 it would have needed over 20 GB.
"""

from __future__ import annotations

import json
import resource
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from support import tiny_spec, to_proto

from tuneyard.plugins.api import Choice, Condition, FloatRange, IntRange, Objective, Parameter, Searcher
from tuneyard.plugins.builtin.searchers import space as _space
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.v1 import service_pb2 as pb

HIGH = 5 * 10**8
HUGE = (Parameter("n", IntRange(0, HIGH)), Parameter("c", Choice(("a", "b"))))
ALL = ("random", "grid", "sobol", "tpe", "cmaes", "gp", "evolution", "bohb")
# Model-based searchers leave their start-up phase within the 20 suggestions, so their models see the range.
# (A GP suggestion costs up to a second of CPU: it models only the last few.)
OPTIONS: dict[str, dict[str, Any]] = {"tpe": {"n_startup_trials": 5}, "gp": {"n_startup_trials": 18}}
MEMORY_BOUND = 50 * 2**20  # listing the range would take gigabytes; a searcher needs a few MB
SUGGESTIONS = 20


@pytest.fixture(scope="module")
def reg() -> PluginRegistry:
    return PluginRegistry.load(entry_points=False)


def make(reg: PluginRegistry, name: str, space: Any = HUGE) -> Searcher:
    options = OPTIONS.get(name, {})
    searcher = reg.create("searcher", name, options, space=space, objective=Objective("v", "max"), seed=3)
    assert isinstance(searcher, Searcher)
    return searcher


def peak_bytes(work: Callable[[], Any]) -> tuple[Any, int]:
    """`work()`'s result and the peak of the Python (and NumPy) memory it allocated."""
    tracemalloc.start()
    try:
        result = work()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def drive(searcher: Searcher, start: int = 0) -> list[dict[str, Any] | None]:
    """Suggest SUGGESTIONS configs, each observed COMPLETED with a value that favours large n."""
    configs = []
    for trial_id in range(start, start + SUGGESTIONS):
        config = searcher.suggest(trial_id)
        configs.append(config)
        if config is not None:
            searcher.observe(trial_id, "COMPLETED", config["n"] / HIGH + (config["c"] == "a"))
    return configs


def check_in_range(configs: list[dict[str, Any] | None]) -> None:
    for config in configs:
        assert config is not None
        assert type(config["n"]) is int and 0 <= config["n"] <= HIGH
        assert config["c"] in ("a", "b")


# ---- counting, never listing ----


def test_sizes_are_counted_and_stop_past_the_cap() -> None:
    assert _space.int_count(IntRange(0, HIGH)) == HIGH + 1
    assert _space.int_count(IntRange(3, 20, step=5)) == 4  # 3, 8, 13, 18
    assert _space.space_size(HUGE) is None
    assert _space.space_size((Parameter("n", IntRange(1, 3)), Parameter("c", Choice(("a", "b", "a"))))) == 6
    assert _space.space_size((Parameter("x", FloatRange(0.0, 1.0)),)) is None
    wide = tuple(Parameter(f"p{i}", IntRange(0, 10**18)) for i in range(1000))
    assert _space.space_size(wide) is None  # stops at the first factor, never multiplies 1000 of them
    at_cap = (Parameter("n", IntRange(1, _space.ENUMERATION_LIMIT)),)
    assert _space.space_size(at_cap) == _space.ENUMERATION_LIMIT
    assert _space.space_size(at_cap + (Parameter("c", Choice((1, 2))),)) is None


def test_an_alternative_counts_as_now_an_upper_bound() -> None:
    alternatives = (
        Parameter("o", Choice(("sgd", "adam"))),
        Parameter("lr", IntRange(1, 10), Condition("o", ("sgd",))),
        Parameter("lr", IntRange(1, 5), Condition("o", ("adam",))),
    )
    assert _space.space_size(alternatives) == 2 * 10 * 5
    assert len(_space.finite_configs(alternatives) or {}) == 10 + 5


def test_a_space_past_the_cap_is_infinite_and_no_list_is_built() -> None:
    (all_configs, peak) = peak_bytes(lambda: _space.finite_configs(HUGE))
    assert all_configs is None and peak < MEMORY_BOUND
    seen = _space.Seen(HUGE)
    seen.add({"n": 0, "c": "a"})
    assert not seen.exhausted and seen.left() == []
    with pytest.raises(ValueError, match="more than"):
        _space.values_all(HUGE[0])


# ---- every searcher on int_range [0, 5*10**8] plus a choice ----


@pytest.mark.parametrize("name", ALL)
def test_every_searcher_searches_a_huge_int_range_in_little_memory(reg: PluginRegistry, name: str) -> None:
    def run() -> tuple[list[dict[str, Any] | None], dict[str, Any], list[dict[str, Any] | None], Searcher]:
        searcher = make(reg, name)
        first = drive(searcher)
        state = json.loads(json.dumps(searcher.state_dict()))  # as the store keeps it
        restored = make(reg, name)
        restored.load_state_dict(state)
        return first, state, drive(restored, start=SUGGESTIONS), searcher

    (first, state, after_restore, searcher), peak = peak_bytes(run)
    assert peak < MEMORY_BOUND, f"{name}: {peak / 2**20:.1f} MiB"
    assert len(json.dumps(state)) < 10**6
    if name == "grid":  # 5 evenly spaced values of n times 2 choices, then exhausted
        assert first[:10] == [{"n": n, "c": c} for n in range(0, HIGH + 1, HIGH // 4) for c in ("a", "b")]
        assert first[10:] == [None] * 10 and after_restore == [None] * SUGGESTIONS
        return
    check_in_range(first + after_restore)
    keys = {_space.key(c) for c in first + after_restore if c is not None}
    assert len(keys) == 2 * SUGGESTIONS  # no repeats, none refused as "exhausted"
    assert len({c["n"] for c in first if c is not None}) > SUGGESTIONS // 2  # the whole range, not a few values
    assert after_restore == drive(searcher, start=SUGGESTIONS)  # the restored searcher continues exactly


def test_grid_takes_evenly_spaced_values_of_a_huge_int_range(reg: PluginRegistry) -> None:
    space = (Parameter("n", IntRange(1, 10**12, log=True)), Parameter("s", IntRange(0, 10**12, step=7)))
    searcher = reg.create("searcher", "grid", {"num_points": 3}, space=space, objective=Objective("v"), seed=0)
    configs, peak = peak_bytes(lambda: [searcher.suggest(i) for i in range(10)])
    assert peak < MEMORY_BOUND
    last_s = 7 * (10**12 // 7)
    assert [c["n"] for c in configs[:9:3]] == [1, 10**6, 10**12]
    assert [c["s"] for c in configs[:3]] == [0, 7 * round((10**12 // 7) / 2), last_s]
    assert configs[9] is None


def test_grid_with_a_huge_num_points_generates_its_values(reg: PluginRegistry) -> None:
    space = (Parameter("x", FloatRange(0.0, 1.0)), Parameter("n", IntRange(0, HIGH)))
    options = {"num_points": 10**9}
    searcher = reg.create("searcher", "grid", options, space=space, objective=Objective("v"), seed=0)
    configs, peak = peak_bytes(lambda: [searcher.suggest(i) for i in range(3)])
    assert peak < MEMORY_BOUND
    assert configs == [{"x": 0.0, "n": 0}, {"x": 0.0, "n": 1}, {"x": 0.0, "n": 2}]


# ---- a real server ----


def test_a_server_given_a_huge_int_range_answers_and_starts_a_trial_inside_it(server_process: Any) -> None:
    proc = server_process()
    limit_server_growth(proc.proc.pid, extra=2 * 2**30)  # before the fix: MemoryError, not a machine out of memory
    stub = proc.stub()
    spec = tiny_spec(
        search_space=[
            {"name": "dataset.split_seed", "int_range": {"low": 0, "high": HIGH}},
            {"name": "optimizer.name", "choice": {"values": ["sgd", "adam"]}},
        ],
        budget={"max_trials": 1, "max_concurrent_trials": 1},
    )
    study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)), timeout=120)
    info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=120)
    assert info.version
    listed = stub.ListStudies(pb.ListStudiesRequest(), timeout=120).studies
    assert study.study_id in [s.study_id for s in listed]
    events = stub.WatchStudy(pb.WatchStudyRequest(study_id=study.study_id), timeout=300)
    started = next((e.trial_started for e in events if e.WhichOneof("event") == "trial_started"), None)
    if started is None:
        ended = stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id), timeout=120)
        pytest.fail(f"no trial started; study {pb.StudyState.Name(ended.state)}: {ended.error}")
    config = json_format.MessageToDict(started.trial.config)
    seed = config["dataset.split_seed"]  # a Struct number: a float holding an int
    assert 0 <= seed <= HIGH and seed == int(seed)
    assert config["optimizer.name"] in ("sgd", "adam")


def limit_server_growth(pid: int, extra: int) -> None:
    """Cap the process's data segment at its present size plus `extra` bytes (workers it spawns inherit it)."""
    status = Path(f"/proc/{pid}/status").read_text()
    data_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmData:"))
    limit = data_kib * 1024 + extra
    resource.prlimit(pid, resource.RLIMIT_DATA, (limit, limit))

"""The `pbt` early stopper's policy: who exploits whom at interval steps (Ray's quantile rule),
how a source's config is explored (perturbed by the factors, resampled, choices shifted,
conditional parameters kept consistent), repeated steps, exact resume and the registry."""

from __future__ import annotations

import json
import math
import random
import statistics
from typing import Any

import pytest

from tuneyard.plugins.api import (
    Choice,
    Condition,
    Decision,
    EarlyStopper,
    Exploit,
    FloatRange,
    IntRange,
    Objective,
    Parameter,
    PopulationStopper,
)
from tuneyard.plugins.builtin.pbt import PopulationBasedTraining, explore, perturb, resample
from tuneyard.plugins.manager import PluginRegistry

MAX = Objective("val_accuracy", "max")
MIN = Objective("val_loss", "min")
LR = Parameter("lr", FloatRange(1e-4, 1.0, log=True))
SPACE = [LR, Parameter("batch", IntRange(8, 64, step=8)), Parameter("width", Choice((16, 64, 32, 128)))]


@pytest.fixture(scope="module")
def reg() -> PluginRegistry:
    return PluginRegistry.load(entry_points=False)


def make(
    reg: PluginRegistry, objective: Objective = MAX, space: Any = SPACE, study_seed: int = 7, **options: Any
) -> Any:
    stopper = reg.create(
        "early_stopper", "pbt", options, objective=objective, max_epochs=20, space=space, study_seed=study_seed
    )
    assert isinstance(stopper, PopulationStopper) and isinstance(stopper, EarlyStopper)
    return stopper


def judged(pbt: Any, trial_id: int, step: int, value: float, config: dict[str, Any]) -> Any:
    """A step recorded and judged at once (as the runner does when no trial is behind it)."""
    pbt.record(trial_id, step, value, config)
    return pbt.exploit(trial_id, step)


def cfg(i: int) -> dict[str, Any]:
    return {"lr": 0.01 * (i + 1), "batch": 8 * (1 + i % 8), "width": (16, 32, 64, 128)[i % 4]}


# ---- who exploits whom ----


def test_bottom_quantile_exploits_a_top_trial_and_the_others_go_on(reg):
    pbt = make(reg, resample_probability=0.0)
    assert pbt.checkpoint_interval == 4
    # Ascending arrivals: each newcomer is the best so far, so none is in the bottom quantile.
    assert [judged(pbt, t, 4, 0.1 * t, cfg(t)) for t in (1, 2, 3, 4)] == [None] * 4
    verdict = judged(pbt, 5, 4, 0.05, cfg(5))  # n = 5: n_q = ceil(1.25) = 2, top two are 3 and 4
    assert isinstance(verdict, Exploit) and verdict.source_trial_id in (3, 4) and verdict.source_step == 4
    source = cfg(verdict.source_trial_id)
    assert verdict.config["lr"] in (pytest.approx(source["lr"] * 0.8), pytest.approx(source["lr"] * 1.2))
    assert judged(pbt, 6, 4, 0.25, cfg(6)) is None  # n = 6: bottom two are 5 and 1; 6 is in the middle
    assert judged(pbt, 7, 4, 0.0, cfg(7)).source_trial_id in (3, 4)  # n = 7: top two still 3 and 4


def test_non_interval_steps_give_none_and_record_nothing(reg):
    pbt = make(reg, interval=3)
    empty = pbt.state_dict()
    for step in (1, 2, 4, 5, 7):
        for trial, value in ((1, 0.9), (2, 0.1), (3, 0.5)):
            assert judged(pbt, trial, step, value, cfg(trial)) is None
    assert pbt.state_dict() == empty
    assert judged(pbt, 1, 3, 0.9, cfg(1)) is None  # alone at step 3
    assert judged(pbt, 2, 3, 0.1, cfg(2)).source_trial_id == 1
    assert pbt.report(2, 3, 0.1) is Decision.CONTINUE


def test_quantile_rule_caps_at_half_and_is_exact_for_tenths(reg):
    def last_verdict(rank: int, n: int, quantile: float) -> Exploit | None:
        pbt = make(reg, quantile=quantile)
        others = [r for r in range(n) if r != rank]
        for r in others:
            judged(pbt, r, 4, float(r), cfg(r))
        return judged(pbt, rank, 4, float(rank), cfg(rank))

    # n = 25, quantile 0.28: n_q = 7 (25 * 0.28 is 7.000000000000001 in floats; still 7).
    assert last_verdict(6, 25, 0.28).source_trial_id in range(18, 25)
    assert last_verdict(7, 25, 0.28) is None
    # n = 3, quantile 0.5: ceil(1.5) = 2 is capped at 3 // 2 = 1.
    assert last_verdict(0, 3, 0.5).source_trial_id == 2
    assert last_verdict(1, 3, 0.5) is None
    # Two trials: the worse copies the better, whatever the quantile.
    assert last_verdict(0, 2, 0.01).source_trial_id == 1


def test_min_mode_decides_as_max_mode_on_negated_values(reg):
    rng = random.Random(3)
    reports = [(t, s, rng.random()) for s in (4, 8, 12) for t in rng.sample(range(12), 12)]
    high, low = make(reg, MAX), make(reg, MIN)
    verdicts_max = [judged(high, t, s, v, cfg(t)) for t, s, v in reports]
    verdicts_min = [judged(low, t, s, -v, cfg(t)) for t, s, v in reports]
    assert verdicts_max == verdicts_min and sum(v is not None for v in verdicts_min) >= 6


def test_non_finite_and_missing_values_score_worst(reg):
    pbt = make(reg, MIN, quantile=0.5)
    assert judged(pbt, 1, 4, 0.3, cfg(1)) is None
    assert judged(pbt, 2, 4, 0.5, cfg(2)).source_trial_id == 1  # the higher loss is the worse
    assert judged(pbt, 3, 4, 0.4, cfg(3)) is None  # n = 3: n_q = 1, and 2 is the worst
    assert judged(pbt, 4, 4, math.nan, cfg(4)).source_trial_id in (1, 3)  # n = 4, n_q = 2: best are 1, 3
    assert judged(pbt, 5, 4, math.inf, cfg(5)) is not None  # +inf loss is not the best, it is the worst
    assert judged(pbt, 6, 4, None, cfg(6)) is not None  # type: ignore[arg-type]
    assert judged(pbt, 7, 4, 0.1, cfg(7)) is None
    ties = make(reg)  # equal scores: the later trial (higher id) ranks lower
    assert [judged(ties, t, 8, math.nan, cfg(t)) for t in (5, 6, 7, 8)] == [None] + [
        Exploit(5, 8, ties.state_dict()["verdicts"][i][3]) for i in (1, 2, 3)
    ]


def test_a_repeated_step_gets_the_first_verdict_without_drawing_again(reg):
    pbt = make(reg)
    judged(pbt, 1, 4, 0.9, cfg(1))
    first = judged(pbt, 2, 4, 0.1, cfg(2))
    assert first is not None
    rng_before = pbt.state_dict()["rng"]
    assert judged(pbt, 2, 4, 0.1, cfg(2)) == first
    assert judged(pbt, 2, 4, 0.99, cfg(3)) == first  # a replay is judged as the first time
    assert judged(pbt, 1, 4, 0.0, cfg(1)) is None
    assert pbt.state_dict()["rng"] == rng_before


# ---- explore ----


def test_perturbation_uses_the_factors_and_stays_in_bounds():
    rng = random.Random(0)
    draws = {perturb(FloatRange(0.0, 10.0), 2.5, (0.8, 1.2), rng) for _ in range(50)}
    assert draws == {2.5 * 0.8, 2.5 * 1.2}
    assert {perturb(FloatRange(0.0, 1.0), 0.9, (1.5,), rng) for _ in range(5)} == {1.0}
    assert {perturb(FloatRange(0.5, 1.0), 0.6, (0.5,), rng) for _ in range(5)} == {0.5}
    ints = IntRange(8, 64, step=8)
    assert {perturb(ints, 40, (0.8, 1.2), rng) for _ in range(50)} == {32, 48}
    assert {perturb(ints, 64, (1.2,), rng) for _ in range(5)} == {64}  # clipped at high
    odd = IntRange(1, 11, step=3)  # grid 1, 4, 7, 10: 11 is off the grid
    assert {perturb(odd, 10, (1.2,), rng) for _ in range(5)} == {10}
    assert {perturb(odd, 10, (0.5,), rng) for _ in range(5)} == {4}  # 5 snaps to 4
    assert {perturb(IntRange(1, 100), 10, (0.8, 1.2, 3.0), rng) for _ in range(80)} == {8, 12, 30}


def test_choices_shift_to_an_adjacent_value():
    rng = random.Random(1)
    numeric = Choice((16, 64, 32, 128))  # numeric choices shift in numeric order
    assert {perturb(numeric, 32, (0.8,), rng) for _ in range(40)} == {16, 64}
    assert {perturb(numeric, 128, (0.8,), rng) for _ in range(40)} == {64, 128}
    assert {perturb(numeric, 16, (0.8,), rng) for _ in range(40)} == {16, 32}
    named = Choice(("small", "medium", "large"))  # others shift in the order listed
    assert {perturb(named, "small", (0.8,), rng) for _ in range(40)} == {"small", "medium"}
    assert {perturb(named, "medium", (0.8,), rng) for _ in range(40)} == {"small", "large"}
    assert {perturb(named, "huge", (0.8,), rng) for _ in range(60)} == set(named.values)  # unknown: resampled


def test_resampling_draws_from_the_domain():
    rng = random.Random(2)
    space = [LR, Parameter("batch", IntRange(8, 64, step=8)), Parameter("depth", IntRange(1, 1000, log=True))]
    configs = [explore({"lr": 0.5, "batch": 16, "depth": 3}, space, (0.8, 1.2), 1.0, rng) for _ in range(400)]
    lrs = [c["lr"] for c in configs]
    assert all(1e-4 <= v <= 1.0 for v in lrs) and 0.003 < statistics.median(lrs) < 0.03  # log-uniform: ~0.01
    assert {c["batch"] for c in configs} == set(range(8, 65, 8))
    depths = [c["depth"] for c in configs]
    assert all(isinstance(d, int) and 1 <= d <= 1000 for d in depths) and 10 < statistics.median(depths) < 100
    colours = Choice(("red", "green", "blue"))
    assert {resample(colours, rng) for _ in range(60)} == {"red", "green", "blue"}


def test_conditional_parameters_follow_their_parent():
    space = [
        Parameter("optimizer", Choice(("sgd", "adam"))),
        Parameter("momentum", FloatRange(0.0, 0.99), Condition("optimizer", ("sgd",))),
        Parameter("beta", FloatRange(0.8, 0.999), Condition("optimizer", ("adam",))),
        Parameter("nesterov_gain", FloatRange(0.1, 1.0), Condition("momentum_kind", ("nesterov",))),
    ]
    rng = random.Random(4)
    start = {"optimizer": "sgd", "momentum": 0.5, "nesterov_gain": 0.5, "epochs_seen": 7}
    results = [explore(start, space, (0.8, 1.2), 0.5, rng) for _ in range(200)]
    for new in results:
        assert new["epochs_seen"] == 7  # not in space: kept as it is
        assert 0.1 <= new["nesterov_gain"] <= 1.0  # its parent is not in space: it stays present
        if new["optimizer"] == "sgd":
            assert "beta" not in new and 0.0 <= new["momentum"] <= 0.99
        else:
            assert "momentum" not in new and 0.8 <= new["beta"] <= 0.999
    assert {r["optimizer"] for r in results} == {"sgd", "adam"}
    inactive = explore({"optimizer": "adam", "beta": 0.9}, space[:3], (0.8, 1.2), 0.0, random.Random(5))
    assert inactive["optimizer"] in ("sgd", "adam") and ("momentum" in inactive) == (inactive["optimizer"] == "sgd")
    assert explore({"x": 1}, [], (0.8,), 1.0, random.Random(0)) == {"x": 1}  # empty space: a plain copy


# ---- exact resume ----


def run_log(seed: int) -> list[tuple[int, int, float, dict[str, Any]]]:
    rng = random.Random(seed)
    log = []
    for step in range(1, 17):
        for trial in rng.sample(range(10), 10):
            value = math.nan if (trial, step) == (3, 8) else rng.random() + 0.05 * step
            log.append((trial, step, value, cfg(trial + step)))
    return log


def test_state_dict_round_trip_through_json_continues_identically(reg):
    log = run_log(6)
    first = make(reg, resample_probability=0.5)
    half = len(log) // 2
    before = [judged(first, *entry) for entry in log[:half]]
    saved = json.dumps(first.state_dict(), allow_nan=False)
    restored = make(reg, resample_probability=0.5, study_seed=123)  # the saved RNG state replaces the seed's
    restored.load_state_dict(json.loads(saved))
    assert restored.state_dict() == first.state_dict()
    rest_first = [judged(first, *entry) for entry in log[half:]]
    rest_restored = [judged(restored, *entry) for entry in log[half:]]
    assert rest_first == rest_restored and sum(v is not None for v in rest_first) >= 5
    assert [judged(restored, *entry) for entry in log[:half]] == before  # replays keep their verdicts
    with pytest.raises(ValueError, match="not a pbt state"):
        restored.load_state_dict({"kind": "asha"})


# ---- registry ----


def test_registry_options_defaults_seed_and_validation(reg):
    assert "pbt" in reg.names("early_stopper")
    entry = reg.get("early_stopper", "pbt")
    assert entry.distribution == "tuneyard" and entry.description
    defaults = {p.name: p.default for p in entry.parameters}
    assert {k: defaults[k] for k in ("interval", "quantile", "resample_probability", "seed")} == {
        "interval": 4,
        "quantile": 0.25,
        "resample_probability": 0.25,
        "seed": 0,
    }
    assert list(defaults["perturbation_factors"]) == [0.8, 1.2]
    pbt = make(reg, interval=2.0, perturbation_factors=[0.5, 2])  # Struct numbers arrive as floats
    assert isinstance(pbt, PopulationBasedTraining) and pbt.checkpoint_interval == 2 and pbt.factors == [0.5, 2.0]
    assert make(reg, space=[]).space == []
    log = run_log(8)
    runs = [make(reg, study_seed=5), make(reg, study_seed=9, seed=5), make(reg, study_seed=6)]
    verdicts = [[judged(pbt, *e) for e in log] for pbt in runs]
    assert verdicts[0] == verdicts[1] != verdicts[2]  # the seed option overrides the study's seed
    bad = {
        "interval": 0,
        "quantile": 0.75,
        "resample_probability": 1.5,
        "perturbation_factors": [0.8, -1.2],
    }
    for option, value in bad.items():
        with pytest.raises(ValueError, match=option):
            make(reg, **{option: value})
    for factors in ([], "0.8", [0.8, "x"], [math.inf]):
        with pytest.raises(ValueError, match="perturbation_factors"):
            make(reg, perturbation_factors=factors)
    with pytest.raises(ValueError, match="quantile"):
        make(reg, quantile=0.0)


def test_a_step_judged_late_is_judged_against_the_population_recorded_by_then(reg):
    early, late = make(reg, quantile=0.25), make(reg, quantile=0.25)
    assert judged(early, 1, 4, 0.1, cfg(1)) is None  # alone at step 4: nobody to compare with
    for trial_id in (1, 2, 3, 4):
        late.record(trial_id, 4, 0.1 * trial_id, cfg(trial_id))
    verdict = late.exploit(1, 4)  # recorded first, judged once all four are in: the worst of them
    assert verdict is not None and verdict.source_trial_id == 4 and verdict.source_step == 4
    assert late.exploit(4, 4) is None and late.exploit(1, 5) is None  # the best; a step never recorded

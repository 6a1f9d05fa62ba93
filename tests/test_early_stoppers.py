"""The built-in early stoppers (median, asha, hyperband): decisions on synthetic learning curves
with interleaved concurrent reports, hand-computed ASHA rungs and cutoffs, min mode, exact
resume, the catalogue, and one real study whose bad trials end PRUNED."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import numpy as np
import pytest
from support import tiny_spec, to_proto, watch_all

from tuneyard.plugins.api import Decision, EarlyStopper, Objective
from tuneyard.plugins.builtin.early_stoppers import Bracket, hyperband_weights, percentile, rung_milestones
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.v1 import service_pb2 as pb

MAX = Objective("val_accuracy", "max")
MIN = Objective("val_loss", "min")
STOP, GO = Decision.STOP, Decision.CONTINUE


@pytest.fixture(scope="module")
def reg() -> PluginRegistry:
    return PluginRegistry.load(entry_points=False)


def make(reg: PluginRegistry, name: str, objective: Objective = MAX, max_epochs: int = 9, **options: Any) -> Any:
    stopper = reg.create("early_stopper", name, options, objective=objective, max_epochs=max_epochs)
    assert isinstance(stopper, EarlyStopper)
    return stopper


# ---- synthetic learning curves, reported the way the runner does ----


def curve(final: float, speed: float, epochs: int) -> list[float]:
    """Saturating accuracy: starts near 0.1, approaches `final` at rate `speed`."""
    return [final - (final - 0.1) * math.exp(-speed * t) for t in range(1, epochs + 1)]


EPOCHS = 9
BEST = 5  # trial id of the best curve
GOOD = {1: (0.90, 0.8), 4: (0.88, 0.7), BEST: (0.97, 1.0), 9: (0.91, 0.9), 13: (0.89, 0.8), 17: (0.92, 0.9)}
CURVES = {
    t: curve(*GOOD.get(t, (0.25 + 0.02 * (t % 5), 0.5)), EPOCHS)  # the rest: bad (final 0.25..0.33)
    for t in range(1, 21)
}
BAD = set(CURVES) - set(GOOD)


def simulate(stopper: Any, curves: dict[int, list[float]], concurrency: int = 4, seed: int = 0, sign: float = 1.0):
    """Runs trials in id order, `concurrency` at a time; which running trial reports next is
    random (seeded), so reports of different trials interleave. Returns the epochs each trial
    ran, whether it was stopped, and the log of (trial, step, value, decision)."""
    rng = random.Random(seed)
    waiting, running = sorted(curves), {}
    ran: dict[int, int] = {}
    stopped: set[int] = set()
    log: list[tuple[int, int, float, Decision]] = []
    while waiting or running:
        while waiting and len(running) < concurrency:
            running[waiting.pop(0)] = 0
        trial = rng.choice(sorted(running))
        running[trial] += 1
        step = running[trial]
        value = sign * curves[trial][step - 1]
        decision = stopper.report(trial, step, value)
        log.append((trial, step, value, decision))
        if decision is STOP or step == len(curves[trial]):
            del running[trial]
            ran[trial] = step
            if decision is STOP:
                stopped.add(trial)
            stopper.complete(trial, value)
    return ran, stopped, log


@pytest.mark.parametrize("name", ["median", "asha", "hyperband"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bad_trials_are_stopped_and_the_best_never(reg, name, seed):
    stopper = make(reg, name, max_epochs=EPOCHS)
    ran, stopped, _ = simulate(stopper, CURVES, seed=seed)
    assert BEST not in stopped and ran[BEST] == EPOCHS
    judged = BAD - {1, 2, 3, 4}  # the first wave cannot all be judged (too few samples, first at a rung)
    if name == "hyperband":  # bracket s = 0 has no rungs: its trials always run to the end
        unstoppable = {t for t in judged if not stopper.brackets[stopper.bracket_of(t)].rungs}
        assert len(unstoppable) < len(judged) / 3
        # Brackets decide alone: a bad trial is judged once a good one reached its bracket's first rung.
        judged = set()
        for bracket in stopper.brackets:
            arrivals = list(bracket.rungs[-1][1]) if bracket.rungs else []
            first_good = next((i for i, t in enumerate(arrivals) if t in GOOD), len(arrivals))
            judged |= BAD & set(arrivals[first_good:])
        assert len(judged) >= 5
    assert judged <= stopped, sorted(judged - stopped)
    assert sum(ran.values()) < 0.6 * EPOCHS * len(CURVES)


@pytest.mark.parametrize("name", ["median", "asha", "hyperband"])
def test_min_mode_decides_exactly_as_max_mode_on_negated_values(reg, name):
    _, stopped_max, log_max = simulate(make(reg, name, MAX), CURVES, seed=3)
    _, stopped_min, log_min = simulate(make(reg, name, MIN), CURVES, seed=3, sign=-1.0)
    assert [d for *_, d in log_max] == [d for *_, d in log_min]
    assert stopped_max == stopped_min and BEST not in stopped_min and stopped_min


# ---- ASHA by hand ----


def test_rungs_sit_at_grace_times_powers_of_the_factor_below_max_epochs(reg):
    assert rung_milestones(1, 3, 12) == [1, 3, 9]
    assert rung_milestones(1, 3, 9) == [1, 3]  # never at the last epoch
    assert rung_milestones(2, 2, 17) == [2, 4, 8, 16]
    assert rung_milestones(5, 3, 5) == []
    asha = make(reg, "asha", max_epochs=12, brackets=2)
    assert [[m for m, _ in b.rungs] for b in asha.brackets] == [[9, 3, 1], [9, 3]]
    assert len(make(reg, "asha", max_epochs=12, brackets=10).brackets) == 4  # capped: rungs + 1
    hb = make(reg, "hyperband", max_epochs=12)
    assert [[m for m, _ in b.rungs] for b in hb.brackets] == [[9, 3, 1], [9, 3], [9], []]
    assert hb.weights == hyperband_weights(3, 3) == [27, 12, 6, 4]
    assert hyperband_weights(4, 3) == [81, 34, 15, 8, 5]  # Li et al.'s table for R = 81, eta = 3


def test_brackets_are_assigned_by_weighted_round_robin_in_arrival_order(reg):
    hb = make(reg, "hyperband", max_epochs=9)  # rungs 1, 3: weights 9, 5, 3
    assert hb.weights == [9, 5, 3]
    for trial in (30, 10, 20):
        hb.report(trial, 1, 0.5)
    assignment = [hb.bracket_of(t) for t in (30, 10, 20)] + [hb.bracket_of(100 + i) for i in range(34)]
    assert assignment[:3] == [0, 1, 0]
    for cycle in (assignment[:17], assignment[17:34]):
        assert [cycle.count(b) for b in range(3)] == [9, 5, 3]
    asha = make(reg, "asha", max_epochs=12, brackets=3)
    assert [asha.bracket_of(t) for t in range(1, 8)] == [0, 1, 2, 0, 1, 2, 0]


def test_asha_cutoff_is_rays_percentile_of_earlier_values_at_the_rung(reg):
    asha = make(reg, "asha", max_epochs=9, reduction_factor=3)  # rungs 1, 3
    # rung 1: cutoff = 66.7th percentile (linear) of the values recorded there before
    assert asha.report(1, 1, 0.50) is GO  # nothing recorded: the first always continues
    assert asha.report(2, 1, 0.40) is STOP  # cutoff 0.5
    assert asha.report(3, 1, 0.60) is GO  # [0.4, 0.5] -> 0.4667
    assert asha.report(4, 1, 0.45) is STOP  # [0.4, 0.5, 0.6] -> 0.5333
    assert asha.report(5, 1, 0.50) is GO  # [0.4, 0.45, 0.5, 0.6] -> 0.5: a tie continues
    assert asha.report(6, 1, 0.49) is STOP  # [0.4, 0.45, 0.5, 0.5, 0.6] -> 0.5
    assert asha.report(1, 2, 0.10) is GO  # not a rung
    assert asha.report(3, 3, 0.70) is GO  # first at rung 3
    assert asha.report(1, 3, 0.65) is STOP  # cutoff 0.7
    assert asha.report(5, 3, 0.90) is GO  # [0.65, 0.7] -> 0.6833
    assert asha.report(5, 4, 0.10) is GO  # past its rungs, never judged again
    assert asha.report(2, 2, 0.99) is STOP  # once stopped, stays stopped
    rungs = dict(asha.brackets[0].rungs)
    assert rungs[1] == {1: 0.5, 2: 0.4, 3: 0.6, 4: 0.45, 5: 0.5, 6: 0.49}
    assert rungs[3] == {3: 0.7, 1: 0.65, 5: 0.9}
    nan_trial = make(reg, "asha", max_epochs=9)
    nan_trial.report(1, 1, 0.2)
    assert nan_trial.report(2, 1, float("nan")) is STOP  # non-finite is the worst value


def test_percentile_matches_numpy_linear_interpolation():
    rng = random.Random(0)
    for n in range(1, 12):
        values = [rng.random() for _ in range(n)]
        for q in (0.0, 50.0, 66.66666666666667, 75.0, 100.0):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), abs=1e-12)
    # the rung cutoff's position is exact: (4 - 1) * 2/3 = 2, not 2.0000000000000004
    assert Bracket([1], 3).cutoff({1: 0.0, 2: 0.0, 3: 1.0, 4: 1000.0}) == 1.0
    assert Bracket([1], 3).cutoff({1: None}) is None


def test_median_rule_compares_best_so_far_with_running_averages(reg):
    med = make(reg, "median", grace_period=1, min_samples=2)
    for step, (a, b) in enumerate([(0.5, 0.6), (0.7, 0.8)], start=1):
        assert med.report(1, step, a) is GO and med.report(2, step, b) is GO  # too few others
    assert med.report(3, 1, 0.40) is STOP  # median of means(A, B up to 1) = 0.55
    assert med.report(4, 1, 0.56) is GO  # others A 0.5, B 0.6, C 0.4 -> median 0.5
    assert med.report(4, 2, 0.57) is STOP  # A 0.6, B 0.7 up to step 2 -> 0.65 > best 0.57
    late = make(reg, "median", grace_period=3, min_samples=1)
    late.report(1, 1, 0.9)
    assert late.report(2, 1, 0.1) is GO  # before the grace period


# ---- exact resume ----


@pytest.mark.parametrize("name", ["median", "asha", "hyperband"])
def test_state_dict_round_trip_mid_run_gives_identical_decisions(reg, name):
    curves = dict(CURVES)
    curves[21] = [0.5, float("nan"), 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]  # non-finite values survive JSON
    _, _, log = simulate(make(reg, name), curves, seed=4)
    half = len(log) // 2
    first = make(reg, name)
    for trial, step, value, decision in log[:half]:
        assert first.report(trial, step, value) is decision
    saved = json.dumps(first.state_dict(), allow_nan=False)
    restored = make(reg, name)
    restored.load_state_dict(json.loads(saved))
    assert restored.state_dict() == first.state_dict()
    rest = log[half:]
    assert [first.report(t, s, v) for t, s, v, _ in rest] == [d for *_, d in rest]
    assert [restored.report(t, s, v) for t, s, v, _ in rest] == [d for *_, d in rest]
    with pytest.raises(ValueError, match="not a"):
        make(reg, "median" if name != "median" else "asha").load_state_dict(json.loads(saved))


# ---- catalogue ----


def test_registry_lists_the_stoppers_with_documented_options(reg):
    assert {"median", "asha", "hyperband"} <= set(reg.names("early_stopper"))
    expected = {
        "median": {"grace_period": 1, "min_samples": 3},
        "asha": {"grace_period": 1, "reduction_factor": 3, "brackets": 1},
        "hyperband": {"grace_period": 1, "reduction_factor": 3},
    }
    for name, options in expected.items():
        entry = reg.get("early_stopper", name)
        assert entry.distribution == "tuneyard" and entry.description
        assert {p.name: p.default for p in entry.parameters} == options  # objective, max_epochs injected
        assert all(p.type == "int" and p.doc for p in entry.parameters)
    with pytest.raises(ValueError, match="reduction_factor"):
        make(reg, "asha", reduction_factor=1)
    with pytest.raises(ValueError, match="grace_period"):
        make(reg, "hyperband", grace_period=0)


# ---- a real study ----


def test_asha_study_prunes_bad_trials_and_completes(stub):
    spec = tiny_spec(
        name="asha-prunes",
        training={"epochs": 4, "batch_size": 128, "optimizer": {"name": "sgd", "options": {"lr": 0.01}}, "seed": 0},
        search_space=[{"name": "optimizer.lr", "float_range": {"low": 1e-5, "high": 1e-1, "log": True}}],
        early_stopping={"name": "asha", "options": {"grace_period": 1, "reduction_factor": 2}},
        budget={"max_trials": 6, "max_concurrent_trials": 1},
    )
    study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))
    events = watch_all(stub, study.study_id)
    done = stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id))
    assert done.state == pb.STUDY_COMPLETED, done.error
    trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id)).trials
    assert len(trials) == 6
    pruned = [t for t in trials if t.state == pb.TRIAL_PRUNED]
    assert pruned and all(t.epochs_completed < 4 for t in pruned), [(t.state, t.epochs_completed) for t in trials]
    for t in pruned:  # a pruned trial keeps its last metrics, and lost to the best at a rung
        assert t.final_metrics["val_accuracy"] == t.metrics[-1].values["val_accuracy"]
        assert t.config["optimizer.lr"] != done.best_trial.config["optimizer.lr"]
    assert done.best_trial.state == pb.TRIAL_COMPLETED and done.best_trial.epochs_completed == 4
    finished = [e.trial_finished.trial for e in events if e.WhichOneof("event") == "trial_finished"]
    assert sorted(t.trial_id for t in finished if t.state == pb.TRIAL_PRUNED) == sorted(t.trial_id for t in pruned)

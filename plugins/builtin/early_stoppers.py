"""Built-in early stoppers: the median stopping rule, ASHA and asynchronous Hyperband.

Each is a small pure class over `report(trial_id, step, value)` calls (step = epoch, from 1;
reports of concurrent trials interleave) and returns a `Decision`. Values are turned into
scores where higher is better (negated for a "min" objective); a non-finite value (NaN, inf)
scores worst. The whole state is plain JSON (lists, ints, floats, None), so
`load_state_dict(json.loads(json.dumps(s.state_dict())))` continues with identical decisions.

Rungs (ASHA, Hyperband) sit at ``grace_period * reduction_factor**k`` epochs strictly below
``max_epochs`` (the study's ``training.epochs``, injected): a rung at the last epoch could not
save any compute, it could only turn a finished trial into a pruned one.
"""

from __future__ import annotations

import math
import statistics
from fractions import Fraction
from typing import Any

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import Bounds, Decision, Objective


def _score(objective: Objective, value: float | None) -> float | None:
    """Higher is better; None for a missing or non-finite value (the worst score)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value) if objective.mode == "max" else -float(value)


def _ordered(score: float | None) -> float:
    return -math.inf if score is None else score


def percentile(values: list[float], q: float | Fraction) -> float:
    """The q-th percentile (0..100) with linear interpolation, as numpy's default method.

    The position is computed exactly (a `Fraction` q stays exact), so a value equal to a
    recorded one is never judged below it by a rounding error.
    """
    ordered = sorted(values)
    position = (len(ordered) - 1) * Fraction(q) / 100
    lo = math.floor(position)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * float(position - lo)


def rung_milestones(grace_period: int, reduction_factor: int, max_epochs: int) -> list[int]:
    """``grace_period * reduction_factor**k`` for k = 0, 1, ... while below ``max_epochs``."""
    milestones, t = [], grace_period
    while t < max_epochs:
        milestones.append(t)
        t *= reduction_factor
    return milestones


def _check(grace_period: int, reduction_factor: int | None = None) -> None:
    if grace_period < 1:
        raise ValueError(f"grace_period must be >= 1, got {grace_period}")
    if reduction_factor is not None and reduction_factor < 2:
        raise ValueError(f"reduction_factor must be >= 2, got {reduction_factor}")


# ---- median stopping rule ----


class MedianStoppingRule:
    """Stop a trial whose best score so far is below the median of the others' running averages.

    At step t >= grace_period, the other trials that have reported step t or later (running,
    completed or stopped) are compared by their running average of scores over steps 1..t
    (Golovin et al., Google Vizier). With fewer than ``min_samples`` such trials the trial
    continues.
    """

    def __init__(self, objective: Objective, *, grace_period: int = 1, min_samples: int = 3) -> None:
        _check(grace_period)
        if min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {min_samples}")
        self.objective, self.grace_period, self.min_samples = objective, grace_period, min_samples
        self._history: dict[int, list[tuple[int, float | None]]] = {}  # trial -> [(step, score)]
        self._stopped: set[int] = set()

    def report(self, trial_id: int, step: int, value: float) -> Decision:
        if trial_id in self._stopped:
            return Decision.STOP
        history = self._history.setdefault(trial_id, [])
        history.append((step, _score(self.objective, value)))
        if step < self.grace_period:
            return Decision.CONTINUE
        others = [t for t, h in self._history.items() if t != trial_id and max(s for s, _ in h) >= step]
        if len(others) < self.min_samples:
            return Decision.CONTINUE
        median = statistics.median(self._running_mean(t, step) for t in others)
        best = max(_ordered(score) for s, score in history if s <= step)
        if best < median:
            self._stopped.add(trial_id)
            return Decision.STOP
        return Decision.CONTINUE

    def _running_mean(self, trial_id: int, step: int) -> float:
        scores = [_ordered(score) for s, score in self._history[trial_id] if s <= step]
        return math.fsum(scores) / len(scores)

    def complete(self, trial_id: int, value: float | None) -> None:
        """Nothing to do: a finished trial's history keeps informing the median."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "median",
            "history": [[t, [[s, v] for s, v in h]] for t, h in self._history.items()],
            "stopped": sorted(self._stopped),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _expect_kind(state, "median")
        self._history = {int(t): [(int(s), v) for s, v in h] for t, h in state["history"]}
        self._stopped = {int(t) for t in state["stopped"]}


# ---- asynchronous successive halving ----


class Bracket:
    """One ASHA bracket (Ray Tune's `_Bracket`): per rung, the scores recorded there by trial.

    A trial reaching a rung it has not been recorded at is compared with the scores recorded
    there *before* it: the cutoff is their ``(1 - 1/reduction_factor)`` percentile (linear
    interpolation, NaN-free), and the trial stops when its score is strictly below the
    cutoff. Its score is then recorded. As in Ray, this makes the first trial at a rung always
    continue, and while fewer than ``reduction_factor`` scores are recorded the cutoff is
    interpolated between them (one recorded score: the trial must at least equal it), so early
    arrivals are promoted more generously than the asymptotic top 1/reduction_factor.
    """

    def __init__(self, milestones: list[int], reduction_factor: int) -> None:
        self.rf = reduction_factor
        # Highest milestone first: a trial is recorded at the highest rung it has reached.
        self.rungs: list[tuple[int, dict[int, float | None]]] = [(m, {}) for m in sorted(milestones, reverse=True)]

    def cutoff(self, recorded: dict[int, float | None]) -> float | None:
        values = [v for v in recorded.values() if v is not None]
        if not values:
            return None
        return percentile(values, Fraction(100 * (self.rf - 1), self.rf))

    def on_result(self, trial_id: int, step: int, score: float | None) -> Decision:
        for milestone, recorded in self.rungs:
            if step < milestone or trial_id in recorded:
                continue
            cutoff = self.cutoff(recorded)
            recorded[trial_id] = score
            if cutoff is not None and _ordered(score) < cutoff:
                return Decision.STOP
            return Decision.CONTINUE
        return Decision.CONTINUE

    def state(self) -> list[Any]:
        return [[m, [[t, v] for t, v in recorded.items()]] for m, recorded in self.rungs]

    def load(self, state: list[Any]) -> None:
        self.rungs = [(int(m), {int(t): v for t, v in recorded}) for m, recorded in state]


class SuccessiveHalving:
    """ASHA over one or more brackets; each new trial joins a bracket by weighted round robin.

    Trials are assigned in order of arrival (their first report) by smooth weighted round
    robin over ``weights``: deterministic, and with equal weights a plain round robin.
    """

    def __init__(
        self, objective: Objective, brackets: list[list[int]], reduction_factor: int, weights: list[int], kind: str
    ) -> None:
        self.objective, self.kind = objective, kind
        self.brackets = [Bracket(m, reduction_factor) for m in brackets]
        self.weights = list(weights)
        self._current = [0] * len(self.brackets)
        self._assigned: dict[int, int] = {}
        self._stopped: set[int] = set()

    def bracket_of(self, trial_id: int) -> int:
        """The trial's bracket index, assigning the next one in the rotation to a new trial."""
        if trial_id not in self._assigned:
            total = sum(self.weights)
            self._current = [c + w for c, w in zip(self._current, self.weights, strict=True)]
            chosen = max(range(len(self._current)), key=lambda i: (self._current[i], -i))
            self._current[chosen] -= total
            self._assigned[trial_id] = chosen
        return self._assigned[trial_id]

    def report(self, trial_id: int, step: int, value: float) -> Decision:
        if trial_id in self._stopped:
            return Decision.STOP
        bracket = self.brackets[self.bracket_of(trial_id)]
        decision = bracket.on_result(trial_id, step, _score(self.objective, value))
        if decision is Decision.STOP:
            self._stopped.add(trial_id)
        return decision

    def complete(self, trial_id: int, value: float | None) -> None:
        """Nothing to do: rungs keep every recorded score, and the rungs end below the last epoch."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "brackets": [b.state() for b in self.brackets],
            "current": list(self._current),
            "assigned": [[t, b] for t, b in self._assigned.items()],
            "stopped": sorted(self._stopped),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _expect_kind(state, self.kind)
        if len(state["brackets"]) != len(self.brackets):
            raise ValueError(f"state has {len(state['brackets'])} brackets, this {self.kind} has {len(self.brackets)}")
        for bracket, saved in zip(self.brackets, state["brackets"], strict=True):
            bracket.load(saved)
        self._current = [int(c) for c in state["current"]]
        self._assigned = {int(t): int(b) for t, b in state["assigned"]}
        self._stopped = {int(t) for t in state["stopped"]}


def hyperband_weights(s_max: int, reduction_factor: int) -> list[int]:
    """Trials per bracket in Hyperband (Li et al. 2018): bracket b has s = s_max - b rungs
    below the last epoch and ``ceil((s_max + 1) / (s + 1) * reduction_factor**s)`` configs."""
    return [math.ceil((s_max + 1) / (s + 1) * reduction_factor**s) for s in range(s_max, -1, -1)]


def _expect_kind(state: dict[str, Any], kind: str) -> None:
    if state.get("kind") != kind:
        raise ValueError(f"not a {kind} state: kind is {state.get('kind')!r}")


# ---- factories ----


def median(*, objective: Objective, max_epochs: int, grace_period: int = 1, min_samples: int = 3) -> MedianStoppingRule:
    """Median stopping rule: stop a trial whose best value is worse than the others' median.

    At epoch t a trial stops when its best value so far is worse than the median of the
    running averages (epochs 1..t) of the other trials that reached epoch t, once at least
    min_samples of them have and t >= grace_period. (It does not use max_epochs.)

    Args:
        grace_period: first epoch at which a trial may be stopped.
        min_samples: other trials that must have reached an epoch before it is judged there.
    """
    return MedianStoppingRule(objective, grace_period=grace_period, min_samples=min_samples)


def asha(
    *,
    objective: Objective,
    max_epochs: int,
    grace_period: int = 1,
    reduction_factor: int = 3,
    brackets: int = 1,
) -> SuccessiveHalving:
    """Asynchronous successive halving (ASHA): keep the top 1/reduction_factor at each rung.

    Rungs sit at grace_period * reduction_factor**k epochs below training.epochs. A trial
    reaching a rung stops unless its value is at least the (1 - 1/reduction_factor) percentile
    of the values recorded at that rung before it (Ray Tune's rule: the first trial at a rung
    always continues).

    Args:
        grace_period: epochs every trial trains before it can be stopped (the first rung).
        reduction_factor: at each rung only the best 1/reduction_factor of trials continue.
        brackets: brackets of ASHA, bracket s starting its rungs at grace_period *
            reduction_factor**s; trials join them round robin (capped at the rung count + 1).
    """
    _check(grace_period, reduction_factor)
    if brackets < 1:
        raise ValueError(f"brackets must be >= 1, got {brackets}")
    milestones = rung_milestones(grace_period, reduction_factor, max_epochs)
    count = min(brackets, len(milestones) + 1)
    return SuccessiveHalving(
        objective, [milestones[s:] for s in range(count)], reduction_factor, [1] * count, kind="asha"
    )


def hyperband(
    *, objective: Objective, max_epochs: int, grace_period: int = 1, reduction_factor: int = 3
) -> SuccessiveHalving:
    """Asynchronous Hyperband: ASHA brackets of every grace period, sized as in Hyperband.

    With K rungs below training.epochs, bracket s = K..0 has its first rung at
    grace_period * reduction_factor**(K - s) (s = 0 never stops a trial). New trials join
    brackets in a fixed weighted round robin by arrival, bracket s weighted by Hyperband's
    ceil((K + 1) / (s + 1) * reduction_factor**s) configs; each bracket decides as ASHA.

    Args:
        grace_period: epochs before the first rung of the most aggressive bracket.
        reduction_factor: at each rung only the best 1/reduction_factor of trials continue.
    """
    _check(grace_period, reduction_factor)
    milestones = rung_milestones(grace_period, reduction_factor, max_epochs)
    s_max = len(milestones)
    return SuccessiveHalving(
        objective,
        [milestones[b:] for b in range(s_max + 1)],
        reduction_factor,
        hyperband_weights(s_max, reduction_factor),
        kind="hyperband",
    )


@hookimpl
def tuneyard_register_early_stoppers(register: Any) -> None:
    # Rungs sit at grace_period * reduction_factor**k: a factor below 2 never moves past the first rung.
    grace, factor = Bounds(ge=1), Bounds(ge=2)
    register("median", median, bounds={"grace_period": grace, "min_samples": Bounds(ge=1)})
    register("asha", asha, bounds={"grace_period": grace, "reduction_factor": factor, "brackets": Bounds(ge=1)})
    register("hyperband", hyperband, bounds={"grace_period": grace, "reduction_factor": factor})

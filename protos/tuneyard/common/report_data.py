"""The study report's numbers: one study and its trials (the wire's messages) turned into what each
plot draws. The SVG page (:mod:`tuneyard.common.report_html`) and the client's optional PNGs draw the
very same numbers.

Parameter importance is a simple, dependency-free estimate: for each searched parameter, the
trials with an objective value are grouped by the parameter's value (categorical: one group per
value; numeric: up to ``sqrt(n)`` equal-count bins, in log space for log ranges), and the share of
the objective's variance that lies *between* the groups (the correlation ratio, eta squared) is
taken; the shares are then normalised to sum to 1. With few trials it is a rough hint, not a
measurement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tuneyard.common.trials import config_to_dict, number
from tuneyard.v1 import service_pb2, spec_pb2

__all__ = [
    "INACTIVE",
    "Axis",
    "ReportData",
    "best_so_far",
    "finished_count",
    "objectives_of",
    "trials_done",
    "variance_share",
]


@dataclass(frozen=True)
class ReportData:
    """One study and its trials, as the report draws them (from the SDK or from the server's store)."""

    study: service_pb2.Study
    trials: list[service_pb2.Trial]
    objectives: list[tuple[str, bool]] = field(default_factory=list)  # (metric, maximize)

    @property
    def spec(self) -> spec_pb2.StudySpec:
        return self.study.spec

    @property
    def metric(self) -> str:
        return self.objectives[0][0] if self.objectives else ""

    @property
    def maximize(self) -> bool:
        return self.objectives[0][1] if self.objectives else True

    def config(self, trial: service_pb2.Trial) -> dict[str, Any]:
        return config_to_dict(trial.config, self.spec)


def objectives_of(spec: spec_pb2.StudySpec) -> list[tuple[str, bool]]:
    """``[(metric, maximize)]``: the spec's ``objectives``, else its single ``objective``."""
    found = list(spec.objectives) or ([spec.objective] if spec.objective.metric else [])
    return [(o.metric, o.mode != spec_pb2.Objective.MINIMIZE) for o in found]


FINISHED = ("completed", "failed", "pruned", "cancelled", "infeasible")


def finished_count(study: service_pb2.Study) -> int:
    """Trials that ended, whatever the way: the CLI's count (``client.render.finished_count``)."""
    return sum(getattr(study.trial_counts, name) for name in FINISHED)


def trials_done(study: service_pb2.Study) -> str:
    """``12/24 (1 failed)``: finished trials over the budget, as the CLI's ``studies`` table shows them."""
    budget = study.spec.budget.max_trials
    done = f"{finished_count(study)}/{budget}" if budget else str(finished_count(study))
    counts = study.trial_counts
    unsuccessful = ", ".join(f"{getattr(counts, n)} {n}" for n in ("failed", "infeasible") if getattr(counts, n))
    return f"{done} ({unsuccessful})" if unsuccessful else done


def objective(trial: service_pb2.Trial) -> float | None:
    if trial.HasField("objective_value"):
        return trial.objective_value
    return trial.objective_values[0] if trial.objective_values else None


def seconds(ts: Any) -> float:
    return ts.seconds + ts.nanos / 1e9


def duration(trial: service_pb2.Trial) -> float | None:
    if trial.HasField("start_time") and trial.HasField("end_time"):
        return seconds(trial.end_time) - seconds(trial.start_time)
    return None


# -- data for each plot ------------------------------------------------------------------------


def curves_data(data: ReportData) -> list[tuple[int, list[tuple[int, float]]]]:
    """Per trial, ``[(epoch, objective metric)]`` from its per-epoch metrics."""
    out = []
    for trial in data.trials:
        points = [(m.epoch, m.values[data.metric]) for m in trial.metrics if data.metric in m.values]
        if points:
            out.append((trial.trial_id, points))
    return out


def best_so_far(points: Sequence[tuple[int, float]], maximize: bool) -> list[tuple[int, float]]:
    """The running best of ``(trial_id, value)`` points, in trial id order."""
    best: float | None = None
    steps = []
    for trial_id, value in sorted(points):
        if best is None or (value > best if maximize else value < best):
            best = value
        steps.append((trial_id, best))
    return steps


def history_data(data: ReportData) -> tuple[list[tuple[int, float, int]], list[tuple[int, float]]]:
    """Dots ``(trial_id, objective, state)`` and the best-so-far steps over completed trials."""
    dots: list[tuple[int, float, int]] = [
        (t.trial_id, v, t.state) for t in data.trials if (v := objective(t)) is not None
    ]
    done = [(i, v) for i, v, s in dots if s == service_pb2.TRIAL_COMPLETED]
    return dots, best_so_far(done, data.maximize)


INACTIVE = "inactive"
INACTIVE_GAP = 0.12  # an axis with inactive values keeps [0, GAP) for its "inactive" tick


@dataclass(frozen=True)
class Axis:
    """One parallel-coordinates axis: ``position(value)`` in [0, 1] and its tick labels.

    ``key`` is the parameter's name (empty for the objective); a conditional parameter's axis has an
    ``inactive`` tick at 0 where trials that did not use it cross.
    """

    name: str
    position: Callable[[Any], float | None]
    ticks: list[tuple[float, str]]
    key: str = ""


def _categorical(where: dict[str, float]) -> Callable[[Any], float | None]:
    """A categorical axis' position: each value's place by its text, None for one the axis lacks."""
    return lambda v: where.get(str(v))


def _inner_ticks(lo: float, hi: float, log: bool) -> list[float]:
    """Up to three round values strictly inside ``(lo, hi)``: decades on a log axis."""
    if log:
        return [10.0**k for k in range(math.floor(math.log10(lo)) + 1, math.ceil(math.log10(hi)))][:3]
    raw = (hi - lo) / 4
    if raw <= 0:
        return []
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [k * step for k in range(math.floor(lo / step) + 1, math.ceil(hi / step)) if lo < k * step < hi][:3]


def _numeric_axis(name: str, values: list[float], log: bool, integer: bool = False) -> Axis:
    """A scaled axis from the smallest to the largest value seen; log-scaled for log ranges."""
    log = log and min(values) > 0

    def tf(v: float) -> float:
        return math.log10(v) if log else v

    lo, hi = tf(min(values)), tf(max(values))
    span = (hi - lo) or 1.0

    def position(v: Any) -> float | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (log and v <= 0):
            return None
        return (tf(v) - lo) / span if hi > lo else 0.5

    inner = [
        v
        for v in _inner_ticks(min(values), max(values), log)
        if (not integer or float(v).is_integer()) and 0.15 < (position(v) or 0.0) < 0.85  # clear of the ends
    ]
    marks = [min(values), *inner, max(values)] if hi > lo else [min(values)]
    labels = [(position(v) or 0.0, number(int(v) if integer else v)) for v in marks]
    return Axis(f"{name} (log)" if log else name, position, labels, name)


def _with_inactive(axis: Axis) -> Axis:
    """The same axis squeezed into [GAP, 1], with an ``inactive`` tick at 0 for trials without it."""

    def position(v: Any) -> float | None:
        if v is None:
            return 0.0
        p = axis.position(v)
        return None if p is None else INACTIVE_GAP + p * (1 - INACTIVE_GAP)

    marks = [(INACTIVE_GAP + p * (1 - INACTIVE_GAP), label) for p, label in axis.ticks]
    return Axis(axis.name, position, [(0.0, INACTIVE), *marks], axis.key)


def param_axis(data: ReportData, param: spec_pb2.Parameter, configs: Sequence[dict[str, Any]]) -> Axis | None:
    """The axis of one searched parameter over ``configs``; None when no trial has a value for it."""
    values = [c[param.name] for c in configs if param.name in c]
    if not values:
        return None
    domain = param.WhichOneof("domain")
    if domain != "choice" and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        rng = getattr(param, domain)
        axis = _numeric_axis(param.name, [float(v) for v in values], rng.log, domain == "int_range")
    else:
        cats = sorted({str(v) for v in values})
        step = 1 / (len(cats) - 1) if len(cats) > 1 else 0.0
        where = {c: (i * step if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
        axis = Axis(param.name, _categorical(where), [(p, c) for c, p in where.items()], param.name)
    return _with_inactive(axis) if len(values) < len(configs) else axis


def parallel_data(data: ReportData) -> tuple[list[Axis], list[tuple[int, list[float | None]]]]:
    """Axes (each searched parameter, then the objective) and each trial's positions on them.

    A trial that did not use a conditional parameter crosses that axis at its ``inactive`` tick, so
    every trial with an objective value reaches the objective axis.
    """
    configs = {t.trial_id: data.config(t) for t in data.trials}
    axes = [a for p in data.spec.search_space if (a := param_axis(data, p, list(configs.values()))) is not None]
    params = len(axes)
    scored = {t.trial_id: v for t in data.trials if (v := objective(t)) is not None}
    if scored:
        axes.append(replace(_numeric_axis(data.metric, list(scored.values()), False), key=""))
    lines = []
    for trial_id, config in configs.items():
        row: list[float | None] = [ax.position(config.get(ax.key)) for ax in axes[:params]]
        if scored:
            row.append(axes[-1].position(scored.get(trial_id)))
        lines.append((trial_id, row))
    return axes, lines


def _groups(values: list[Any], log: bool) -> list[Any]:
    """A group key per value: the value itself (categorical) or an equal-count bin (numeric)."""
    if not all(isinstance(v, (int, float)) for v in values) or len(set(values)) <= 4:
        return [str(v) for v in values]
    keyed = [math.log10(v) if log and v > 0 else v for v in values]
    bins = max(2, int(math.sqrt(len(values))))
    order = sorted(range(len(values)), key=lambda i: keyed[i])
    groups = [0] * len(values)
    for rank, i in enumerate(order):
        groups[i] = rank * bins // len(values)
    return groups


def variance_share(values: list[Any], targets: list[float], log: bool = False) -> float:
    """Between-group variance of ``targets`` grouped by ``values``, over their total variance."""
    n = len(targets)
    mean = sum(targets) / n if n else 0.0
    total = sum((y - mean) ** 2 for y in targets)
    if n < 2 or total <= 0:
        return 0.0
    by_group: dict[Any, list[float]] = {}
    for key, y in zip(_groups(values, log), targets, strict=False):
        by_group.setdefault(key, []).append(y)
    between = sum(len(ys) * (sum(ys) / len(ys) - mean) ** 2 for ys in by_group.values())
    return between / total


def importance_data(data: ReportData) -> dict[str, float]:
    """Each searched parameter's share of the objective's variance, normalised to sum to 1."""
    scored = [(data.config(t), v) for t in data.trials if (v := objective(t)) is not None]
    raw = {}
    for param in data.spec.search_space:
        pairs = [(c.get(param.name, "(inactive)"), v) for c, v in scored]
        dom = param.WhichOneof("domain")
        log = dom is not None and dom != "choice" and getattr(param, dom).log
        raw[param.name] = variance_share([p for p, _ in pairs], [v for _, v in pairs], log)
    total = sum(raw.values())
    return {k: (v / total if total > 0 else 0.0) for k, v in raw.items()}


def dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    better = [x > y if mx else x < y for x, y, mx in zip(a, b, maximize, strict=False)]
    worse = [x < y if mx else x > y for x, y, mx in zip(a, b, maximize, strict=False)]
    return any(better) and not any(worse)


def pareto_data(data: ReportData) -> list[tuple[int, float, float, bool]]:
    """``(trial_id, first objective, second objective, on the front)`` for multi-objective studies."""
    if len(data.objectives) < 2:
        return []
    points = {t.trial_id: list(t.objective_values) for t in data.trials if len(t.objective_values) >= 2}
    front = {t.trial_id for t in data.study.pareto_front}
    if not front:  # the server keeps the front; compute it when an older one did not
        modes = [mx for _, mx in data.objectives]
        front = {i for i, p in points.items() if not any(dominates(q, p, modes) for q in points.values())}
    return [(i, p[0], p[1], i in front) for i, p in points.items()]


def occupancy_data(data: ReportData) -> tuple[float, list[tuple[str, list[tuple[int, float, float, int]]]]]:
    """Study start, and per device ``(trial_id, start, end, state)`` in seconds since it."""
    timed = [t for t in data.trials if t.HasField("start_time")]
    if not timed:
        return 0.0, []
    origin = min(seconds(t.start_time) for t in timed)
    latest = max(seconds(t.end_time) if t.HasField("end_time") else seconds(t.start_time) for t in timed)
    rows: dict[str, list[tuple[int, float, float, int]]] = {}
    for t in timed:
        end = seconds(t.end_time) if t.HasField("end_time") else latest
        rows.setdefault(t.device or "(none)", []).append(
            (t.trial_id, seconds(t.start_time) - origin, end - origin, t.state)
        )
    return origin, sorted(rows.items())

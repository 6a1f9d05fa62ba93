"""``tuneyard report``: one study as a self-contained HTML page (inline CSS and SVG, no network).

Everything comes from the public API through the SDK (:meth:`Client.get_study`,
:meth:`Client.list_trials`). Pure Python: no torch, no numpy. Each plot is built in two steps: a
``*_data`` function turns the study into plain numbers, and an ``*_svg`` function draws them; the
optional ``--png`` output (matplotlib, extra ``[report]``) draws the very same numbers.

Every string a user chose (study name, configs, errors, device names) goes through
:func:`html.escape`.

Parameter importance is a simple, dependency-free estimate: for each searched parameter, the
trials with an objective value are grouped by the parameter's value (categorical: one group per
value; numeric: up to ``sqrt(n)`` equal-count bins, in log space for log ranges), and the share of
the objective's variance that lies *between* the groups (the correlation ratio, eta squared) is
taken; the shares are then normalised to sum to 1. With few trials it is a rough hint, not a
measurement.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneyard.client.render import last_line, number, trial_label, trial_state
from tuneyard.client.sdk import Client
from tuneyard.client.specfile import config_to_dict
from tuneyard.v1 import service_pb2, spec_pb2

__all__ = ["ReportData", "MissingExtra", "collect", "build_html", "write_report", "write_pngs", "PLOTS"]

REPORT_EXTRA = "--png needs matplotlib: pip install 'tuneyard[report]'"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip
STATE_COLOURS = {
    service_pb2.TRIAL_COMPLETED: "#2ca02c",
    service_pb2.TRIAL_FAILED: "#d62728",
    service_pb2.TRIAL_PRUNED: "#7f7f7f",
    service_pb2.TRIAL_CANCELLED: "#bcbd22",
    service_pb2.TRIAL_INFEASIBLE: "#ff7f0e",
    service_pb2.TRIAL_RUNNING: "#1f77b4",
}
W, H = 720, 360  # plot size in SVG pixels
M = {"left": 70, "right": 20, "top": 20, "bottom": 50}


class MissingExtra(RuntimeError):
    """An optional dependency (matplotlib for ``--png``) is not installed."""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


# -- the study, as plain values ----------------------------------------------------------------


@dataclass
class ReportData:
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


def collect(client: Client, study_id: str) -> ReportData:
    """Fetch one study and all its trials (with per-epoch metrics) through the SDK."""
    study = client.get_study(study_id)
    trials = sorted(client.list_trials(study_id), key=lambda t: t.trial_id)
    return ReportData(study=study, trials=trials, objectives=objectives_of(study.spec))


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
    dots = [(t.trial_id, v, t.state) for t in data.trials if (v := objective(t)) is not None]
    done = [(i, v) for i, v, s in dots if s == service_pb2.TRIAL_COMPLETED]
    return dots, best_so_far(done, data.maximize)


@dataclass
class Axis:
    """One parallel-coordinates axis: ``position(value)`` in [0, 1] and its tick labels."""

    name: str
    position: Callable[[Any], float | None]
    ticks: list[tuple[float, str]]


def _numeric_axis(name: str, values: list[float], log: bool) -> Axis:
    """A scaled axis from the smallest to the largest value seen; log-scaled for log ranges."""
    log = log and min(values) > 0

    def tf(v: float) -> float:
        return math.log10(v) if log else v

    lo, hi = tf(min(values)), tf(max(values))
    span = (hi - lo) or 1.0

    def position(v: Any) -> float | None:
        if not isinstance(v, (int, float)) or (log and v <= 0):
            return None
        return (tf(v) - lo) / span if hi > lo else 0.5

    return Axis(
        f"{name} (log)" if log else name,
        position,
        [(position(min(values)) or 0.0, number(min(values))), (position(max(values)) or 0.0, number(max(values)))],
    )


def parallel_data(data: ReportData) -> tuple[list[Axis], list[tuple[int, list[float | None]]]]:
    """Axes (each searched parameter, then the objective) and each trial's positions on them."""
    configs = {t.trial_id: data.config(t) for t in data.trials}
    axes = []
    for param in data.spec.search_space:
        values = [c[param.name] for c in configs.values() if param.name in c]
        if not values:
            continue
        numeric = param.WhichOneof("domain") != "choice" and all(isinstance(v, (int, float)) for v in values)
        if numeric:
            rng = getattr(param, param.WhichOneof("domain"))
            axes.append(_numeric_axis(param.name, [float(v) for v in values], rng.log))
        else:
            cats = sorted({str(v) for v in values})
            step = 1 / (len(cats) - 1) if len(cats) > 1 else 0.0
            where = {c: (i * step if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
            axes.append(Axis(param.name, lambda v, w=where: w.get(str(v)), [(p, c) for c, p in where.items()]))
    scored = {t.trial_id: v for t in data.trials if (v := objective(t)) is not None}
    if scored:
        obj = _numeric_axis(data.metric, list(scored.values()), False)
        axes.append(Axis(data.metric, obj.position, obj.ticks))
    names = [p.name for p in data.spec.search_space if any(p.name in c for c in configs.values())]
    lines = []
    for trial_id, config in configs.items():
        row: list[float | None] = [ax.position(config.get(n)) for ax, n in zip(axes, names, strict=False)]
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


# -- SVG ---------------------------------------------------------------------------------------


class Frame:
    """Maps data coordinates onto the plot area and draws axes with a few ticks."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], left: int = M["left"]) -> None:
        self.x0, self.x1 = _padded(xs)
        self.y0, self.y1 = _padded(ys)
        self.left = left

    def x(self, v: float) -> float:
        return self.left + (v - self.x0) / (self.x1 - self.x0) * (W - self.left - M["right"])

    def y(self, v: float) -> float:
        return H - M["bottom"] - (v - self.y0) / (self.y1 - self.y0) * (H - M["top"] - M["bottom"])

    def axes(self, xlabel: str, ylabel: str, xticks: Sequence[float] | None = None, yticks: bool = True) -> str:
        bottom, right = H - M["bottom"], W - M["right"]
        parts = [f'<line class="axis" x1="{self.left}" y1="{bottom}" x2="{right}" y2="{bottom}"/>',
                 f'<line class="axis" x1="{self.left}" y1="{M["top"]}" x2="{self.left}" y2="{bottom}"/>']  # fmt: skip
        for v in xticks if xticks is not None else _ticks(self.x0, self.x1):
            parts.append(f'<text x="{self.x(v):.1f}" y="{bottom + 16}" text-anchor="middle">{esc(number(v))}</text>')
        for v in _ticks(self.y0, self.y1) if yticks else []:
            parts.append(f'<text x="{self.left - 6}" y="{self.y(v) + 4:.1f}" text-anchor="end">{esc(number(v))}</text>')
        parts.append(f'<text x="{(self.left + right) / 2}" y="{H - 12}" text-anchor="middle">{esc(xlabel)}</text>')
        parts.append(
            f'<text x="14" y="{H / 2}" transform="rotate(-90 14 {H / 2})" text-anchor="middle">{esc(ylabel)}</text>'
        )
        return "".join(parts)


def _padded(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = (hi - lo) * 0.05 or (abs(lo) * 0.05 or 0.5)
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, count: int = 9) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) inside ``[lo, hi]``."""
    raw = (hi - lo) / (count - 1) or 1.0
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step)
    return [float(f"{k * step:.6g}") for k in range(first, math.floor(hi / step) + 1)]


def svg(plot_id: str, body: str, title: str) -> str:
    return (f'<svg id="{plot_id}-svg" class="plot" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
            f'role="img" aria-label="{esc(title)}">{body}</svg>')  # fmt: skip


def empty_svg(plot_id: str, message: str) -> str:
    return svg(plot_id, f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">{esc(message)}</text>', message)


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def curves_svg(data: ReportData) -> str:
    curves = curves_data(data)
    if not curves:
        return empty_svg("curves", "no per-epoch metrics yet")
    frame = Frame([e for _, pts in curves for e, _ in pts], [v for _, pts in curves for _, v in pts])
    epochs = sorted({e for _, pts in curves for e, _ in pts})
    body = [frame.axes("epoch", data.metric, epochs if len(epochs) <= 12 else None)]
    for trial_id, pts in curves:
        path = " ".join(f"{frame.x(e):.1f},{frame.y(v):.1f}" for e, v in pts)
        body.append(f'<polyline class="curve" data-trial="{trial_id}" fill="none" stroke="{colour(trial_id)}" '
                    f'stroke-width="2" points="{path}"><title>trial {trial_id}</title></polyline>')  # fmt: skip
    return svg("curves", "".join(body), f"learning curves: {data.metric} per epoch")


def history_svg(data: ReportData) -> str:
    dots, best = history_data(data)
    if not dots:
        return empty_svg("history", "no trial has an objective value yet")
    frame = Frame([i for i, _, _ in dots], [v for _, v, _ in dots])
    ids = sorted({i for i, _, _ in dots})
    body = [frame.axes("trial id", data.metric, ids if len(ids) <= 20 else None)]
    if best:
        pts = [(frame.x(best[0][0]), frame.y(best[0][1]))]
        for (_, prev), (i, v) in zip(best, best[1:], strict=False):
            pts += [(frame.x(i), frame.y(prev)), (frame.x(i), frame.y(v))]
        pts.append((frame.x(ids[-1]), frame.y(best[-1][1])))
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        body.append(f'<polyline id="best-so-far" fill="none" stroke="#d62728" stroke-width="2" points="{path}">'
                    f'<title>best so far ({"max" if data.maximize else "min"})</title></polyline>')  # fmt: skip
    for i, v, state in dots:
        fill = STATE_COLOURS.get(state, "#444")
        body.append(f'<circle class="dot" data-trial="{i}" cx="{frame.x(i):.1f}" cy="{frame.y(v):.1f}" r="5" '
                    f'fill="{fill}"><title>trial {i}: {esc(number(v))}</title></circle>')  # fmt: skip
    return svg("history", "".join(body), "optimisation history")


def parallel_svg(data: ReportData) -> str:
    axes, lines = parallel_data(data)
    if len(axes) < 2:
        return empty_svg("parallel", "nothing to compare yet")
    top, bottom = M["top"] + 10, H - M["bottom"]
    xs = [M["left"] + i * (W - M["left"] - M["right"] - 40) / (len(axes) - 1) for i in range(len(axes))]

    def y(p: float) -> float:
        return bottom - p * (bottom - top)

    body = []
    for trial_id, row in lines:
        for (xa, a), (xb, b) in zip(zip(xs, row, strict=False), zip(xs[1:], row[1:], strict=False), strict=False):
            if a is not None and b is not None:
                body.append(f'<line data-trial="{trial_id}" x1="{xa:.1f}" y1="{y(a):.1f}" x2="{xb:.1f}" '
                            f'y2="{y(b):.1f}" stroke="{colour(trial_id)}" opacity="0.8"/>')  # fmt: skip
    for x, axis in zip(xs, axes, strict=False):
        body.append(f'<line class="axis" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}"/>')
        body.append(f'<text x="{x:.1f}" y="{bottom + 30}" text-anchor="middle">{esc(axis.name)}</text>')
        for p, label in axis.ticks:
            body.append(f'<text x="{x + 4:.1f}" y="{y(p) + 4:.1f}">{esc(label)}</text>')
    return svg("parallel", "".join(body), "parallel coordinates")


def importance_svg(data: ReportData) -> str:
    shares = importance_data(data)
    if not shares or not any(shares.values()):
        return empty_svg("importance", "not enough trials with differing objectives to estimate importance")
    items = sorted(shares.items(), key=lambda kv: -kv[1])
    left, row = 200, min(40, (H - M["top"] - M["bottom"]) // len(items))
    body = []
    for k, (name, share) in enumerate(items):
        y = M["top"] + k * row
        width = share * (W - left - 80)
        body.append(f'<text x="{left - 8}" y="{y + row / 2 + 4:.1f}" text-anchor="end">{esc(name)}</text>')
        body.append(
            f'<rect class="bar" x="{left}" y="{y + 4}" width="{width:.1f}" height="{row - 8}" fill="{colour(k)}"/>'
        )
        body.append(f'<text x="{left + width + 6:.1f}" y="{y + row / 2 + 4:.1f}">{share:.2f}</text>')
    return svg("importance", "".join(body), "parameter importance")


def pareto_svg(data: ReportData) -> str:
    points = pareto_data(data)
    if not points:
        return ""
    (m1, max1), (m2, max2) = data.objectives[:2]
    frame = Frame([p[1] for p in points], [p[2] for p in points])
    body = [frame.axes(f"{m1} ({'max' if max1 else 'min'})", f"{m2} ({'max' if max2 else 'min'})")]
    front = sorted((x, yv) for _, x, yv, on in points if on)
    if len(front) > 1:
        path = " ".join(f"{frame.x(x):.1f},{frame.y(yv):.1f}" for x, yv in front)
        body.append(f'<polyline id="pareto-line" fill="none" stroke="#d62728" stroke-dasharray="4 3" points="{path}"/>')
    for i, x, yv, on in points:
        cls, fill = ("pareto-point", "#d62728") if on else ("dominated-point", "#999")
        tip = f"trial {i}: {number(x)}, {number(yv)}"
        body.append(f'<circle class="{cls}" data-trial="{i}" cx="{frame.x(x):.1f}" cy="{frame.y(yv):.1f}" r="6" '
                    f'fill="{fill}"><title>{esc(tip)}</title></circle>')  # fmt: skip
    return svg("pareto", "".join(body), "Pareto front")


def _lanes(bars: Sequence[tuple[int, float, float, int]]) -> dict[int, int]:
    """A lane per trial so that trials sharing a device at the same time (packed slots) don't overlap."""
    ends: list[float] = []
    lanes = {}
    for trial_id, start, end, _ in sorted(bars, key=lambda b: b[1]):
        lane = next((k for k, e in enumerate(ends) if e <= start), len(ends))
        ends[lane:lane + 1] = [end]  # fmt: skip
        lanes[trial_id] = lane
    return lanes


def occupancy_svg(data: ReportData) -> str:
    _, rows = occupancy_data(data)
    if not rows:
        return empty_svg("occupancy", "no trial has started yet")
    left = 130
    frame = Frame([0.0] + [b[2] for _, bars in rows for b in bars], [0.0, 1.0], left=left)
    frame.x0 = 0.0
    band = (H - M["top"] - M["bottom"]) / len(rows)
    body = [frame.axes("seconds since the first trial started", "", yticks=False)]
    for k, (device, bars) in enumerate(rows):
        y, lanes = M["top"] + k * band, _lanes(bars)
        body.append(f'<text x="{left - 8}" y="{y + band / 2 + 4:.1f}" text-anchor="end">{esc(device)}</text>')
        lane_h = (band - 8) / (max(lanes.values()) + 1)
        for trial_id, start, end, state in bars:
            x0, x1, fill = frame.x(start), frame.x(end), STATE_COLOURS.get(state, "#444")
            top = y + 4 + lanes[trial_id] * lane_h
            body.append(f'<rect class="bar" data-trial="{trial_id}" x="{x0:.1f}" y="{top + 1:.1f}" '
                        f'width="{max(x1 - x0, 1):.1f}" height="{lane_h - 2:.1f}" fill="{fill}" '
                        f'opacity="0.8"><title>trial {trial_id} {esc(service_pb2.TrialState.Name(state))}: '
                        f'{start:.1f}s to {end:.1f}s</title></rect>')  # fmt: skip
    return svg("occupancy", "".join(body), "device occupancy")


# -- HTML --------------------------------------------------------------------------------------

CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}th{background:#f3f3f3}
svg.plot{max-width:100%;height:auto;border:1px solid #eee}svg text{font-size:11px;fill:#333}
.axis{stroke:#333;stroke-width:1}.legend span{display:inline-block;margin-right:1em}
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px}code{font-size:12px}"""


def trials_table(data: ReportData) -> str:
    heads = ["trial", "state", "config", *(m for m, _ in data.objectives or [("objective", True)]),
             "epochs", "device", "duration"]  # fmt: skip
    rows = ["<tr>" + "".join(f"<th>{esc(h)}</th>" for h in heads) + "</tr>"]
    for t in data.trials:
        state = trial_label(t)
        if t.error and t.state in (service_pb2.TRIAL_FAILED, service_pb2.TRIAL_INFEASIBLE):
            state += f": {last_line(t.error)}"
        values = list(t.objective_values) or ([v] if (v := objective(t)) is not None else [])
        values += [None] * (max(1, len(data.objectives)) - len(values))
        seconds_ = duration(t)
        cells = [str(t.trial_id), state, " ".join(f"{k}={number(v)}" for k, v in data.config(t).items()),
                 *("" if v is None else number(v) for v in values), str(t.epochs_completed), t.device,
                 "" if seconds_ is None else f"{seconds_:.1f}s"]  # fmt: skip
        rows.append(f'<tr id="trial-{t.trial_id}">' + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    return f'<table id="trial-table">{"".join(rows)}</table>'


def _legend() -> str:
    return (
        '<p class="legend">'
        + "".join(
            f'<span><i class="swatch" style="background:{c}"></i>{esc(trial_state(s))}</span>'
            for s, c in STATE_COLOURS.items()
        )
        + "</p>"
    )


SECTIONS = (
    ("trials", "Trials", trials_table),
    ("learning-curves", "Learning curves", curves_svg),
    ("history", "Optimisation history", history_svg),
    ("parallel-coordinates", "Parallel coordinates", parallel_svg),
    ("importance", "Parameter importance", importance_svg),
    ("pareto", "Pareto front", lambda d: pareto_svg(d) or "<p>single objective: no Pareto front</p>"),
    ("occupancy", "Device occupancy", lambda d: _legend() + occupancy_svg(d)),
)


def build_html(data: ReportData) -> str:
    """The whole report: one page, inline CSS and SVG, nothing fetched from anywhere."""
    study, name = data.study, data.spec.name or "unnamed"
    goals = ", ".join(f"{'maximise' if mx else 'minimise'} {m}" for m, mx in data.objectives)
    summary = (f"study <code>{esc(study.study_id)}</code> &middot; "
               f"{esc(service_pb2.StudyState.Name(study.state).removeprefix('STUDY_'))} &middot; "
               f"{len(data.trials)} trials &middot; {esc(goals)}")  # fmt: skip
    if study.error:
        summary += f"<br>error: {esc(study.error)}"
    sections = "".join(
        f'<section id="{sid}"><h2>{esc(title)}</h2>{draw(data)}</section>' for sid, title, draw in SECTIONS
    )
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>tuneyard report: {esc(name)}</title>'
            f"<style>{CSS}</style></head><body><h1>{esc(name)}</h1><p>{summary}</p>"
            f"<p><small>Importance: each parameter's share of the objective's variance between groups of its "
            f"values (eta squared over binned or categorical values), normalised to sum to 1.</small></p>"
            f"{sections}</body></html>\n")  # fmt: skip


# -- PNG (optional, matplotlib) ----------------------------------------------------------------


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtra(REPORT_EXTRA) from exc
    return plt


def write_pngs(data: ReportData, directory: Path) -> list[Path]:
    """Each plot as ``DIRECTORY/<plot>.png``, drawn with matplotlib from the same data as the SVGs."""
    plt = _pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in PNG_PLOTS.items():
        fig, ax = plt.subplots(figsize=(8, 4))
        if draw(data, ax) is False:
            plt.close(fig)
            continue
        fig.tight_layout()
        path = directory / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _png_curves(data: ReportData, ax: Any) -> None:
    for trial_id, pts in curves_data(data):
        ax.plot(*zip(*pts, strict=False), marker="o", label=f"trial {trial_id}", color=colour(trial_id))
    ax.set(xlabel="epoch", ylabel=data.metric, title="learning curves")


def _png_history(data: ReportData, ax: Any) -> None:
    dots, best = history_data(data)
    for i, v, state in dots:
        ax.scatter([i], [v], color=STATE_COLOURS.get(state, "#444"))
    if best:
        ax.step(*zip(*best, strict=False), where="post", color="#d62728", label="best so far")
    ax.set(xlabel="trial id", ylabel=data.metric, title="optimisation history")


def _png_parallel(data: ReportData, ax: Any) -> None:
    axes, lines = parallel_data(data)
    for trial_id, row in lines:
        pts = [(k, p) for k, p in enumerate(row) if p is not None]
        if pts:
            ax.plot(*zip(*pts, strict=False), color=colour(trial_id), alpha=0.8)
    ax.set_xticks(range(len(axes)), [a.name for a in axes])
    ax.set(ylabel="scaled value", title="parallel coordinates")


def _png_importance(data: ReportData, ax: Any) -> None:
    shares = importance_data(data)
    ax.barh(list(shares), list(shares.values()))
    ax.set(xlabel="share of objective variance", title="parameter importance")


def _png_pareto(data: ReportData, ax: Any) -> bool | None:
    points = pareto_data(data)
    if not points:
        return False
    for _, x, y, on in points:
        ax.scatter([x], [y], color="#d62728" if on else "#999")
    ax.set(xlabel=data.objectives[0][0], ylabel=data.objectives[1][0], title="Pareto front")
    return None


def _png_occupancy(data: ReportData, ax: Any) -> None:
    _, rows = occupancy_data(data)
    for k, (_device, bars) in enumerate(rows):
        ax.broken_barh([(s, max(e - s, 0.01)) for _, s, e, _ in bars], (k - 0.4, 0.8),
                       facecolors=[STATE_COLOURS.get(st, "#444") for *_, st in bars])  # fmt: skip
    ax.set_yticks(range(len(rows)), [d for d, _ in rows])
    ax.set(xlabel="seconds since the first trial started", title="device occupancy")


PNG_PLOTS: dict[str, Callable[[ReportData, Any], bool | None]] = {
    "learning-curves": _png_curves,
    "history": _png_history,
    "parallel-coordinates": _png_parallel,
    "importance": _png_importance,
    "pareto": _png_pareto,
    "occupancy": _png_occupancy,
}
PLOTS = tuple(PNG_PLOTS)


def write_report(client: Client, study_id: str, out: Path, png_dir: Path | None = None) -> list[Path]:
    """Write the HTML report (and, with ``png_dir``, one PNG per plot); the paths written."""
    if png_dir is not None:
        _pyplot()  # fail before any work when matplotlib is missing
    data = collect(client, study_id)
    out.write_text(build_html(data), encoding="utf-8")
    return [out, *(write_pngs(data, png_dir) if png_dir is not None else [])]

"""The study report as one self-contained HTML page: inline CSS and SVG, nothing fetched, pure Python.

Drawn from :class:`~tuneyard.common.report_data.ReportData` alone, so the client's ``tuneyard report``
(through the SDK) and the server's dashboard (from its store) render the same page. Every string a
user chose (study name, configs, errors, device names) goes through :func:`html.escape`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from tuneyard.common.report_data import (
    ReportData,
    curves_data,
    duration,
    history_data,
    importance_data,
    objective,
    occupancy_data,
    parallel_data,
    pareto_data,
)
from tuneyard.common.trials import last_line, number, trial_label, trial_state
from tuneyard.v1 import service_pb2

__all__ = ["PALETTE", "STATE_COLOURS", "build_html", "colour"]

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
STATE_COLOURS: dict[int, str] = {
    service_pb2.TRIAL_COMPLETED: "#2ca02c",
    service_pb2.TRIAL_FAILED: "#d62728",
    service_pb2.TRIAL_PRUNED: "#7f7f7f",
    service_pb2.TRIAL_CANCELLED: "#bcbd22",
    service_pb2.TRIAL_INFEASIBLE: "#ff7f0e",
    service_pb2.TRIAL_RUNNING: "#1f77b4",
}
W, H = 720, 360  # plot size in SVG pixels
M = {"left": 70, "right": 20, "top": 20, "bottom": 50}


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


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
        parts = [
            f'<line class="axis" x1="{self.left}" y1="{bottom}" x2="{right}" y2="{bottom}"/>',
            f'<line class="axis" x1="{self.left}" y1="{M["top"]}" x2="{self.left}" y2="{bottom}"/>',
        ]
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
    return (
        f'<svg id="{plot_id}-svg" class="plot" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
        f'role="img" aria-label="{esc(title)}">{body}</svg>'
    )


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
        body.append(
            f'<polyline class="curve" data-trial="{trial_id}" fill="none" stroke="{colour(trial_id)}" '
            f'stroke-width="2" points="{path}"><title>trial {trial_id}</title></polyline>'
        )
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
        body.append(
            f'<polyline id="best-so-far" fill="none" stroke="#d62728" stroke-width="2" points="{path}">'
            f"<title>best so far ({'max' if data.maximize else 'min'})</title></polyline>"
        )
    for i, v, state in dots:
        fill = STATE_COLOURS.get(state, "#444")
        body.append(
            f'<circle class="dot" data-trial="{i}" cx="{frame.x(i):.1f}" cy="{frame.y(v):.1f}" r="5" '
            f'fill="{fill}"><title>trial {i}: {esc(number(v))}</title></circle>'
        )
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
                body.append(
                    f'<line data-trial="{trial_id}" x1="{xa:.1f}" y1="{y(a):.1f}" x2="{xb:.1f}" '
                    f'y2="{y(b):.1f}" stroke="{colour(trial_id)}" opacity="0.8"/>'
                )
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
        body.append(
            f'<circle class="{cls}" data-trial="{i}" cx="{frame.x(x):.1f}" cy="{frame.y(yv):.1f}" r="6" '
            f'fill="{fill}"><title>{esc(tip)}</title></circle>'
        )
    return svg("pareto", "".join(body), "Pareto front")


def _lanes(bars: Sequence[tuple[int, float, float, int]]) -> dict[int, int]:
    """A lane per trial so that trials sharing a device at the same time (packed slots) don't overlap."""
    ends: list[float] = []
    lanes = {}
    for trial_id, start, end, _ in sorted(bars, key=lambda b: b[1]):
        lane = next((k for k, e in enumerate(ends) if e <= start), len(ends))
        ends[lane : lane + 1] = [end]
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
            body.append(
                f'<rect class="bar" data-trial="{trial_id}" x="{x0:.1f}" y="{top + 1:.1f}" '
                f'width="{max(x1 - x0, 1):.1f}" height="{lane_h - 2:.1f}" fill="{fill}" '
                f'opacity="0.8"><title>trial {trial_id} {esc(service_pb2.TrialState.Name(state))}: '
                f"{start:.1f}s to {end:.1f}s</title></rect>"
            )
    return svg("occupancy", "".join(body), "device occupancy")


# -- HTML --------------------------------------------------------------------------------------

CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}th{background:#f3f3f3}
svg.plot{max-width:100%;height:auto;border:1px solid #eee}svg text{font-size:11px;fill:#333}
.axis{stroke:#333;stroke-width:1}.legend span{display:inline-block;margin-right:1em}
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px}code{font-size:12px}"""


def trials_table(data: ReportData) -> str:
    heads = [
        "trial",
        "state",
        "config",
        *(m for m, _ in data.objectives or [("objective", True)]),
        "epochs",
        "device",
        "duration",
    ]
    rows = ["<tr>" + "".join(f"<th>{esc(h)}</th>" for h in heads) + "</tr>"]
    for t in data.trials:
        state = trial_label(t)
        if t.error and t.state in (service_pb2.TRIAL_FAILED, service_pb2.TRIAL_INFEASIBLE):
            state += f": {last_line(t.error)}"
        values = list(t.objective_values) or ([v] if (v := objective(t)) is not None else [])
        values += [None] * (max(1, len(data.objectives)) - len(values))
        seconds_ = duration(t)
        cells = [
            str(t.trial_id),
            state,
            " ".join(f"{k}={number(v)}" for k, v in data.config(t).items()),
            *("" if v is None else number(v) for v in values),
            str(t.epochs_completed),
            t.device,
            "" if seconds_ is None else f"{seconds_:.1f}s",
        ]
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
    summary = (
        f"study <code>{esc(study.study_id)}</code> &middot; "
        f"{esc(service_pb2.StudyState.Name(study.state).removeprefix('STUDY_'))} &middot; "
        f"{len(data.trials)} trials &middot; {esc(goals)}"
    )
    if study.error:
        summary += f"<br>error: {esc(study.error)}"
    sections = "".join(
        f'<section id="{sid}"><h2>{esc(title)}</h2>{draw(data)}</section>' for sid, title, draw in SECTIONS
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>tuneyard report: {esc(name)}</title>'
        f"<style>{CSS}</style></head><body><h1>{esc(name)}</h1><p>{summary}</p>"
        f"<p><small>Importance: each parameter's share of the objective's variance between groups of its "
        f"values (eta squared over binned or categorical values), normalised to sum to 1.</small></p>"
        f"{sections}</body></html>\n"
    )

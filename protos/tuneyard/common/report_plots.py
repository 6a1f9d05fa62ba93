"""The report's trial plots as SVG: learning curves, optimisation history and parallel coordinates.

A trial keeps its own colour (:func:`~tuneyard.common.report_style.trial_colour`) in the curves, the
legend and the trial table; the parallel coordinates colour by the objective instead (one scale with a
colour bar), as Optuna's dashboard does. Hovering shows each point's values (SVG ``<title>``); the
page's script highlights the trial under the pointer in every plot (``data-trial``).
"""

from __future__ import annotations

from tuneyard.common.report_data import ReportData, curves_data, history_data, objective, parallel_data
from tuneyard.common.report_style import DOMINATED, STATE_COLOURS, scale_colour, trial_colour
from tuneyard.common.report_svg import Frame, M, colour_bar, empty_note, esc, shorten, svg
from tuneyard.common.trials import number, trial_state
from tuneyard.v1 import service_pb2

__all__ = ["curves_plot", "history_plot", "legend", "parallel_plot"]

BEST_LINE = "#1d2330"
MAX_MARKERS = 800  # hover markers on the curves up to this many points in all
HALO = 'paint-order="stroke" stroke="#fff" stroke-width="3"'


def legend(items: list[tuple[str, str, str]]) -> str:
    """An HTML legend: ``(colour, label, data-trial or "")`` per entry."""
    spans = "".join(
        f"<span{f' data-trial={chr(34)}{esc(t)}{chr(34)}' if t else ''}>"
        f'<i class="swatch" style="background:{c}"></i>{esc(label)}</span>'
        for c, label, t in items
    )
    return f'<div class="legend">{spans}</div>'


def curves_plot(data: ReportData) -> str:
    """Each trial's objective metric per epoch, a legend entry per trial; running trials dashed."""
    curves = curves_data(data)
    if not curves:
        return empty_note("no per-epoch metrics yet")
    states = {t.trial_id: t.state for t in data.trials}
    frame = Frame([e for _, pts in curves for e, _ in pts], [v for _, pts in curves for _, v in pts])
    epochs = sorted({e for _, pts in curves for e, _ in pts})
    marks = [(float(e), str(e)) for e in epochs] if len(epochs) <= 15 else None
    body = [frame.axes("epoch", data.metric, marks, integer_x=True)]
    markers = sum(len(pts) for _, pts in curves) <= MAX_MARKERS
    for trial_id, pts in curves:
        running = states.get(trial_id) == service_pb2.TRIAL_RUNNING
        path = " ".join(f"{frame.x(e):.1f},{frame.y(v):.1f}" for e, v in pts)
        body.append(
            f'<polyline class="curve" data-trial="{trial_id}" fill="none" stroke="{trial_colour(trial_id)}" '
            f'stroke-width="2"{" stroke-dasharray=" + chr(34) + "6 4" + chr(34) if running else ""} '
            f'points="{path}"><title>trial {trial_id}{" (running)" if running else ""}: '
            f"{esc(data.metric)} {esc(number(pts[-1][1]))} at epoch {pts[-1][0]}</title></polyline>"
        )
        for e, v in pts if markers else []:
            body.append(
                f'<circle data-trial="{trial_id}" cx="{frame.x(e):.1f}" cy="{frame.y(v):.1f}" r="3" '
                f'fill="{trial_colour(trial_id)}"><title>trial {trial_id}, epoch {e}: '
                f"{esc(data.metric)}={esc(number(v))}</title></circle>"
            )
    entries = [
        (
            trial_colour(i),
            f"trial {i}: {number(pts[-1][1])}{' (running)' if states.get(i) == service_pb2.TRIAL_RUNNING else ''}",
            str(i),
        )
        for i, pts in curves
    ]
    plot = svg("curves", "".join(body), f"learning curves: {data.metric} per epoch")
    return plot + f'<div id="curves-legend">{legend(entries)}</div>'


def history_plot(data: ReportData) -> str:
    """Each trial's objective by trial id, coloured by state, and the best value so far."""
    dots, best = history_data(data)
    if not dots:
        return empty_note("no trial has an objective value yet")
    frame = Frame([i for i, _, _ in dots], [v for _, v, _ in dots])
    ids = sorted({i for i, _, _ in dots})
    marks = [(float(i), str(i)) for i in ids] if len(ids) <= 30 else None
    body = [frame.axes("trial", data.metric, marks, integer_x=True)]
    if best:
        pts = [(frame.x(best[0][0]), frame.y(best[0][1]))]
        for (_, prev), (i, v) in zip(best, best[1:], strict=False):
            pts += [(frame.x(i), frame.y(prev)), (frame.x(i), frame.y(v))]
        pts.append((frame.x(ids[-1]), frame.y(best[-1][1])))
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        body.append(
            f'<polyline id="best-so-far" fill="none" stroke="{BEST_LINE}" stroke-width="2" points="{path}">'
            f"<title>best so far ({'max' if data.maximize else 'min'}): {esc(number(best[-1][1]))}</title></polyline>"
        )
    for i, v, state in dots:
        body.append(
            f'<circle class="dot" data-trial="{i}" cx="{frame.x(i):.1f}" cy="{frame.y(v):.1f}" r="5" '
            f'fill="{STATE_COLOURS.get(state, "#444")}"><title>trial {i} {esc(trial_state(state))}: '
            f"{esc(data.metric)}={esc(number(v))}</title></circle>"
        )
    seen = sorted({s for _, _, s in dots})
    items = [(STATE_COLOURS.get(s, "#444"), trial_state(s), "") for s in seen] + [(BEST_LINE, "best so far", "")]
    return svg("history", "".join(body), "optimisation history") + legend(items)


def _axis_marks(x: float, axis_name: str, ticks: list[tuple[float, str]], k: int, crowded: bool, y: object) -> str:
    """One parallel axis: its line, its (short, staggered when crowded) name and its tick labels."""
    top, bottom = M["top"] + 14, 380 - M["bottom"] - 24
    label_y = bottom + 20 + (16 if crowded and k % 2 else 0)
    parts = [
        f'<line class="axis" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}"/>',
        f'<text class="axis-name" x="{x:.1f}" y="{label_y}" text-anchor="middle">{esc(shorten(axis_name, 16))}'
        f"<title>{esc(axis_name)}</title></text>",
    ]
    for p, label in ticks:
        cls = ' class="inactive-tick"' if label == "inactive" else ""
        parts.append(f'<text{cls} x="{x + 5:.1f}" y="{y(p) + 4:.1f}" {HALO}>{esc(label)}</text>')  # type: ignore[operator]
    return "".join(parts)


def parallel_plot(data: ReportData) -> str:
    """Each searched parameter and the objective on parallel axes; a line per trial, coloured by objective."""
    axes, lines = parallel_data(data)
    if len(axes) < 2:
        return empty_note("nothing to compare yet: no trial has parameters and an objective value")
    top, bottom, right = M["top"] + 14, 380 - M["bottom"] - 24, 1000 - 190
    step = (right - M["left"]) / (len(axes) - 1)
    xs = [M["left"] + i * step for i in range(len(axes))]

    def y(p: float) -> float:
        return bottom - p * (bottom - top)

    scored = {t.trial_id: v for t in data.trials if (v := objective(t)) is not None}
    has_objective = bool(scored) and axes[-1].key == ""

    def rank(row: list[float | None]) -> float:  # the best trials are drawn last, on top
        last = row[-1]
        return -2.0 if last is None else (last if data.maximize else -last)

    body = []
    for trial_id, row in sorted(lines, key=lambda line: rank(line[1])) if has_objective else lines:
        pts = [(x, p) for x, p in zip(xs, row, strict=False) if p is not None]
        tone = scale_colour(row[-1]) if has_objective and row[-1] is not None else DOMINATED
        value = f": {data.metric}={number(scored[trial_id])}" if trial_id in scored else " (no objective value yet)"
        body.append(
            f'<polyline class="pc-line" data-trial="{trial_id}" data-points="{len(pts)}" fill="none" '
            f'stroke="{tone}" stroke-width="1.6" opacity="0.85" '
            f'points="{" ".join(f"{x:.1f},{y(p):.1f}" for x, p in pts)}"><title>trial {trial_id}{esc(value)}'
            "</title></polyline>"
        )
    crowded = step < 150
    body += [_axis_marks(x, a.name, a.ticks, k, crowded, y) for k, (x, a) in enumerate(zip(xs, axes, strict=False))]
    if has_objective:
        body.append(
            colour_bar(
                right + 110,
                top + 10,
                bottom - top - 20,
                min(scored.values()),
                max(scored.values()),
                data.metric,
                "pc-scale",
            )
        )
    return svg("parallel", "".join(body), "parallel coordinates")

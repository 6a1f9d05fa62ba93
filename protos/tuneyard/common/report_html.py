"""The study report as one self-contained HTML page: inline CSS, SVG and one small script, nothing fetched.

Drawn from :class:`~tuneyard.common.report_data.ReportData` alone, so the client's ``tuneyard report``
(through the SDK) and the server's dashboard (from its store) render the same page. Every string a
user chose (study name, configs, errors, device names) goes through :func:`html.escape`. The plots
live in :mod:`report_plots` and :mod:`report_slice`, the tables in :mod:`report_table`, the look in
:mod:`report_style`; this module draws the remaining plots and lays out the page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tuneyard.common.report_data import ReportData, importance_data, occupancy_data, pareto_data, trials_done
from tuneyard.common.report_plots import curves_plot, history_plot, legend, parallel_plot
from tuneyard.common.report_slice import contour_plot, slice_plots
from tuneyard.common.report_style import CSS, DOMINATED, FRONT, SCRIPT, STATE_COLOURS, trial_colour
from tuneyard.common.report_svg import Frame, M, empty_note, esc, svg
from tuneyard.common.report_table import best_summary, trials_table
from tuneyard.common.trials import number, trial_state
from tuneyard.v1 import service_pb2

__all__ = ["SECTIONS", "STATE_COLOURS", "build_html", "colour"]

colour = trial_colour  # a trial's colour in every plot
IMPORTANCE_NOTE = (
    "Each parameter's share of the objective's variance between groups of its values (eta squared over "
    "binned or categorical values; inactive counts as a value), normalised to sum to 1. With few trials "
    "it is a rough hint, not a measurement."
)


def importance_plot(data: ReportData) -> str:
    """Horizontal bars, most important first, with the method's note beside them."""
    shares = importance_data(data)
    if not shares or not any(shares.values()):
        return empty_note("not enough trials with differing objective values to estimate importance yet")
    items = sorted(shares.items(), key=lambda kv: -kv[1])
    row, left, w = 34, 220, 1000
    h = M["top"] + row * len(items) + 10
    body = []
    for k, (name, share) in enumerate(items):
        y = M["top"] + k * row
        width = share * (w - left - 90)
        body.append(f'<text x="{left - 8}" y="{y + row / 2 + 4:.1f}" text-anchor="end">{esc(name)}</text>')
        body.append(
            f'<rect class="bar" x="{left}" y="{y + 5}" width="{width:.1f}" height="{row - 10}" fill="#3558d4">'
            f"<title>{esc(name)}: {share:.3f}</title></rect>"
        )
        body.append(f'<text x="{left + width + 6:.1f}" y="{y + row / 2 + 4:.1f}">{share:.2f}</text>')
    plot = svg("importance", "".join(body), "parameter importance", w, h)
    return f'<div class="side"><div>{plot}</div><p class="note" id="importance-note">{esc(IMPORTANCE_NOTE)}</p></div>'


def pareto_plot(data: ReportData) -> str:
    """Both objectives of every trial; the front in purple (not a state's colour), joined by a line."""
    points = pareto_data(data)
    if not points:
        return empty_note("single objective: no Pareto front")
    (m1, max1), (m2, max2) = data.objectives[:2]
    frame = Frame([p[1] for p in points], [p[2] for p in points])
    body = [frame.axes(f"{m1} ({'max' if max1 else 'min'})", f"{m2} ({'max' if max2 else 'min'})")]
    front = sorted((x, yv) for _, x, yv, on in points if on)
    if len(front) > 1:
        path = " ".join(f"{frame.x(x):.1f},{frame.y(yv):.1f}" for x, yv in front)
        body.append(f'<polyline id="pareto-line" fill="none" stroke="{FRONT}" stroke-dasharray="4 3" points="{path}"/>')
    for i, x, yv, on in sorted(points, key=lambda p: p[3]):
        cls, fill = ("pareto-point", FRONT) if on else ("dominated-point", DOMINATED)
        tip = f"trial {i}{' (Pareto front)' if on else ''}: {m1}={number(x)}, {m2}={number(yv)}"
        body.append(
            f'<circle class="{cls}" data-trial="{i}" cx="{frame.x(x):.1f}" cy="{frame.y(yv):.1f}" r="6" '
            f'fill="{fill}" stroke="#fff"><title>{esc(tip)}</title></circle>'
        )
    items = [(FRONT, "on the Pareto front", ""), (DOMINATED, "dominated", "")]
    return svg("pareto", "".join(body), "Pareto front") + legend(items)


def _lanes(bars: Sequence[tuple[int, float, float, int]]) -> dict[int, int]:
    """A lane per trial so that trials sharing a device at the same time (packed slots) don't overlap."""
    ends: list[float] = []
    lanes = {}
    for trial_id, start, end, _ in sorted(bars, key=lambda b: b[1]):
        lane = next((k for k, e in enumerate(ends) if e <= start), len(ends))
        ends[lane : lane + 1] = [end]
        lanes[trial_id] = lane
    return lanes


def occupancy_plot(data: ReportData) -> str:
    """Per device, a bar per trial from its start to its end, coloured by state."""
    _, rows = occupancy_data(data)
    if not rows:
        return empty_note("no trial has started yet")
    left, h = 130, max(200, 70 * len(rows) + M["top"] + M["bottom"])
    frame = Frame([0.0] + [b[2] for _, bars in rows for b in bars], [0.0, 1.0], h=h, left=left)
    frame.x0 = 0.0
    band = (frame.bottom - M["top"]) / len(rows)
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
                f'width="{max(x1 - x0, 1):.1f}" height="{lane_h - 2:.1f}" fill="{fill}" stroke="#fff" '
                f'stroke-width="0.5"><title>trial {trial_id} {esc(trial_state(state))}: '
                f"{start:.1f}s to {end:.1f}s</title></rect>"
            )
    states = sorted({b[3] for _, bars in rows for b in bars})
    return legend([(STATE_COLOURS.get(s, "#444"), trial_state(s), "") for s in states]) + svg(
        "occupancy", "".join(body), "device occupancy", h=h
    )


SECTIONS: tuple[tuple[str, str, Callable[[ReportData], str]], ...] = (
    ("best", "Best trial", best_summary),
    ("learning-curves", "Learning curves", curves_plot),
    ("history", "Optimisation history", history_plot),
    ("parallel-coordinates", "Parallel coordinates", parallel_plot),
    ("slice", "Slice plots", slice_plots),
    ("contour", "Objective over the two most important parameters", contour_plot),
    ("importance", "Parameter importance", importance_plot),
    ("trials", "Trials", trials_table),
    ("pareto", "Pareto front", pareto_plot),
    ("occupancy", "Device occupancy", occupancy_plot),
)


def _header(data: ReportData) -> str:
    study, name = data.study, data.spec.name or "unnamed"
    goals = ", ".join(f"{'maximise' if mx else 'minimise'} {m}" for m, mx in data.objectives)
    state = service_pb2.StudyState.Name(study.state).removeprefix("STUDY_")
    meta = (
        f'<span class="badge {esc(state)}">{esc(state)}</span> <code>{esc(study.study_id)}</code> &middot; '
        f"{esc(trials_done(study))} trials finished &middot; {esc(goals)}"
    )
    if study.epochs_spent:
        meta += f" &middot; {study.epochs_spent} epochs trained"
    error = f'<p class="note">error: {esc(study.error)}</p>' if study.error else ""
    return f'<header class="top"><h1>{esc(name)}</h1><span class="meta">{meta}</span></header>{error}'


def build_html(data: ReportData) -> str:
    """The whole report: one page, inline CSS, SVG and script, nothing fetched from anywhere."""
    sections = "".join(
        f'<section id="{sid}"><h2>{esc(title)}</h2>{draw(data)}</section>' for sid, title, draw in SECTIONS
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>tuneyard report: {esc(data.spec.name or 'unnamed')}</title>"
        f"<style>{CSS}</style></head><body>{_header(data)}<main>{sections}</main>{SCRIPT}</body></html>\n"
    )

"""Slice plots (the objective against each parameter) and a binned heat map of the objective over the
two most important parameters, as Optuna's slice and contour plots show them.

Both place a parameter's values with the parallel coordinates' axis (:func:`report_data.param_axis`):
log ranges in log space, categories evenly, and trials that did not use a conditional parameter at its
``inactive`` tick. The heat map's cells hold the mean objective of the trials that fell in them (no
interpolation: an empty cell stays empty), on the same colour scale as the parallel coordinates.
"""

from __future__ import annotations

from typing import Any

from tuneyard.common.report_data import INACTIVE, INACTIVE_GAP, Axis, ReportData, importance_data, objective, param_axis
from tuneyard.common.report_style import scale_colour, trial_colour
from tuneyard.common.report_svg import Frame, M, colour_bar, empty_note, esc, shorten, svg
from tuneyard.common.trials import number

__all__ = ["contour_plot", "ranked_parameters", "slice_plots"]

SW, SH = 480, 300  # one slice plot
CW, CH = 1000, 440  # the heat map
BINS = 8


def ranked_parameters(data: ReportData) -> list[str]:
    """Searched parameters, most important first (search-space order breaks ties)."""
    shares = importance_data(data)
    order = [p.name for p in data.spec.search_space]
    return sorted(order, key=lambda n: (-shares.get(n, 0.0), order.index(n)))


def _scored(data: ReportData) -> list[tuple[int, dict[str, Any], float]]:
    return [(t.trial_id, data.config(t), v) for t in data.trials if (v := objective(t)) is not None]


def _axes(data: ReportData, scored: list[tuple[int, dict[str, Any], float]]) -> dict[str, Axis]:
    params = {p.name: p for p in data.spec.search_space}
    configs = [c for _, c, _ in scored]
    return {n: a for n in ranked_parameters(data) if (a := param_axis(data, params[n], configs)) is not None}


def slice_plots(data: ReportData) -> str:
    """One small plot per parameter (most important first): objective by value, a dot per trial."""
    scored = _scored(data)
    axes = _axes(data, scored)
    if not axes:
        return empty_note("no trial has an objective value yet")
    plots = []
    for k, (name, axis) in enumerate(axes.items()):
        frame = Frame([0.0, 1.0], [v for *_, v in scored], w=SW, h=SH)
        body = [frame.axes(shorten(axis.name, 40), data.metric, [(p, lab) for p, lab in axis.ticks])]
        for trial_id, config, value in scored:
            p = axis.position(config.get(name))
            if p is not None:
                body.append(
                    f'<circle data-trial="{trial_id}" cx="{frame.x(p):.1f}" cy="{frame.y(value):.1f}" r="5" '
                    f'fill="{trial_colour(trial_id)}" opacity="0.85"><title>trial {trial_id}: '
                    f"{esc(name)}={esc(number(config.get(name, INACTIVE)))}, "
                    f"{esc(data.metric)}={esc(number(value))}</title></circle>"
                )
        plots.append(svg(f"slice-{k}", "".join(body), f"{data.metric} by {name}", SW, SH))
    return f'<div class="grid-plots">{"".join(plots)}</div>'


def _cells(positions: list[float], inactive: bool) -> tuple[list[float], Any]:
    """Cell centres on a [0, 1] axis and a function from a position to its cell's index."""
    uniq = sorted(set(positions))
    if len(uniq) <= BINS:
        return uniq, uniq.index
    lo = INACTIVE_GAP if inactive else 0.0
    head = [0.0] if inactive else []
    centres = head + [lo + (k + 0.5) * (1 - lo) / BINS for k in range(BINS)]

    def index(p: float) -> int:
        if inactive and p == 0.0:
            return 0
        return len(head) + min(int((p - lo) / (1 - lo) * BINS), BINS - 1)

    return centres, index


def _edges(centres: list[float]) -> list[float]:
    """Cell boundaries halfway between centres, the outer ones as far out as the nearest inner gap."""
    if len(centres) == 1:
        return [centres[0] - 0.5, centres[0] + 0.5]
    mids = [(a + b) / 2 for a, b in zip(centres, centres[1:], strict=False)]
    return [2 * centres[0] - mids[0], *mids, 2 * centres[-1] - mids[-1]]


def _binned(
    scored: list[tuple[int, dict[str, Any], float]], ax: Axis, ay: Axis
) -> tuple[list[float], list[float], dict[tuple[int, int], list[float]], list[tuple[int, float, float, float]]]:
    """Cell edges on both axes, each cell's objective values, and each trial's point."""
    points = []
    for trial_id, config, value in scored:
        px, py = ax.position(config.get(ax.key)), ay.position(config.get(ay.key))
        if px is not None and py is not None:
            points.append((trial_id, px, py, value))
    has_inactive = [any(label == INACTIVE for _, label in a.ticks) for a in (ax, ay)]
    cx, ix = _cells([p[1] for p in points], has_inactive[0])
    cy, iy = _cells([p[2] for p in points], has_inactive[1])
    cells: dict[tuple[int, int], list[float]] = {}
    for _, px, py, value in points:
        cells.setdefault((ix(px), iy(py)), []).append(value)
    return _edges(cx), _edges(cy), cells, points


def contour_plot(data: ReportData) -> str:
    """A heat map of the mean objective over the two most important parameters, trials as dots."""
    scored = _scored(data)
    axes = list(_axes(data, scored).values())
    if len(axes) < 2:
        return empty_note("needs two searched parameters and trials with objective values")
    ax, ay = axes[:2]
    ex, ey, cells, points = _binned(scored, ax, ay)
    if not points:
        return empty_note("no trial has values for both of the two most important parameters")
    values = [v for *_, v in scored]
    lo, hi = min(values), max(values)
    frame = Frame([min(ex), max(ex)], [min(ey), max(ey)], w=CW - 110, h=CH)
    body = [frame.axes(ax.name, "", [(p, lab) for p, lab in ax.ticks], yticks=False)]
    for (i, j), cell in sorted(cells.items()):
        mean = sum(cell) / len(cell)
        x0, x1, y0, y1 = frame.x(ex[i]), frame.x(ex[i + 1]), frame.y(ey[j + 1]), frame.y(ey[j])
        body.append(
            f'<rect class="cell" x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" '
            f'fill="{scale_colour((mean - lo) / (hi - lo) if hi > lo else 0.5)}" stroke="#fff">'
            f"<title>mean {esc(data.metric)} {esc(number(mean))} over {len(cell)} trial(s)</title></rect>"
        )
    for p, label in ay.ticks:
        body.append(f'<text x="{M["left"] - 6}" y="{frame.y(p) + 4:.1f}" text-anchor="end">{esc(label)}</text>')
    body.append(f'<text x="{M["left"] + 6}" y="{M["top"] - 6}">{esc(ay.name)} (y)</text>')
    for trial_id, px, py, value in points:
        body.append(
            f'<circle data-trial="{trial_id}" cx="{frame.x(px):.1f}" cy="{frame.y(py):.1f}" r="4" fill="#fff" '
            f'stroke="#1d2330" stroke-width="1.2"><title>trial {trial_id}: {esc(data.metric)}={esc(number(value))}'
            "</title></circle>"
        )
    body.append(colour_bar(CW - 80, M["top"] + 20, CH - M["top"] - M["bottom"] - 40, lo, hi, data.metric, "ct-scale"))
    return svg("contour", "".join(body), f"{data.metric} over {ax.key} and {ay.key}", CW, CH)

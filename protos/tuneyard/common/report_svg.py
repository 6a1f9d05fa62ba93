"""SVG building blocks of the report: a frame that maps data onto a plot area, round ticks, a colour bar.

Every plot is an ``<svg viewBox=...>`` without a fixed width, so CSS (``width:100%``) stretches it over
the page's width; coordinates are in the viewBox's units.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from tuneyard.common.report_style import scale_colour
from tuneyard.common.trials import number

__all__ = ["Frame", "colour_bar", "empty_note", "esc", "shorten", "svg", "ticks"]

W, H = 1000, 380  # a wide plot, in viewBox units
M = {"left": 74, "right": 24, "top": 20, "bottom": 52}


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def shorten(name: str, most: int = 18) -> str:
    """A parameter name short enough for an axis: ``optimizer.momentum`` -> ``momentum`` when long."""
    if len(name) <= most:
        return name
    tail = name.rsplit(".", 1)[-1]
    return tail if len(tail) <= most else tail[: most - 1] + "\u2026"


def ticks(lo: float, hi: float, count: int = 8, integer: bool = False) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) inside ``[lo, hi]``."""
    raw = (hi - lo) / (count - 1) or 1.0
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(lo / step)
    return [float(f"{k * step:.6g}") for k in range(first, math.floor(hi / step) + 1)]


def _padded(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = (hi - lo) * 0.05 or (abs(lo) * 0.05 or 0.5)
    return lo - pad, hi + pad


def _spaced(marks: Sequence[tuple[float, str]], char: float = 7.0) -> list[tuple[float, str]]:
    """The tick labels that do not overlap the one kept before them (x positions in viewBox units)."""
    kept: list[tuple[float, str]] = []
    for x, label in sorted(marks):
        if not kept or x - kept[-1][0] >= (len(kept[-1][1]) + len(label)) * char / 2 + 6:
            kept.append((x, label))
    return kept


class Frame:
    """Maps data coordinates onto a ``w`` x ``h`` plot area and draws axes, grid lines and ticks."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], w: int = W, h: int = H, left: int = M["left"]) -> None:
        self.x0, self.x1 = _padded(xs)
        self.y0, self.y1 = _padded(ys)
        self.w, self.h, self.left = w, h, left
        self.right = w - M["right"]
        self.bottom = h - M["bottom"]

    def x(self, v: float) -> float:
        return self.left + (v - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def y(self, v: float) -> float:
        return self.bottom - (v - self.y0) / (self.y1 - self.y0) * (self.bottom - M["top"])

    def axes(
        self,
        xlabel: str,
        ylabel: str,
        xticks: Sequence[tuple[float, str]] | None = None,
        yticks: bool = True,
        integer_x: bool = False,
    ) -> str:
        """Both axes with labels; ``xticks`` as ``(value, label)`` when not the round defaults."""
        b, r, top = self.bottom, self.right, M["top"]
        parts = [f'<line class="axis" x1="{self.left}" y1="{b}" x2="{r}" y2="{b}"/>']
        for v in ticks(self.y0, self.y1) if yticks else []:
            y = self.y(v)
            parts.append(f'<line class="grid" x1="{self.left}" y1="{y:.1f}" x2="{r}" y2="{y:.1f}"/>')
            parts.append(f'<text x="{self.left - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(number(v))}</text>')
        marks = xticks if xticks is not None else [(v, number(v)) for v in ticks(self.x0, self.x1, integer=integer_x)]
        for v, label in _spaced([(self.x(v), label) for v, label in marks]):
            parts.append(f'<text x="{v:.1f}" y="{b + 17}" text-anchor="middle">{esc(label)}</text>')
        parts.append(f'<line class="axis" x1="{self.left}" y1="{top}" x2="{self.left}" y2="{b}"/>')
        parts.append(f'<text x="{(self.left + r) / 2}" y="{self.h - 12}" text-anchor="middle">{esc(xlabel)}</text>')
        mid = (top + b) / 2
        parts.append(
            f'<text x="14" y="{mid}" transform="rotate(-90 14 {mid})" text-anchor="middle">{esc(ylabel)}</text>'
        )
        return "".join(parts)


def svg(plot_id: str, body: str, title: str, w: int = W, h: int = H) -> str:
    """A plot that stretches over its container's width (viewBox, no fixed size)."""
    return (
        f'<svg id="{esc(plot_id)}-svg" class="plot" viewBox="0 0 {w} {h}" preserveAspectRatio="xMidYMid meet" '
        f'role="img" aria-label="{esc(title)}">{body}</svg>'
    )


def empty_note(message: str) -> str:
    """What a plot with nothing to draw shows instead: a line of text, no empty box."""
    return f'<p class="note empty">{esc(message)}</p>'


def colour_bar(x: float, y: float, height: float, lo: float, hi: float, label: str, gid: str) -> str:
    """A vertical legend of the objective's colour scale, from ``lo`` (bottom) to ``hi`` (top)."""
    stops = "".join(f'<stop offset="{k / 8:.3f}" stop-color="{scale_colour(1 - k / 8)}"/>' for k in range(9))
    return (
        f'<g class="colour-bar"><defs><linearGradient id="{gid}" x1="0" y1="0" x2="0" y2="1">{stops}'
        f'</linearGradient></defs><rect x="{x}" y="{y}" width="14" height="{height}" fill="url(#{gid})"/>'
        f'<text x="{x + 20}" y="{y + 10}">{esc(number(hi))}</text>'
        f'<text x="{x + 20}" y="{y + height}">{esc(number(lo))}</text>'
        f'<text x="{x + 7}" y="{y - 6}" text-anchor="middle">{esc(shorten(label, 14))}</text></g>'
    )

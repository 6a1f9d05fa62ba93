"""``tuneyard report``: one study as a self-contained HTML page (inline CSS and SVG, no network).

Everything comes from the public API through the SDK (:meth:`Client.get_study`,
:meth:`Client.list_trials`); the page itself is drawn by :mod:`tuneyard.common.report_html`, which
the server's dashboard shares. The optional ``--png`` output (matplotlib, extra ``[report]``) draws
the very same numbers (:mod:`tuneyard.common.report_data`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneyard.client.sdk import Client
from tuneyard.common.report_data import (
    ReportData,
    curves_data,
    history_data,
    importance_data,
    objectives_of,
    occupancy_data,
    parallel_data,
    pareto_data,
)
from tuneyard.common.report_html import STATE_COLOURS, build_html, colour

__all__ = ["MissingExtra", "PLOTS", "collect", "write_pngs", "write_report"]

REPORT_EXTRA = "--png needs matplotlib: pip install 'tuneyard[report]'"


class MissingExtra(RuntimeError):
    """An optional dependency (matplotlib for ``--png``) is not installed."""


def collect(client: Client, study_id: str) -> ReportData:
    """Fetch one study and all its trials (with per-epoch metrics) through the SDK."""
    study = client.get_study(study_id)
    trials = sorted(client.list_trials(study_id), key=lambda t: t.trial_id)
    return ReportData(study=study, trials=trials, objectives=objectives_of(study.spec))


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
        ax.broken_barh(
            [(s, max(e - s, 0.01)) for _, s, e, _ in bars],
            (k - 0.4, 0.8),
            facecolors=[STATE_COLOURS.get(st, "#444") for *_, st in bars],
        )
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

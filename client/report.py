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
    objective,
    objectives_of,
    occupancy_data,
    parallel_data,
    pareto_data,
)
from tuneyard.common.report_html import build_html
from tuneyard.common.report_style import DOMINATED, FRONT, STATE_COLOURS, trial_colour
from tuneyard.common.trials import trial_state

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
        fig, ax = plt.subplots(figsize=(10, 4.5))
        if draw(data, ax) is False:
            plt.close(fig)
            continue
        fig.tight_layout()
        path = directory / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _integer_ticks(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _png_curves(data: ReportData, ax: Any) -> None:
    curves = curves_data(data)
    for trial_id, pts in curves:
        ax.plot(*zip(*pts, strict=False), marker="o", ms=3, label=f"trial {trial_id}", color=trial_colour(trial_id))
    _integer_ticks(ax.xaxis)
    ax.set(xlabel="epoch", ylabel=data.metric, title="learning curves")
    if curves:
        ax.legend(fontsize=7, ncol=max(1, len(curves) // 12 + 1), loc="upper left", bbox_to_anchor=(1.01, 1))


def _png_history(data: ReportData, ax: Any) -> None:
    dots, best = history_data(data)
    for state in sorted({s for *_, s in dots}):
        mine = [(i, v) for i, v, s in dots if s == state]
        ax.scatter(*zip(*mine, strict=False), color=STATE_COLOURS.get(state, "#444"), label=trial_state(state))
    if best:
        ax.step(*zip(*best, strict=False), where="post", color="#1d2330", label="best so far")
    _integer_ticks(ax.xaxis)
    ax.set(xlabel="trial", ylabel=data.metric, title="optimisation history")
    if dots:
        ax.legend(fontsize=8)


def _png_parallel(data: ReportData, ax: Any) -> None:
    """Each axis labelled with its own values (not 0-1); lines coloured by the objective."""
    import matplotlib as mpl

    axes, lines = parallel_data(data)
    scored = bool(axes) and axes[-1].key == ""
    cmap = mpl.colormaps["viridis"]
    for _, row in sorted(lines, key=lambda line: -2.0 if line[1][-1] is None else line[1][-1]):
        pts = [(k, p) for k, p in enumerate(row) if p is not None]
        tone = cmap(row[-1]) if scored and row[-1] is not None else "#b0b0b0"
        if pts:
            ax.plot(*zip(*pts, strict=False), color=tone, alpha=0.85, lw=1.2)
    for k, axis in enumerate(axes):
        ax.axvline(k, color="#555", lw=1)
        for p, label in axis.ticks:
            ax.text(k + 0.03, p, label, fontsize=7, va="center", bbox={"fc": "white", "ec": "none", "pad": 0.5})
    ax.set_xticks(range(len(axes)), [a.name for a in axes], rotation=15, fontsize=8)
    ax.set_yticks([])
    ax.set(title="parallel coordinates", ylim=(-0.05, 1.05))
    if scored:
        values = [v for t in data.trials if (v := objective(t)) is not None]
        norm = mpl.colors.Normalize(min(values), max(values))
        ax.figure.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=data.metric)


def _png_importance(data: ReportData, ax: Any) -> None:
    items = sorted(importance_data(data).items(), key=lambda kv: kv[1])
    bars = ax.barh([k for k, _ in items], [v for _, v in items], color="#3558d4")
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set(xlabel="share of objective variance", title="parameter importance", xlim=(0, 1.1))


def _png_pareto(data: ReportData, ax: Any) -> bool | None:
    points = pareto_data(data)
    if not points:
        return False
    for on, label, tone in ((False, "dominated", DOMINATED), (True, "Pareto front", FRONT)):
        mine = [(x, y) for _, x, y, o in points if o == on]
        if mine:
            ax.scatter(*zip(*mine, strict=False), color=tone, label=label, zorder=3 if on else 2)
    ax.set(xlabel=data.objectives[0][0], ylabel=data.objectives[1][0], title="Pareto front")
    ax.legend(fontsize=8)
    return None


def _png_occupancy(data: ReportData, ax: Any) -> None:
    _, rows = occupancy_data(data)
    for k, (_device, bars) in enumerate(rows):
        ax.broken_barh(
            [(s, max(e - s, 0.01)) for _, s, e, _ in bars],
            (k - 0.4, 0.8),
            facecolors=[STATE_COLOURS.get(st, "#444") for *_, st in bars],
            edgecolors="white",
            linewidth=0.5,
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

"""The report's tables: the best trial's summary (configuration, objectives, test metrics), the running
trials' current values, and the sortable, filterable trial table with one column per parameter.

The table is plain HTML; sorting and filtering are the page's small inline script
(:data:`~tuneyard.common.report_style.SCRIPT`), which reads each cell's ``data-v`` (its raw number) so
that numbers sort as numbers.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from tuneyard.common.report_data import ReportData, duration, objective, pareto_data
from tuneyard.common.report_style import trial_colour
from tuneyard.common.report_svg import esc
from tuneyard.common.trials import last_line, number, trial_label, trial_state
from tuneyard.v1 import service_pb2

__all__ = ["best_summary", "full_config", "trials_table"]

SECTIONS = ("dataset", "model", "task", "training", "trainable")


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    """Dotted keys as the search space names them: a component's ``options`` are its own keys."""
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(prefix if key == "options" else f"{prefix}.{key}", inner, out)
    else:
        out[prefix] = int(value) if isinstance(value, float) and value.is_integer() else value


def full_config(data: ReportData, trial: service_pb2.Trial) -> list[tuple[str, Any, bool]]:
    """``(key, value, searched)``: the spec's settings with the trial's searched values in their place."""
    flat: dict[str, Any] = {}
    for name in SECTIONS:
        if data.spec.HasField(name):
            section = json_format.MessageToDict(getattr(data.spec, name), preserving_proto_field_name=True)
            if name != "training":
                _flatten(name, section, flat)
                continue
            for key, value in section.items():  # training.optimizer.lr is searched as optimizer.lr
                _flatten(key if isinstance(value, dict) else f"training.{key}", value, flat)
    searched = data.config(trial)
    flat.update(searched)
    return [(k, flat[k], k in searched) for k in sorted(flat)]


def _dl(rows: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in rows) + "</dl>"


def _best_trial(data: ReportData) -> service_pb2.Trial | None:
    if data.study.HasField("best_trial") and data.study.best_trial.trial_id:
        found = [t for t in data.trials if t.trial_id == data.study.best_trial.trial_id]
        return found[0] if found else data.study.best_trial
    done = [t for t in data.trials if t.state == service_pb2.TRIAL_COMPLETED and objective(t) is not None]
    pick = max if data.maximize else min
    return pick(done, key=lambda t: objective(t) or 0.0) if done else None


def _running(data: ReportData) -> str:
    """Each running trial's latest value of the objective metric, with its epoch."""
    epochs = data.spec.training.epochs
    items = []
    for t in data.trials:
        if t.state != service_pb2.TRIAL_RUNNING:
            continue
        last = next((m for m in reversed(t.metrics) if data.metric in m.values), None)
        now = f"{data.metric} {number(last.values[data.metric])} at epoch {last.epoch}" if last else "no epoch yet"
        of = f" of {epochs}" if epochs and last else ""
        items.append(
            f'<li data-trial="{t.trial_id}"><i class="swatch" style="background:{trial_colour(t.trial_id)}"></i>'
            f"trial {t.trial_id} on {esc(t.device or '?')}: {esc(now)}{of}</li>"
        )
    return f'<div id="running"><h3>Running now</h3><ul>{"".join(items)}</ul></div>' if items else ""


def _pareto_summary(data: ReportData) -> str:
    front = sorted((p for p in pareto_data(data) if p[3]), key=lambda p: p[1], reverse=data.objectives[0][1])
    (m1, _), (m2, _) = data.objectives[:2]
    rows = "".join(f"<tr><td>{i}</td><td>{esc(number(x))}</td><td>{esc(number(y))}</td></tr>" for i, x, y, _ in front)
    return (
        f'<div><div class="big">{len(front)} <small>trials on the Pareto front</small></div>'
        f"<table><thead><tr><th>trial</th><th>{esc(m1)}</th><th>{esc(m2)}</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div>"
    )


def best_summary(data: ReportData) -> str:
    """The best trial at a glance: its objective(s), the test metrics, its full configuration."""
    best = _best_trial(data)
    if best is None:
        return empty_or(_running(data), "no completed trial yet")
    values = list(best.objective_values) or [objective(best) or 0.0]
    goals = [(m, v) for (m, _), v in zip(data.objectives, values, strict=False)]
    head = "".join(f'<div class="big">{esc(number(v))} <small>{esc(m)}</small></div>' for m, v in goals)
    seconds_ = duration(best)
    facts = [("trial", str(best.trial_id)), ("state", trial_label(best)), ("epochs", str(best.epochs_completed))]
    facts += [("device", best.device)] if best.device else []
    facts += [("duration", f"{seconds_:.1f}s")] if seconds_ is not None else []
    test = sorted(data.study.test_metrics.items())
    tests = _dl([(k, number(v)) for k, v in test]) if test else '<p class="note">no test evaluation yet</p>'
    config = "".join(
        f"<tr><td>{esc(k)}</td><td>{f'<strong>{esc(number(v))}</strong>' if s else esc(number(v))}</td></tr>"
        for k, v, s in full_config(data, best)
    )
    pareto = _pareto_summary(data) if len(data.objectives) >= 2 else ""
    by = f" (by {esc(data.metric)})" if pareto else ""
    return (
        f'<div class="cards"><div id="best-trial"><h3>Best trial {best.trial_id}{by}</h3>{head}{_dl(facts)}</div>'
        f'<div id="test-metrics"><h3>Test metrics (best checkpoint)</h3>{tests}</div>'
        f'<div id="best-config"><h3>Configuration</h3><p class="note">searched values in bold</p>'
        f"<table><tbody>{config}</tbody></table></div>{pareto}</div>{_running(data)}"
    )


def empty_or(html_: str, message: str) -> str:
    return html_ or f'<p class="note empty">{esc(message)}</p>'


def _cell(value: Any, numeric: bool = False) -> str:
    if value is None or value == "":
        return "<td></td>"
    if numeric and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num" data-v="{value!r}">{esc(number(value))}</td>'
    return f"<td>{esc(value)}</td>"


def _row(data: ReportData, t: service_pb2.Trial, params: list[str]) -> str:
    state = trial_label(t)
    if t.error and t.state in (service_pb2.TRIAL_FAILED, service_pb2.TRIAL_INFEASIBLE):
        state += f": {last_line(t.error)}"
    values: list[float | None] = list(t.objective_values) or [objective(t)]
    values += [None] * (max(1, len(data.objectives)) - len(values))
    config = data.config(t)
    swatch = f'<i class="swatch" style="background:{trial_colour(t.trial_id)}"></i>'
    cells = [f'<td class="num" data-v="{t.trial_id}">{swatch}{t.trial_id}</td>']
    cells.append(f'<td><span class="badge {trial_state(t.state)}">{esc(state)}</span></td>')
    cells += [_cell(config[p], True) if p in config else '<td class="inactive">inactive</td>' for p in params]
    last = next((m for m in reversed(t.metrics) if data.metric in m.values), None)
    if t.state == service_pb2.TRIAL_RUNNING and values[0] is None and last is not None:
        now = last.values[data.metric]  # the running trial's current value, with its epoch
        cells.append(f'<td class="num running-value" data-v="{now!r}">{esc(number(now))} (epoch {last.epoch})</td>')
        values = values[1:]
    cells += [_cell(v, True) for v in values]
    seconds_ = duration(t)
    cells += [_cell(t.epochs_completed, True), _cell(t.device)]
    cells.append(_cell(None) if seconds_ is None else f'<td class="num" data-v="{seconds_:.3f}">{seconds_:.1f}s</td>')
    return f'<tr id="trial-{t.trial_id}" data-trial="{t.trial_id}">{"".join(cells)}</tr>'


def trials_table(data: ReportData) -> str:
    """Every trial, one column per searched parameter and per objective; sort by a click, filter by text."""
    params = [p.name for p in data.spec.search_space]
    objectives = [m for m, _ in data.objectives] or ["objective"]
    heads = [("trial", True), ("state", False), *((p, True) for p in params), *((m, True) for m in objectives)]
    heads += [("epochs", True), ("device", False), ("duration", True)]
    head = "".join(
        f'<th{" class=" + chr(34) + "num" + chr(34) if n else ""} data-col="{esc(h)}">{esc(h)}</th>' for h, n in heads
    )
    rows = "".join(_row(data, t, params) for t in data.trials)
    tools = (
        '<div class="tools"><input id="trial-filter" type="search" placeholder="filter: e.g. COMPLETED adam" '
        f'aria-label="filter trials"><span id="trial-count" class="note">{len(data.trials)} trials</span></div>'
    )
    return (
        f'{tools}<div class="table-wrap"><table id="trial-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )

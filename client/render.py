"""Plain-text and rich-table renderings shared by the CLI commands and progress displays.

Kept apart from the CLI so every command formats a trial, a config or a
result the same way, and so the formatting is testable without a terminal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from tuneyard.client.results import RunResult, objective_values, objectives_of
from tuneyard.client.specfile import config_to_dict
from tuneyard.common.report_data import FINISHED, finished_count, trials_done
from tuneyard.common.trials import last_line, number, trial_label
from tuneyard.v1 import service_pb2, spec_pb2

STDERR_LINES = 50  # the server keeps this many; a longer tail is cut to it here as well
# Per-epoch columns of `tuneyard trial` beside the objectives (all metrics are in "final metrics").
_CURVE_METRICS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr")
_STATE_STYLE: dict[int, str] = {
    service_pb2.TRIAL_COMPLETED: "green",
    service_pb2.TRIAL_FAILED: "red",
    service_pb2.TRIAL_INFEASIBLE: "yellow",
}
_REASONS = {
    "crash": "crash: the worker process died",
    "timeout": "timeout: the worker stopped sending heartbeats",
    "oom": "oom: out of GPU memory",
    "error": "error: the training code raised",
}


def study_state(state: int) -> str:
    """``STUDY_COMPLETED`` -> ``COMPLETED``."""
    return service_pb2.StudyState.Name(state).removeprefix("STUDY_")


def state_style(state: int) -> str:
    """The rich style of a trial state: green completed, red failed, yellow infeasible."""
    return _STATE_STYLE.get(state, "")


def exit_text(trial: service_pb2.Trial) -> str:
    """How the trial's worker process ended: ``exit code -9 (SIGKILL)``, ``SIGKILL``, or ``""``."""
    if trial.HasField("exit_code"):
        text = f"exit code {trial.exit_code}"
        return f"{text} ({trial.exit_signal})" if trial.exit_signal else text
    return trial.exit_signal


def _why(trial: service_pb2.Trial) -> str:
    """``error: <last line>`` (``reason:`` for an infeasible trial), else the stderr tail's last line."""
    if trial.error:
        label = "reason" if trial.state == service_pb2.TRIAL_INFEASIBLE else "error"
        return f"{label}: {last_line(trial.error)}"
    if trial.stderr_tail and trial.state == service_pb2.TRIAL_FAILED:
        return f"stderr: {last_line(trial.stderr_tail)}"
    return ""


def metrics_text(metrics: Mapping[str, float], first: str = "") -> str:
    """``val_accuracy=0.9611 train_loss=0.1234``, the objective metric ``first``."""
    keys = sorted(metrics, key=lambda k: (k != first, k))
    return " ".join(f"{k}={number(metrics[k])}" for k in keys)


def objective_text(trial: service_pb2.Trial, spec: spec_pb2.StudySpec) -> str:
    """Each objective by name: ``val_accuracy=0.9519`` or ``val_accuracy=0.9519 params=1.2e+04``."""
    return " ".join(f"{name}={_value(v)}" for name, v in objective_values(trial, spec).items())


def _value(value: float) -> str:
    """4 decimals for a score like 0.9519; 4 significant digits for a count or a large loss."""
    return f"{value:.4f}" if abs(value) < 1000 else number(value)


def objective_names(spec: spec_pb2.StudySpec) -> list[str]:
    return [o.metric for o in objectives_of(spec)] or ["objective"]


def compact_config(config: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={number(v)}" for k, v in config.items())


def _seconds(trial: service_pb2.Trial) -> float | None:
    if not (trial.HasField("start_time") and trial.HasField("end_time")):
        return None
    start, end = trial.start_time, trial.end_time
    return (end.seconds - start.seconds) + (end.nanos - start.nanos) / 1e9


def trial_line(trial: service_pb2.Trial, spec: spec_pb2.StudySpec) -> str:
    """One line for a finished trial: state and cause, exit, objective, time, device, config, error."""
    parts = [f"trial {trial.trial_id} {trial_label(trial)}", exit_text(trial)]
    parts.append(objective_text(trial, spec))
    seconds = _seconds(trial)
    if seconds is not None:
        parts.append(f"{seconds:.1f}s")
    if trial.device:
        parts.append(f"[{trial.device}]")
    parts.append(compact_config(config_to_dict(trial.config, spec)))
    parts.append(_why(trial))
    return "  ".join(p for p in parts if p)


def event_line(event: service_pb2.StudyEvent, spec: spec_pb2.StudySpec) -> str:
    """One line per study event, for ``tuneyard watch`` and plain (non-TTY) progress."""
    kind = event.WhichOneof("event")
    head = f"#{event.sequence}"
    if kind == "study_state":
        change = event.study_state
        text = f"{head} study {study_state(change.state)}"
        if change.error:
            text += f": {change.error}"
        if change.test_metrics:
            text += f"  {metrics_text(change.test_metrics)}"
        return text
    if kind == "trial_started":
        trial = event.trial_started.trial
        where = f" on {trial.device}" if trial.device else ""
        config = compact_config(config_to_dict(trial.config, spec))
        return f"{head} trial {trial.trial_id} started{where}  {config}".rstrip()
    if kind == "trial_progress":
        progress = event.trial_progress
        metrics = metrics_text(progress.metrics, objective_names(spec)[0])
        return f"{head} trial {progress.trial_id} epoch {progress.epoch}  {metrics}"
    if kind == "trial_exploited":
        exploit = event.trial_exploited
        config = compact_config(config_to_dict(exploit.change.config, spec))
        source, epoch = exploit.change.source_trial_id, exploit.change.epoch
        return f"{head} trial {exploit.trial_id} goes on from trial {source}'s epoch {epoch}  {config}".rstrip()
    if kind == "trial_finished":
        return f"{head} {trial_line(event.trial_finished.trial, spec)}"
    if kind == "best_trial_changed":
        trial = event.best_trial_changed.trial
        return f"{head} best so far: {best_text(trial, spec)}"
    return f"{head} (unknown event)"


def best_text(trial: service_pb2.Trial, spec: spec_pb2.StudySpec) -> str:
    """``val_accuracy=0.9593 (trial 3)``, every objective by name."""
    return f"{objective_text(trial, spec) or '?'} (trial {trial.trial_id})"


def space_bound(spec: spec_pb2.StudySpec) -> int | None:
    """At most how many distinct configurations the search space has; None when it is continuous.

    A product over the parameters (conditional ones counted as always active), so a study that
    finished this many trials has no more to run even below its budget: its searcher ran out."""
    bound = 1
    for param in spec.search_space:
        domain = param.WhichOneof("domain")
        if domain == "int_range":
            step = 1 if param.int_range.log else max(1, param.int_range.step)
            bound *= max(1, (param.int_range.high - param.int_range.low) // step + 1)
        elif domain == "choice":
            bound *= max(1, len(param.choice.values))
        else:
            return None
    return bound


def runnable_trials(spec: spec_pb2.StudySpec) -> int:
    """The trials the study can run: its budget, or fewer when its search space has fewer (0: no bound)."""
    bound, budget = space_bound(spec), spec.budget.max_trials
    return min(budget, bound) if bound and budget else budget or (bound or 0)


def has_test_split(spec: spec_pb2.StudySpec) -> bool:
    """Whether the study ends by scoring its best trial on a test split: the built-in trainer's do."""
    return not (spec.HasField("external") or spec.HasField("trainable"))


def study_phase(study: service_pb2.Study) -> str:
    """The state, and what a RUNNING study with no trial running waits on: ``RUNNING (waiting for a slot)``."""
    state = study_state(study.state)
    if study.state == service_pb2.STUDY_PENDING:
        return f"{state} (queued)"
    if study.state != service_pb2.STUDY_RUNNING or study.trial_counts.running:
        return state
    last = runnable_trials(study.spec)
    if last and finished_count(study) >= last:
        return f"{state} (test evaluation)" if has_test_split(study.spec) else state
    return f"{state} (waiting for a slot)"


def result_yaml(result: RunResult) -> str:
    """The outcome of a study as a YAML document whose comments are the headings."""
    study = result.study
    counts = ", ".join(f"{getattr(study.trial_counts, n)} {n}" for n in FINISHED if getattr(study.trial_counts, n))
    out = [f"# study {study.study_id} ({study.spec.name or 'unnamed'}): {study_state(study.state)}"]
    if counts:
        out[0] += f"; trials: {counts}"
    if study.error:
        out.append(f"# error: {study.error}")
    if study.trial_counts.failed or study.trial_counts.infeasible:
        out.append(
            f"# failed or infeasible trials: `tuneyard trials {study.study_id}` lists them, "
            f"`tuneyard trial {study.study_id} TRIAL_ID` shows why one ended (traceback, stderr)"
        )
    if study.HasField("best_trial"):
        out.append(f"# best configuration (trial {study.best_trial.trial_id})")
        out.append(_dump({"best_config": result.best_config}))
        out.append("# metrics of the best trial (last epoch)")
        out.append(_dump({"best_metrics": _rounded(result.best_metrics)}))
        if result.resolved_config and result.resolved_config != result.best_config:
            out.append("# the full configuration the best trial ran with (the study's settings, searched values in)")
            out.append(_dump({"resolved_config": result.resolved_config}))
    else:
        out.append("# no trial has finished with a result yet")
    if result.test_metrics:
        out.append("# the best trial's checkpoint evaluated on the test split")
        out.append(_dump({"test_metrics": _rounded(result.test_metrics)}))
    if study.pareto_front:
        metrics = [o.metric for o in study.spec.objectives]
        out.append(f"# Pareto front over {', '.join(metrics)}: trials no other trial beats in every objective")
        front = [
            {
                "trial": t.trial_id,
                **{m: round(v, 6) for m, v in zip(metrics, t.objective_values, strict=False)},
                "config": config_to_dict(t.config, study.spec),
            }
            for t in study.pareto_front
        ]
        out.append(_dump({"pareto_front": front}))
    if study.epochs_spent:
        out.append(f"# compute spent: {study.epochs_spent} epochs over all trials")
    return "\n".join(line.rstrip("\n") for line in out) + "\n"


def _dump(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False)


def _rounded(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in sorted(metrics.items())}


def studies_table(studies: Iterable[service_pb2.Study]) -> Table:
    table = Table("id", "name", "state", "trials done", "best value", title="studies")
    for study in studies:
        done = trials_done(study)
        best = objective_text(study.best_trial, study.spec) if study.HasField("best_trial") else ""
        _row(table, study.study_id, study.spec.name, study_phase(study), done, best)
    return table


def trials_table(trials: Iterable[service_pb2.Trial], spec: spec_pb2.StudySpec) -> Table:
    names = objective_names(spec)
    table = Table("trial", "state", "device", "epochs", *names)
    table.add_column("config", overflow="fold")
    failed: set[str] = set()
    for trial in trials:
        values = objective_values(trial, spec)
        objectives = [_value(values[n]) if n in values else "" for n in names]
        config = Text(compact_config(config_to_dict(trial.config, spec)))
        why = "  ".join(p for p in (exit_text(trial), _why(trial)) if p)
        if why:
            config.append(f"\n{why}", style="red")
        state = Text(trial_label(trial), style=state_style(trial.state))
        _row(table, trial.trial_id, state, trial.device, trial.epochs_completed, *objectives, config)
        if trial.state in (service_pb2.TRIAL_FAILED, service_pb2.TRIAL_INFEASIBLE):
            failed.add(trial.study_id)
    if len(failed) == 1:
        table.caption = f"`tuneyard trial {failed.pop()} TRIAL_ID` shows a trial's traceback and stderr"
    return table


def trial_detail(trial: service_pb2.Trial, spec: spec_pb2.StudySpec) -> RenderableType:
    """Everything about one trial for ``tuneyard trial``: facts, config, metrics, error, stderr."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    state = Text(trial_label(trial, retries=False), style=state_style(trial.state))
    rows: list[tuple[str, str | Text]] = [("study", trial.study_id), ("state", state)]
    failed = trial.state == service_pb2.TRIAL_FAILED
    if failed or trial.failure_reason:
        rows.append(("reason", _REASONS.get(trial.failure_reason, trial.failure_reason or "not given")))
    rows += [("exit", exit_text(trial)), ("retries", str(trial.retries) if trial.retries or failed else "")]
    rows += [("device", trial.device), ("fused group", trial.fused_group), ("epochs", str(trial.epochs_completed))]
    rows += [(name, _value(value)) for name, value in objective_values(trial, spec).items()]
    seconds = _seconds(trial)
    rows += [("time", f"{seconds:.1f}s" if seconds is not None else ""), ("checkpoint", trial.checkpoint)]
    for key, value in rows:
        if value:
            _row(facts, key, value)
    parts: list[RenderableType] = [Text(f"trial {trial.trial_id}", style="bold"), facts]
    config = config_to_dict(trial.config, spec)
    if config:
        parts.append(_key_values("config", config))
    if trial.config_history:
        parts.append(_config_history(trial, spec))
    if trial.metrics:
        parts.append(_curve(trial, spec))
    if trial.final_metrics:
        parts.append(_key_values("final metrics", dict(sorted(trial.final_metrics.items()))))
    if trial.error:
        title = "reason" if trial.state == service_pb2.TRIAL_INFEASIBLE else "error"
        parts.append(Panel(Text(trial.error.rstrip()), title=title, title_align="left", border_style="red"))
    if trial.stderr_tail:
        lines = trial.stderr_tail.rstrip("\n").splitlines()[-STDERR_LINES:]
        title = f"stderr (last {len(lines)} {'line' if len(lines) == 1 else 'lines'})"
        parts.append(Panel(Text("\n".join(lines)), title=title, title_align="left", border_style="yellow"))
    return Group(*parts)


def _config_history(trial: service_pb2.Trial, spec: spec_pb2.StudySpec) -> Table:
    """Its PBT exploits: after which epoch it went on from which trial's checkpoint, with what changed."""
    table = Table(title="config history (pbt)", title_justify="left", box=None, padding=(0, 2))
    for column in ("after epoch", "from trial", "changed"):
        table.add_column(column, overflow="fold")
    before = config_to_dict(trial.config, spec)
    for change in trial.config_history:
        config = config_to_dict(change.config, spec)
        changed = ", ".join(f"{k}={number(v)}" for k, v in config.items() if before.get(k) != v)
        table.add_row(str(change.epoch), str(change.source_trial_id), changed or "nothing")
        before = config
    return table


def _key_values(title: str, values: Mapping[str, Any]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in values.items():
        _row(table, key, number(value))
    return table


def _curve(trial: service_pb2.Trial, spec: spec_pb2.StudySpec) -> Table:
    """Per-epoch metrics: the objectives and the usual loss/accuracy/lr columns (all if none is there)."""
    present = {name for epoch in trial.metrics for name in epoch.values}
    objectives = objective_names(spec)
    names = [n for n in dict.fromkeys([*objectives, *_CURVE_METRICS]) if n in present] or sorted(present)
    table = Table("epoch", *names, title="metrics per epoch", title_justify="left")
    for epoch in trial.metrics:
        _row(table, epoch.epoch, *(number(epoch.values[n]) if n in epoch.values else "" for n in names))
    return table


def devices_table(info: service_pb2.ServerInfo) -> Table:
    table = Table("device", "what", "in use", "workers busy/total", "memory", "trials", title="devices")
    for device in info.devices:
        memory = f"{device.memory_bytes / 2**30:.1f} GiB" if device.memory_bytes else ""
        workers = f"{device.slots_busy}/{device.slots_total}"
        _row(
            table,
            device.name,
            device.description or device.kind,
            f"{device.share_in_use:.0%}",
            workers,
            memory,
            ", ".join(device.trials),
        )
    return table


def _row(table: Table, *cells: object) -> None:
    """Add a row of literal text: server strings may contain ``[...]``, which rich would read as markup."""
    table.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in cells))

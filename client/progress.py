"""Live progress of a study: rich bars on a terminal, one plain line per trial elsewhere.

Both displays are callables taking a ``StudyEvent`` (pass them as
``on_event``) and context managers, so the CLI drives either the same way;
the plain one keeps logs and CI output readable.
"""

from __future__ import annotations

from typing import Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from tuneyard.client import render
from tuneyard.client.specfile import config_to_dict
from tuneyard.v1 import service_pb2, spec_pb2

__all__ = ["Display", "LiveProgress", "PlainProgress", "make_display"]


class Display(Protocol):
    def __enter__(self) -> Display: ...
    def __exit__(self, *exc_info: object) -> None: ...
    def __call__(self, event: service_pb2.StudyEvent) -> None: ...


class PlainProgress:
    """One line per finished trial (and one for the study's end) -- for pipes and logs."""

    def __init__(self, spec: spec_pb2.StudySpec, console: Console, *, every_event: bool = False) -> None:
        self.spec = spec
        self.console = console
        self.every_event = every_event

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def __call__(self, event: service_pb2.StudyEvent) -> None:
        kind = event.WhichOneof("event")
        style = ""
        if kind == "trial_finished":
            style = render.state_style(event.trial_finished.trial.state)
        if self.every_event:
            line = render.event_line(event, self.spec)
        elif kind == "trial_finished":
            line = render.trial_line(event.trial_finished.trial, self.spec)
        else:
            return
        self.console.print(line, style=style, markup=False, highlight=False, soft_wrap=True)


class LiveProgress:
    """Rich bars: trials finished of the budget, one bar of epochs per running trial, best so far."""

    def __init__(self, spec: spec_pb2.StudySpec, console: Console) -> None:
        self.spec = spec
        self.console = console
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[metrics]}", markup=False),
            console=console,
        )
        self._trials = self._progress.add_task("trials", total=spec.budget.max_trials or None, metrics="")
        self._running: dict[int, TaskID] = {}
        self._devices: dict[int, str] = {}
        self._finished = 0
        self._best = Text("best so far: -")
        self._live = Live(Group(self._progress, self._best), console=console, refresh_per_second=8)

    def __enter__(self) -> LiveProgress:
        self._live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for task in self._running.values():
            self._progress.remove_task(task)
        self._running.clear()
        self._live.stop()

    def __call__(self, event: service_pb2.StudyEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "trial_started":
            self._started(event.trial_started.trial)
        elif kind == "trial_progress":
            update = event.trial_progress
            task = self._running.get(update.trial_id)
            if task is not None:
                metrics = render.metrics_text(update.metrics, self.spec.objective.metric)
                self._progress.update(task, completed=update.epoch, metrics=metrics)
        elif kind == "trial_finished":
            trial = event.trial_finished.trial
            task = self._running.pop(trial.trial_id, None)
            if task is not None:
                self._progress.remove_task(task)
            self._finished += 1
            self._progress.update(self._trials, completed=self._finished)
            line = render.trial_line(trial, self.spec)
            self._live.console.print(line, style=render.state_style(trial.state), markup=False, highlight=False)
        elif kind == "best_trial_changed":
            self._best.plain = "best so far: " + render.best_text(event.best_trial_changed.trial, self.spec)
        self._progress.update(self._trials, description=f"trials ({len(self._running)} running)")
        self._live.refresh()  # events are rare (per epoch): show each at once, not at the next tick

    def _started(self, trial: service_pb2.Trial) -> None:
        config = config_to_dict(trial.config, self.spec)
        epochs = config.get("training.epochs", self.spec.training.epochs)
        self._devices[trial.trial_id] = trial.device
        self._running[trial.trial_id] = self._progress.add_task(
            self._label(trial.trial_id), total=int(epochs) if epochs else None, metrics=""
        )

    def _label(self, trial_id: int) -> str:
        device = self._devices.get(trial_id, "")
        return f"trial {trial_id}" + (f" [{device}]" if device else "")


def make_display(spec: spec_pb2.StudySpec, console: Console, *, live: bool) -> Display:
    """Live bars when asked for and the console is a terminal; plain lines otherwise."""
    if live and console.is_terminal:
        return LiveProgress(spec, console)
    return PlainProgress(spec, console)

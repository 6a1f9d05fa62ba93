"""Live progress of a study: a live table on a terminal, one plain line per trial elsewhere.

The live table is :mod:`tuneyard.client.live`. Both displays are callables taking a ``StudyEvent`` (pass them as
``on_event``) and context managers, so the CLI drives either the same way;
the plain one keeps logs and CI output readable.
"""

from __future__ import annotations

from typing import Protocol

from rich.console import Console

from tuneyard.client import render
from tuneyard.client.live import LiveProgress
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
        self._finished = 0

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
        if kind == "trial_finished":
            self._finished += 1
            if self._finished == render.runnable_trials(self.spec) and render.has_test_split(self.spec):
                # Silence until the study ends would look like a hang: say what it does meanwhile.
                self.console.print("all trials ended: evaluating the best trial on the test split", markup=False)


def make_display(
    spec: spec_pb2.StudySpec, console: Console, *, live: bool, state: int = service_pb2.STUDY_PENDING
) -> Display:
    """The live table when asked for and the console is a terminal; plain lines otherwise.

    ``state`` is the study's state when the display starts (its events then tell the changes)."""
    if live and console.is_terminal:
        return LiveProgress(spec, console, state=state)
    return PlainProgress(spec, console)

"""The live view of a study on a terminal: one table that fits any width.

One row for the study (a bar of finished trials of the budget, M/N, elapsed time, its phase), one
row per running trial (a bar of its epochs, M/N, elapsed time, its latest objectives and loss),
and the best trial so far. The columns are sized from the terminal's width on every refresh: the
bar, the counts and the time keep their room, the metrics column gets what is left and is cut
with an ellipsis, so a long metric list never pushes the bar off a 160-column (or 80-column)
line. Finished trials print above the table, one line each. The phase says what the study waits
on when nothing moves: queued behind other studies, a free slot, the test-split evaluation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tuneyard.client import render
from tuneyard.client.results import objectives_of
from tuneyard.client.specfile import config_to_dict
from tuneyard.common.trials import number
from tuneyard.v1 import service_pb2, spec_pb2

__all__ = ["LiveProgress", "elapsed", "metric_summary"]

_LOSSES = ("val_loss", "train_loss", "loss")
_SLOT_WAIT = 2.0  # seconds with fewer trials running than wanted before the phase says "waiting for a slot"
_STATE_WORDS: dict[int, str] = {
    service_pb2.STUDY_COMPLETED: "completed",
    service_pb2.STUDY_FAILED: "failed",
    service_pb2.STUDY_CANCELLED: "cancelled",
}


def elapsed(seconds: float) -> str:
    """``0:01:05``: hours, minutes, seconds, as rich's elapsed column writes them."""
    whole = max(0, int(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def metric_summary(metrics: Mapping[str, float], objectives: list[str]) -> str:
    """The objectives' metrics, then the losses: ``val_accuracy=0.9741 val_loss=0.0812``."""
    names = [n for n in dict.fromkeys([*objectives, *_LOSSES]) if n in metrics]
    return " ".join(f"{n}={number(float(metrics[n]))}" for n in names)


@dataclass
class _Running:
    label: str
    epochs: int | None
    started: float
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


class LiveProgress:
    """The live table; a :class:`~tuneyard.client.progress.Display` (call it with each event)."""

    def __init__(self, spec: spec_pb2.StudySpec, console: Console, *, state: int = service_pb2.STUDY_PENDING) -> None:
        self.spec = spec
        self.console = console
        self._objectives = [o.metric for o in objectives_of(spec)]
        self._budget = spec.budget.max_trials
        self._last = render.runnable_trials(spec)
        self._concurrent = spec.budget.max_concurrent_trials or 1
        self._state = state
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._moved = self._start  # when a trial last started or ended
        self._running: dict[int, _Running] = {}
        self._finished = 0
        self._best = "-"
        self._live = Live(self, console=console, refresh_per_second=4)

    def __enter__(self) -> LiveProgress:
        self._live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._live.stop()  # the last frame stays: after Ctrl-C it shows what was still running

    def __call__(self, event: service_pb2.StudyEvent) -> None:
        kind = event.WhichOneof("event")
        with self._lock:
            if kind == "study_state":
                self._state = event.study_state.state
            elif kind == "trial_started":
                self._started(event.trial_started.trial)
            elif kind == "trial_progress":
                update = event.trial_progress
                running = self._running.get(update.trial_id)
                if running is not None:
                    running.epoch, running.metrics = update.epoch, dict(update.metrics)
            elif kind == "best_trial_changed":
                self._best = render.best_text(event.best_trial_changed.trial, self.spec)
        if kind == "trial_finished":
            self._trial_finished(event.trial_finished.trial)
        self._live.refresh()  # events are rare (per epoch): show each at once, not at the next tick

    def _started(self, trial: service_pb2.Trial) -> None:
        config = config_to_dict(trial.config, self.spec)
        epochs = config.get("training.epochs", self.spec.training.epochs)
        label = f"trial {trial.trial_id}" + (f" [{trial.device}]" if trial.device else "")
        self._running[trial.trial_id] = _Running(label, int(epochs) if epochs else None, time.monotonic())
        self._moved = time.monotonic()

    def _trial_finished(self, trial: service_pb2.Trial) -> None:
        with self._lock:
            self._running.pop(trial.trial_id, None)
            self._finished += 1
            self._moved = time.monotonic()
        line = render.trial_line(trial, self.spec)
        self._live.console.print(line, style=render.state_style(trial.state), markup=False, highlight=False)

    def phase(self, now: float | None = None) -> str:
        """What the study is doing: ``2 running``, ``waiting for a slot``, ``queued``, ..."""
        now = time.monotonic() if now is None else now
        with self._lock:
            running, finished, state, moved = len(self._running), self._finished, self._state, self._moved
        if state in _STATE_WORDS:
            return _STATE_WORDS[state]
        if state != service_pb2.STUDY_RUNNING:
            return "queued: waiting for the server to start the study"
        if self._last and finished >= self._last and not running:
            return "evaluating the best trial on the test split" if render.has_test_split(self.spec) else "finishing"
        wanted = min(self._concurrent, self._last - finished) if self._last else self._concurrent
        text = f"{running} running" if running else ""
        if running < wanted and (not running or now - moved >= _SLOT_WAIT):
            text = f"{text} · waiting for a slot" if text else "waiting for a slot"
        return text

    def view(self, width: int) -> Group:
        """The table for a terminal ``width`` columns wide, and the best-so-far line."""
        now = time.monotonic()
        phase = self.phase(now)
        with self._lock:
            rows = [
                ("trials", self._budget or None, self._finished, now - self._start, phase, "bold"),
                *(
                    (r.label, r.epochs, r.epoch, now - r.started, metric_summary(r.metrics, self._objectives), "")
                    for r in self._running.values()
                ),
            ]
            best = self._best
        table = _table(rows, width)
        line = Text(f"best so far: {best}", no_wrap=True, overflow="ellipsis")
        line.truncate(width, overflow="ellipsis")
        return Group(table, line)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.view(options.max_width)


_Row = tuple[str, int | None, int, float, str, str]


def _table(rows: list[_Row], width: int) -> Table:
    """Columns label, bar, M/N, time, metrics; the fixed ones sized first, the metrics get the rest."""
    label_w = min(max(len(r[0]) for r in rows), 24 if width >= 100 else 18)
    counts = [f"{done}/{total}" if total else str(done) for _, total, done, *_ in rows]
    count_w = max(len(c) for c in counts)
    bar_w = 40 if width >= 140 else max(8, min(30, width // 5))
    time_w = max(len(elapsed(r[3])) for r in rows)
    spare = width - (label_w + bar_w + count_w + time_w + 3)  # one space between the first four columns
    if spare < 0:  # a very narrow terminal: the label and the bar give way, the counts and the time stay
        label_w, bar_w = max(6, label_w + spare // 2), max(4, bar_w + spare - spare // 2)
    metrics_w = width - (label_w + bar_w + count_w + time_w) - 4  # and one before the metrics
    table = Table.grid(padding=(0, 1))
    table.add_column(width=label_w, no_wrap=True, overflow="ellipsis")
    table.add_column(width=bar_w, no_wrap=True)
    table.add_column(width=count_w, no_wrap=True, justify="right")
    table.add_column(width=time_w, no_wrap=True)
    if metrics_w >= 6:
        table.add_column(width=metrics_w, no_wrap=True, overflow="ellipsis")
    for (label, total, done, seconds, text, style), count in zip(rows, counts, strict=True):
        bar = ProgressBar(total=float(total) if total else None, completed=done, width=bar_w)
        cells: list[RenderableType] = [
            Text(label, style=style),
            bar,
            Text(count, style="green"),
            Text(elapsed(seconds), style="yellow"),
        ]
        if metrics_w >= 6:
            cells.append(Text(text))
        table.add_row(*cells)
    return table

"""The CLI's live table at 80 and 160 columns, its phases, and the plain display's phase line.

Each frame is what the live display draws on a terminal of that width (the display is the
renderable rich's Live redraws), recorded with ``Console(record=True, width=...)``.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tuneyard.client import load_spec
from tuneyard.client.live import LiveProgress, elapsed, metric_summary
from tuneyard.client.progress import PlainProgress, make_display
from tuneyard.v1 import service_pb2 as pb

DIGITS = load_spec(Path(__file__).resolve().parent.parent / "examples" / "digits.yaml")
TWO_OBJECTIVES = load_spec(
    {
        "name": "two",
        "dataset": {"name": "digits"},
        "model": {"name": "simple_cnn"},
        "training": {"epochs": 5},
        "search_space": [{"name": "model.num_filters", "int_range": {"low": 4, "high": 64}}],
        "objectives": [
            {"metric": "val_accuracy", "mode": "MAXIMIZE"},
            {"metric": "inference_latency_ms", "mode": "MINIMIZE"},
        ],
        "budget": {"max_trials": 12, "max_concurrent_trials": 3},
    }
)
METRICS = {
    "val_accuracy": 0.9741,
    "epoch_seconds": 2.865,
    "inference_latency_ms": 1.234,
    "val_loss": 0.0812,
    "train_loss": 0.05,
    "train_accuracy": 0.99,
}


def _event(**body: Any) -> pb.StudyEvent:
    return pb.StudyEvent(study_id="s1", **body)


def _finished(trial_id: int, values: list[float]) -> pb.Trial:
    trial = pb.Trial(trial_id=trial_id, state=pb.TRIAL_COMPLETED, device="cuda:0", objective_values=values)
    trial.objective_value = values[0]
    trial.config.update({"model.num_filters": 17})
    return trial


def _drive(display: LiveProgress, values: list[float]) -> None:
    display(_event(study_state=pb.StudyStateChanged(state=pb.STUDY_RUNNING)))
    for trial_id in (1, 2):
        display(_event(trial_started=pb.TrialStarted(trial=pb.Trial(trial_id=trial_id, device=f"cuda:{trial_id}"))))
    display(_event(trial_progress=pb.TrialProgress(trial_id=2, epoch=3, metrics=METRICS)))
    display(_event(trial_finished=pb.TrialFinished(trial=_finished(1, values))))
    display(_event(best_trial_changed=pb.BestTrialChanged(trial=_finished(1, values))))


def _frame(display: LiveProgress, width: int) -> list[str]:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(display)
    return console.export_text().rstrip("\n").splitlines()


@pytest.mark.parametrize("width", [80, 160])
def test_live_table_keeps_bar_counts_time_and_objective_names_at_any_width(width: int) -> None:
    out = Console(record=True, width=width, force_terminal=True, file=io.StringIO())
    display = LiveProgress(TWO_OBJECTIVES, out)
    with display:
        _drive(display, [0.9519, 1.5])
        frame = _frame(display, width)
    assert all(len(line) <= width for line in frame), frame
    study, trial, best = frame
    assert study.startswith("trials ") and "━" in study and "1/12" in study and "1 running" in study
    assert trial.startswith("trial 2 [cuda:2]") and "━" in trial and " 3/5 " in trial and "0:00:0" in trial
    assert "val_accuracy=0.9741" in trial  # the first objective leads the metrics column
    assert "epoch_seconds" not in trial and "train_accuracy" not in trial  # bounded: objectives, then loss
    if width == 160:
        assert "inference_latency_ms=1.234 val_loss=0.0812 train_loss=0.05" in trial
    else:
        assert trial.endswith("…")  # cut to fit, the bar and counts kept
    assert best == "best so far: val_accuracy=0.9519 inference_latency_ms=1.5000 (trial 1)"
    printed = out.export_text()
    assert "trial 1 COMPLETED  val_accuracy=0.9519 inference_latency_ms=1.5000" in printed


@pytest.mark.parametrize("width", [80, 160])
def test_one_objective_keeps_its_name_in_every_line(width: int) -> None:
    out = Console(record=True, width=width, force_terminal=True, file=io.StringIO())
    display = make_display(DIGITS, out, live=True)
    assert isinstance(display, LiveProgress)
    with display:
        _drive(display, [0.9593])
        frame = _frame(display, width)
    assert frame[-1] == "best so far: val_accuracy=0.9593 (trial 1)"
    assert "trial 1 COMPLETED  val_accuracy=0.9593" in out.export_text()
    assert "1/8" in frame[0] and "3/6" in frame[1]  # digits.yaml: 8 trials of 6 epochs


def test_phases_follow_the_study_state_and_the_trials() -> None:
    display = LiveProgress(TWO_OBJECTIVES, Console(file=io.StringIO()))
    assert display.phase() == "queued: waiting for the server to start the study"
    display(_event(study_state=pb.StudyStateChanged(state=pb.STUDY_RUNNING)))
    assert display.phase() == "waiting for a slot"  # RUNNING with no trial running: not "0 trials"
    display(_event(trial_started=pb.TrialStarted(trial=pb.Trial(trial_id=1))))
    assert display.phase() == "1 running"  # the others may start any moment
    assert display.phase(now=time.monotonic() + 5) == "1 running · waiting for a slot"  # they did not
    for trial_id in range(1, 13):
        display(_event(trial_finished=pb.TrialFinished(trial=_finished(trial_id, [0.9, 1.0]))))
    assert display.phase() == "evaluating the best trial on the test split"
    assert "evaluating the best trial on the test split" in _frame(display, 120)[0]
    display(_event(study_state=pb.StudyStateChanged(state=pb.STUDY_COMPLETED)))
    assert display.phase() == "completed"
    external = LiveProgress(load_spec({"external": {}, "budget": {"max_trials": 1}}), Console(file=io.StringIO()))
    external(_event(study_state=pb.StudyStateChanged(state=pb.STUDY_RUNNING)))
    external(_event(trial_finished=pb.TrialFinished(trial=_finished(1, [0.9]))))
    assert external.phase() == "finishing"  # no test split: the client evaluated the trials
    small = load_spec(
        {
            "dataset": {"name": "digits"},
            "search_space": [{"name": "model.num_conv_layers", "int_range": {"low": 1, "high": 2}}],
            "budget": {"max_trials": 5},
        }
    )
    exhausted = LiveProgress(small, Console(file=io.StringIO()))
    exhausted(_event(study_state=pb.StudyStateChanged(state=pb.STUDY_RUNNING)))
    for trial_id in (1, 2):  # the space has two configurations: the searcher ran out below the budget
        assert exhausted.phase() == "waiting for a slot"
        exhausted(_event(trial_finished=pb.TrialFinished(trial=_finished(trial_id, [0.9]))))
    assert exhausted.phase() == "evaluating the best trial on the test split"


def test_plain_progress_says_when_the_test_evaluation_runs() -> None:
    buffer = io.StringIO()
    display = PlainProgress(DIGITS, Console(file=buffer, width=200))
    for trial_id in range(1, 9):
        display(_event(trial_finished=pb.TrialFinished(trial=_finished(trial_id, [0.9]))))
        assert ("evaluating the best trial on the test split" in buffer.getvalue()) == (trial_id == 8)
    assert "trial 8 COMPLETED  val_accuracy=0.9000" in buffer.getvalue()


def test_metric_summary_and_elapsed() -> None:
    assert (
        metric_summary(METRICS, ["inference_latency_ms"])
        == "inference_latency_ms=1.234 val_loss=0.0812 train_loss=0.05"
    )
    assert metric_summary({"epoch_seconds": 1.0}, ["val_accuracy"]) == ""
    assert elapsed(3725.9) == "1:02:05" and elapsed(-1) == "0:00:00"

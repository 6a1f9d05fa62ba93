"""How the client shows failed and infeasible trials: tables, one-line events, the trial view, summaries.

Pure rendering over hand-built ``Trial``/``Study`` messages: no server, no terminal.
"""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console, RenderableType

from tuneyard.client import RunResult, load_spec, render
from tuneyard.client.progress import LiveProgress, PlainProgress
from tuneyard.v1 import service_pb2 as pb

SPEC = load_spec(Path(__file__).resolve().parent.parent / "examples" / "digits.yaml")
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "trainer.py", line 88, in train_epoch\n'
    "    loss.backward()\n"
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
)
STDERR = "\n".join(f"stderr line {i} [cuda:0]" for i in range(1, 61))  # 60 lines; brackets are not markup


def _failed(**fields: object) -> pb.Trial:
    values = {
        "study_id": "st-1",
        "trial_id": 3,
        "state": pb.TRIAL_FAILED,
        "device": "cuda:0",
        "epochs_completed": 2,
        "failure_reason": "oom",
        "exit_code": -9,
        "exit_signal": "SIGKILL",
        "retries": 1,
        "error": TRACEBACK,
        "stderr_tail": STDERR,
    }
    values.update(fields)
    trial = pb.Trial(**values)
    trial.config.update({"model.num_filters": 64, "optimizer.name": "adam"})
    for epoch in (1, 2):
        trial.metrics.add(epoch=epoch).values.update({"val_accuracy": 0.5 + epoch / 10, "train_loss": 1.0 / epoch})
    trial.final_metrics.update({"val_accuracy": 0.7, "train_loss": 0.5})
    return trial


def _infeasible() -> pb.Trial:
    trial = pb.Trial(
        study_id="st-1",
        trial_id=4,
        state=pb.TRIAL_INFEASIBLE,
        error="Infeasible: convnet depth 6 halves an 8x8 input below 1 pixel",
    )
    trial.config.update({"model.num_filters": 16})
    return trial


def _completed() -> pb.Trial:
    trial = pb.Trial(study_id="st-1", trial_id=1, state=pb.TRIAL_COMPLETED, device="cpu:0", epochs_completed=6)
    trial.objective_value = 0.97
    return trial


def _text(renderable: RenderableType, width: int = 200) -> str:
    console = Console(file=io.StringIO(), width=width, highlight=False)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


# -- labels ------------------------------------------------------------------------------------------


def test_failed_trial_label_names_the_reason_and_the_retries() -> None:
    assert render.trial_label(_failed()) == "FAILED (oom) after 1 retry"
    assert render.trial_label(_failed(retries=2)) == "FAILED (oom) after 2 retries"
    assert render.trial_label(_failed(retries=0, failure_reason="timeout")) == "FAILED (timeout)"
    assert render.trial_label(_infeasible()) == "INFEASIBLE"
    assert render.trial_label(_completed()) == "COMPLETED"


def test_exit_text_gives_the_code_and_the_signal() -> None:
    assert render.exit_text(_failed()) == "exit code -9 (SIGKILL)"
    assert render.exit_text(_failed(exit_code=3, exit_signal="")) == "exit code 3"
    assert render.exit_text(_failed(exit_code=0, exit_signal="")) == "exit code 0"  # optional: 0 is shown
    trial = _failed(exit_signal="")
    trial.ClearField("exit_code")
    assert render.exit_text(trial) == ""
    assert render.exit_text(_completed()) == ""


# -- one line per finished trial (`run`, `watch`) -------------------------------------------------


def test_a_failed_trial_finished_event_is_one_line_with_reason_exit_and_the_error_last_line() -> None:
    event = pb.StudyEvent(sequence=8, trial_finished=pb.TrialFinished(trial=_failed()))
    line = render.event_line(event, SPEC)
    assert "\n" not in line
    assert line.startswith("#8 trial 3 FAILED (oom) after 1 retry  exit code -9 (SIGKILL)")
    assert line.endswith("error: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_crash_without_an_error_text_shows_the_last_stderr_line() -> None:
    line = render.trial_line(_failed(failure_reason="crash", error=""), SPEC)
    assert "FAILED (crash)" in line and line.endswith("stderr: stderr line 60 [cuda:0]")


def test_an_infeasible_trial_line_says_so_and_why() -> None:
    line = render.trial_line(_infeasible(), SPEC)
    assert line.startswith("trial 4 INFEASIBLE")
    assert line.endswith("reason: Infeasible: convnet depth 6 halves an 8x8 input below 1 pixel")
    assert "error:" not in line


def test_plain_and_live_progress_print_the_failure_line() -> None:
    events = [
        pb.StudyEvent(sequence=1, trial_finished=pb.TrialFinished(trial=_failed())),
        pb.StudyEvent(sequence=2, trial_finished=pb.TrialFinished(trial=_infeasible())),
    ]
    for make in (
        lambda c: PlainProgress(SPEC, c),
        lambda c: PlainProgress(SPEC, c, every_event=True),
        lambda c: LiveProgress(SPEC, c),
    ):
        buffer = io.StringIO()
        console = Console(file=buffer, force_terminal=True, width=250)
        with make(console) as display:
            for event in events:
                display(event)
        text = buffer.getvalue()
        assert "trial 3 FAILED (oom) after 1 retry" in text and "exit code -9 (SIGKILL)" in text
        assert "CUDA out of memory" in text and "trial 4 INFEASIBLE" in text


# -- tables and summaries ----------------------------------------------------------------------------


def test_trials_table_shows_reason_exit_error_and_infeasible() -> None:
    text = _text(render.trials_table([_completed(), _failed(), _infeasible()], SPEC))
    assert "COMPLETED" in text and "FAILED (oom) after 1 retry" in text and "INFEASIBLE" in text
    assert "exit code -9 (SIGKILL)" in text
    assert "error: torch.OutOfMemoryError: CUDA out of memory" in text
    assert "reason: Infeasible: convnet depth 6" in text
    assert "`tuneyard trial st-1 TRIAL_ID` shows a trial's traceback and stderr" in text


def test_trials_table_of_healthy_trials_has_no_failure_hint() -> None:
    assert "tuneyard trial " not in _text(render.trials_table([_completed()], SPEC))


def _study() -> pb.Study:
    study = pb.Study(study_id="st-1", spec=SPEC, state=pb.STUDY_COMPLETED, best_trial=_completed())
    counts = study.trial_counts
    counts.completed, counts.failed, counts.pruned, counts.infeasible = 4, 1, 1, 2
    return study


def test_study_summaries_count_infeasible_trials() -> None:
    assert render.finished_count(_study()) == 8
    table = _text(render.studies_table([_study()]))
    assert "8/8 (1 failed, 2 infeasible)" in table
    summary = render.result_yaml(RunResult.from_study(_study()))
    first = summary.splitlines()[0]
    assert first == "# study st-1 (digits-cnn-search): COMPLETED; trials: 4 completed, 1 failed, 1 pruned, 2 infeasible"
    assert "`tuneyard trial st-1 TRIAL_ID`" in summary


def test_summary_without_failures_has_no_failure_hint() -> None:
    study = _study()
    study.trial_counts.failed = study.trial_counts.infeasible = 0
    assert "tuneyard trial " not in render.result_yaml(RunResult.from_study(study))
    table = _text(render.studies_table([study]))
    assert "5/8" in table and "failed" not in table and "infeasible" not in table


# -- `tuneyard trial`: one trial in full -------------------------------------------------------------


def test_trial_view_of_a_failed_trial_shows_everything() -> None:
    text = _text(render.trial_detail(_failed(), SPEC))
    for expected in (
        "trial 3",
        "FAILED (oom)",
        "oom: out of GPU memory",
        "exit code -9 (SIGKILL)",
        "cuda:0",
        "model.num_filters",
        "adam",
        "metrics per epoch",
        "val_accuracy",
        "final metrics",
        'File "trainer.py", line 88, in train_epoch',
        "torch.OutOfMemoryError: CUDA out of memory",
        "stderr (last 50 lines)",
        "stderr line 11 [cuda:0]",
        "stderr line 60 [cuda:0]",
    ):
        assert expected in text, expected
    assert "stderr line 10 [cuda:0]" not in text  # only the last 50 lines
    retries = next(line for line in text.splitlines() if line.startswith("retries"))
    assert retries.split() == ["retries", "1"]


def test_trial_view_names_each_failure_reason() -> None:
    for reason, words in [("crash", "worker process died"), ("timeout", "heartbeats"), ("error", "raised")]:
        assert words in _text(render.trial_detail(_failed(failure_reason=reason), SPEC))
    text = _text(render.trial_detail(_failed(retries=0), SPEC))
    assert next(line for line in text.splitlines() if line.startswith("retries")).split() == ["retries", "0"]


def test_trial_view_of_an_infeasible_trial_shows_the_reason_not_an_error() -> None:
    text = _text(render.trial_detail(_infeasible(), SPEC))
    assert "INFEASIBLE" in text and "convnet depth 6 halves an 8x8 input" in text
    assert "reason" in text and "error" not in text and "stderr" not in text and "exit" not in text


def test_trial_view_of_a_completed_trial_has_no_failure_sections() -> None:
    text = _text(render.trial_detail(_completed(), SPEC))
    assert "COMPLETED" in text and "0.9700" in text
    for absent in ("reason", "exit", "retries", "error", "stderr"):
        assert absent not in text, absent


def test_trial_view_fits_a_narrow_terminal() -> None:
    text = _text(render.trial_detail(_failed(), SPEC), width=60)
    assert max(len(line) for line in text.splitlines()) <= 60
    assert "stderr line 60 [cuda:0]" in text


def test_trial_view_and_event_line_show_a_pbt_exploit() -> None:
    trial = _completed()
    trial.config.update({"optimizer.lr": 0.001, "model.num_filters": 32})
    first = trial.config_history.add(epoch=4, source_trial_id=2)
    first.config.update({"optimizer.lr": 0.012, "model.num_filters": 64})
    second = trial.config_history.add(epoch=8, source_trial_id=5)
    second.config.update({"optimizer.lr": 0.012, "model.num_filters": 64})
    lines = _text(render.trial_detail(trial, SPEC)).splitlines()
    table = lines[next(i for i, line in enumerate(lines) if "config history (pbt)" in line) + 1 :]
    assert table[0].split() == ["after", "epoch", "from", "trial", "changed"]
    assert table[1].split() == ["4", "2", "model.num_filters=64,", "optimizer.lr=0.012"]
    assert table[2].split() == ["8", "5", "nothing"]  # the source's config, unchanged: weights only
    event = pb.StudyEvent(sequence=9, study_id="st-1")
    event.trial_exploited.trial_id = 1
    event.trial_exploited.change.CopyFrom(first)
    assert "trial 1 goes on from trial 2's epoch 4" in render.event_line(event, SPEC)

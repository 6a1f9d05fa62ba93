"""Built-in observer: every trial as a TensorBoard run (``tuneyard serve --tensorboard-dir DIR``).

Enabled by the environment variable ``TUNEYARD_TENSORBOARD_DIR`` of the server process (the
``--tensorboard-dir`` flag sets it before the server starts); unset or empty, it does nothing.
It is read when a trial starts, so a trial keeps the directory it started with.

Each trial of each study is a run directory ``DIR/<study_id>/trial-<n>/`` holding:

- at start: the trial's configuration as text (tag ``config``, a Markdown table) and as the
  HParams dashboard's session start (one hyperparameter per search-space parameter);
- per epoch: every metric as a scalar under its own name (``val_accuracy``...), step = epoch;
- at the end: the end state and final metrics as text (tag ``state``), and the HParams session
  end (COMPLETED and PRUNED -> success, FAILED and INFEASIBLE -> failure, else unknown).

``tensorboard --logdir DIR`` shows them, live. The files are written by `._tfevents` (no
``tensorboard`` package needed in the server). A retried trial appends to the same run; a
failure to write is logged by the plugin manager and never touches the study.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from tuneyard.plugins.builtin.tensorboard_logger import tfevents as tfe
from tuneyard.plugins.hookspecs import hookimpl

TENSORBOARD_DIR_ENV = "TUNEYARD_TENSORBOARD_DIR"

_STATUS = {
    "COMPLETED": tfe.STATUS_SUCCESS,
    "PRUNED": tfe.STATUS_SUCCESS,
    "FAILED": tfe.STATUS_FAILURE,
    "INFEASIBLE": tfe.STATUS_FAILURE,
}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")

_lock = threading.Lock()
_files: dict[tuple[str, int], tfe.EventFile] = {}  # trials started and not yet ended


def tensorboard_dir() -> Path | None:
    """The configured directory, or None when the logger is off."""
    value = os.environ.get(TENSORBOARD_DIR_ENV, "").strip()
    return Path(value).expanduser().resolve() if value else None


def run_dir(root: Path, study_id: str, trial_id: int) -> Path:
    """``root/<study_id>/trial-<n>``; a study id is made safe as one path component."""
    study = _UNSAFE.sub("_", study_id).lstrip(".") or "_"
    return root / study / f"trial-{int(trial_id)}"


def _file(study_id: str, trial_id: int, *, create: bool) -> tfe.EventFile | None:
    key = (study_id, trial_id)
    with _lock:
        found = _files.get(key)
        if found is None and create:
            root = tensorboard_dir()
            if root is not None:
                found = _files[key] = tfe.EventFile(run_dir(root, study_id, trial_id))
        return found


@hookimpl
def tuneyard_on_trial_start(study_id: str, trial_id: int, config: dict[str, Any]) -> None:
    events = _file(study_id, trial_id, create=True)
    if events is None:
        return
    now = time.time()
    events.write(
        tfe.event(now, values=[tfe.text_value("config", _table(config, ("parameter", "value")))]),
        tfe.event(now, values=[tfe.session_start_value(config, now)]),
    )


@hookimpl
def tuneyard_on_trial_report(study_id: str, trial_id: int, epoch: int, metrics: dict[str, float]) -> None:
    events = _file(study_id, trial_id, create=True)  # a trial resumed by a restarted server: no start seen
    if events is None:
        return
    values = [tfe.scalar_value(name, float(v)) for name, v in sorted(metrics.items()) if _is_number(v)]
    if values:
        events.write(tfe.event(time.time(), int(epoch), values=values))


@hookimpl
def tuneyard_on_trial_end(study_id: str, trial_id: int, state: str, metrics: dict[str, float]) -> None:
    events = _file(study_id, trial_id, create=False)
    if events is None:
        return
    with _lock:
        _files.pop((study_id, trial_id), None)
    now = time.time()
    text = f"**{state}**\n\n" + (_table(metrics, ("metric", "final value")) if metrics else "no metrics")
    events.write(
        tfe.event(now, values=[tfe.text_value("state", text)]),
        tfe.event(now, values=[tfe.session_end_value(_STATUS.get(state, tfe.STATUS_UNKNOWN), now)]),
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _table(values: dict[str, Any], header: tuple[str, str]) -> str:
    rows = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    for name, value in sorted(values.items()):
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        rows.append(f"| {name} | {str(shown).replace('|', '&#124;')} |")
    return "\n".join(rows)

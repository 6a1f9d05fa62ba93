"""Built-in observer: every trial as an MLflow run (``tuneyard serve --mlflow-tracking-uri URI``).

Enabled by the environment variable ``TUNEYARD_MLFLOW_TRACKING_URI`` of the server process (the
flag sets it before the server starts; ``pip install 'tuneyard[mlflow]'`` brings MLflow); unset
or empty, it does nothing and MLflow is never imported. A trial keeps the URI it started with.

Each study is an experiment named ``tuneyard/<study_id>``; each trial a run in it named
``trial-<n>``, tagged ``tuneyard.study_id`` and ``tuneyard.trial_id``, holding:

- at start: the trial's configuration as params (``optimizer.lr`` -> ``0.01``);
- per epoch: every metric under its own name, step = epoch;
- at the end: the final metrics as ``final/<name>``, the end state as the tag ``tuneyard.state``,
  and the run's status (COMPLETED, PRUNED -> FINISHED; FAILED, INFEASIBLE -> FAILED; else KILLED).

The hooks only queue what to write: one background thread talks to MLflow (`.writer`), so a slow
or unreachable tracking server never holds up a study; its failures are logged, and a full queue
drops (and says so). A trial resumed by a restarted server finds its run again by its tags.
MLflow's usage telemetry (reports to MLflow's own servers) stays off unless the server's
environment sets ``MLFLOW_DISABLE_TELEMETRY=false``: a self-hosted server calls no one uninvited.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from tuneyard.plugins.hookspecs import hookimpl

MLFLOW_URI_ENV = "TUNEYARD_MLFLOW_TRACKING_URI"
QUEUE_LIMIT = 10_000  # writes waiting for the tracking server; more are dropped

log = logging.getLogger(__name__)
Write = tuple[str, str, tuple[Any, ...]]  # (operation, tracking URI, its arguments)

_lock = threading.Lock()
_uris: dict[tuple[str, int], str] = {}  # trials started and not yet ended -> their tracking URI
_queue: queue.Queue[Write] = queue.Queue(QUEUE_LIMIT)
_thread: threading.Thread | None = None
_dropped = 0


def tracking_uri() -> str:
    """The configured tracking URI; "" when the logger is off."""
    return os.environ.get(MLFLOW_URI_ENV, "").strip()


@hookimpl
def tuneyard_on_trial_start(study_id: str, trial_id: int, config: dict[str, Any]) -> None:
    uri = tracking_uri()
    if uri:
        with _lock:
            _uris[(study_id, trial_id)] = uri
        _put(("start", uri, (study_id, trial_id, dict(config), time.time())))


@hookimpl
def tuneyard_on_trial_report(study_id: str, trial_id: int, epoch: int, metrics: dict[str, float]) -> None:
    with _lock:
        uri = _uris.get((study_id, trial_id)) or tracking_uri()  # a resumed trial: no start seen
    if uri:
        _put(("report", uri, (study_id, trial_id, int(epoch), dict(metrics), time.time())))


@hookimpl
def tuneyard_on_trial_end(study_id: str, trial_id: int, state: str, metrics: dict[str, float]) -> None:
    with _lock:
        uri = _uris.pop((study_id, trial_id), "") or tracking_uri()
    if uri:
        _put(("end", uri, (study_id, trial_id, state, dict(metrics), time.time())))


def flush(timeout: float = 30.0) -> bool:
    """Waits until every queued write reached MLflow (or failed); False when `timeout` passed first."""
    with _queue.all_tasks_done:
        return _queue.all_tasks_done.wait_for(lambda: _queue.unfinished_tasks == 0, timeout=timeout)


def _put(write: Write) -> None:
    global _thread, _dropped
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_drain, name="mlflow-logger", daemon=True)
            _thread.start()
            atexit.register(flush, 10.0)
    try:
        _queue.put_nowait(write)
    except queue.Full:
        with _lock:
            _dropped += 1
            first = _dropped == 1
        if first:
            log.warning("MLflow is %d writes behind: dropping writes until it catches up", QUEUE_LIMIT)


def _drain() -> None:
    """The writer thread: one `writer.MlflowLog` per tracking URI, each write in the order queued."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before MLflow is imported (see the docstring)
    from tuneyard.plugins.builtin.mlflow_logger.writer import MlflowLog  # imports mlflow: only once enabled

    logs: dict[str, MlflowLog] = {}
    while True:
        operation, uri, args = _queue.get()
        try:
            target = logs.get(uri) or logs.setdefault(uri, MlflowLog(uri))
            method: Callable[..., None] = getattr(target, operation)
            method(*args)
        except Exception as exc:  # noqa: BLE001 - a tracking server's failure never reaches a study
            log.warning("MLflow %s of %s trial %s failed: %s: %s", operation, args[0], args[1], type(exc).__name__, exc)
        finally:
            _queue.task_done()

"""What the MLflow logger writes, through MLflow's own client: runs per trial in an experiment per study.

Imported only by the logger's writer thread, once a tracking URI is configured, so a server that
does not log to MLflow never imports it. One `MlflowLog` per tracking URI, used from that one
thread (the caches need no lock).
"""

from __future__ import annotations

import json
import re
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

EXPERIMENT_PREFIX = "tuneyard/"
STUDY_TAG, TRIAL_TAG, STATE_TAG = "tuneyard.study_id", "tuneyard.trial_id", "tuneyard.state"
FINAL_PREFIX = "final/"
_STATUS = {"COMPLETED": RunStatus.FINISHED, "PRUNED": RunStatus.FINISHED, "FAILED": RunStatus.FAILED}
_STATUS["INFEASIBLE"] = RunStatus.FAILED
_UNSAFE_KEY = re.compile(r"[^\w.\- /]")


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def key(name: str) -> str:
    """A param or metric name MLflow accepts (letters, digits, `_-. /`; no `..`, no leading `/`)."""
    return _UNSAFE_KEY.sub("_", str(name)).replace("..", "__").lstrip("/")[:250] or "_"


def param_value(value: Any) -> str:
    """A config value as MLflow stores params: strings as they are, anything else as JSON, cut to its limit."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:MAX_PARAM_VAL_LENGTH]


def _numbers(metrics: dict[str, Any]) -> list[tuple[str, float]]:
    return [(k, float(v)) for k, v in sorted(metrics.items()) if isinstance(v, int | float) and not isinstance(v, bool)]


class MlflowLog:
    """Experiments and runs of one tracking URI; `start`, `report` and `end` mirror the trial hooks."""

    def __init__(self, tracking_uri: str) -> None:
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._experiments: dict[str, str] = {}
        self._runs: dict[tuple[str, int], str] = {}

    def experiment_id(self, study_id: str) -> str:
        """The study's experiment, made on first use (another server making it at once is fine)."""
        found = self._experiments.get(study_id)
        if found is None:
            name = EXPERIMENT_PREFIX + study_id
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                try:
                    found = self.client.create_experiment(name, tags={STUDY_TAG: study_id})
                except MlflowException:
                    experiment = self.client.get_experiment_by_name(name)
                    if experiment is None:
                        raise
                    found = experiment.experiment_id
            else:
                found = experiment.experiment_id
            self._experiments[study_id] = found
        return found

    def run_id(self, study_id: str, trial_id: int, start_time: float, *, new: bool = False) -> str:
        """The trial's run: known, found by its tags (a trial a restarted server resumed), or made now.
        A `new` trial's run is made without a search (one search per trial would grow with the study)."""
        cached = self._runs.get((study_id, trial_id))
        if cached is not None:
            return cached
        experiment = self.experiment_id(study_id)
        query = f"tags.`{TRIAL_TAG}` = '{int(trial_id)}'"
        runs = [] if new else self.client.search_runs([experiment], query, max_results=1)
        if runs:
            run_id = runs[0].info.run_id
        else:
            tags = {STUDY_TAG: study_id, TRIAL_TAG: str(int(trial_id))}
            run = self.client.create_run(
                experiment, start_time=_ms(start_time), tags=tags, run_name=f"trial-{trial_id}"
            )
            run_id = run.info.run_id
        self._runs[(study_id, trial_id)] = run_id
        return run_id

    def start(self, study_id: str, trial_id: int, config: dict[str, Any], when: float) -> None:
        run_id = self.run_id(study_id, trial_id, when, new=True)
        params = [Param(key(k), param_value(v)) for k, v in sorted(config.items())]
        for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, params=params[i : i + MAX_PARAMS_TAGS_PER_BATCH])

    def report(self, study_id: str, trial_id: int, epoch: int, metrics: dict[str, Any], when: float) -> None:
        values = [Metric(key(k), v, _ms(when), epoch) for k, v in _numbers(metrics)]
        self._log_metrics(self.run_id(study_id, trial_id, when), values)

    def end(self, study_id: str, trial_id: int, state: str, metrics: dict[str, Any], when: float) -> None:
        run_id = self.run_id(study_id, trial_id, when)
        self._log_metrics(run_id, [Metric(key(FINAL_PREFIX + k), v, _ms(when), 0) for k, v in _numbers(metrics)])
        self.client.log_batch(run_id, tags=[RunTag(STATE_TAG, state)])
        status = RunStatus.to_string(_STATUS.get(state, RunStatus.KILLED))
        self.client.set_terminated(run_id, status, end_time=_ms(when))
        self._runs.pop((study_id, trial_id), None)

    def _log_metrics(self, run_id: str, metrics: list[Metric]) -> None:
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])

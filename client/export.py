"""A study's trials out as CSV or JSON (``tuneyard trials ID --format csv|json``), and the slots check.

CSV has the columns of ``trials_dataframe`` (:func:`tuneyard.client.results.trial_rows`), so a
spreadsheet or ``pandas.read_csv`` reads what the SDK's DataFrame holds; JSON has every trial in
full (config, objective values, metrics, per-epoch history), as a list of objects.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tuneyard.client.results import Objective, Trial, as_json, trial_rows
from tuneyard.v1 import service_pb2, spec_pb2

__all__ = ["FORMATS", "slots_warning", "trials_csv", "trials_json"]

FORMATS = ("table", "csv", "json")


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def trials_csv(trials: Sequence[Trial], objectives: Sequence[Objective]) -> str:
    """One header line and one line per trial; empty cells where a trial has no value."""
    rows = trial_rows(trials, objectives)
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    return out.getvalue()


def trials_json(trials: Sequence[Trial]) -> str:
    """Every trial as a JSON object (``Trial``'s fields, times in ISO 8601, ``duration`` in seconds)."""
    data = [{**as_json(dataclasses.asdict(t)), "duration": t.duration} for t in trials]
    return json.dumps(data, indent=2) + "\n"


def trial_capacity(info: service_pb2.ServerInfo, spec: spec_pb2.StudySpec) -> int:
    """How many of this study's trials the server's devices can run at once.

    A trial holds ``gpus_per_trial`` devices (0: one whole device); below 1 it shares a device with
    others, as many as fit and the device's workers allow. (CPU slots are devices of one worker.)
    """
    share = spec.resources.gpus_per_trial or 1.0
    if share < 1:
        per_device = int(1 / share + 1e-9)
        return sum(min(d.slots_total, per_device) for d in info.devices)
    return len(info.devices) // math.ceil(share)


def slots_warning(info: service_pb2.ServerInfo, spec: spec_pb2.StudySpec) -> str:
    """A warning when the spec asks for more trials at once than the server can run; "" otherwise."""
    wanted = spec.budget.max_concurrent_trials
    if spec.HasField("external") or not info.devices or wanted <= 1:
        return ""  # an external study's trials run on its clients, not in the server's slots
    capacity = trial_capacity(info, spec)
    if wanted <= capacity:
        return ""
    devices = ", ".join(f"{d.name}: {d.slots_total}" for d in info.devices)
    return (
        f"max_concurrent_trials is {wanted} but the server runs at most {capacity} trial"
        f"{'' if capacity == 1 else 's'} at once ({devices}); the others wait for a slot"
    )

"""bench/fused.py's server half: the same studies through a real server on two CPU slots (issue 17).

The issue's baseline is today's unfused warm workers on the same 2 slots. This half measures it
as a user meets it: one `tuneyard` server on loopback (`start_server(cpu_slots=2)`: two worker
processes, one torch thread each), each study sent over gRPC (`CreateStudy`) and watched to its
end (`WatchStudy`); the wall runs from the request to the end of the stream. K=1 is the study
without `resources.fuse` (every trial its own task on a warm worker), K>1 the same study with
`resources.fuse: K`. Every study's trials are the same configurations (the random searcher is
seeded by the study seed), so each trial's per-epoch val metrics are compared with the solo study's.

Before the clocks, two unmeasured studies per workload (solo, then fused in pairs) start both
workers and load the dataset in each, as a server that has run a study before has them. Rounds
interleave the Ks, like the engine half's, and each figure is the median wall over the rounds.
"""

from __future__ import annotations

import math
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from gpu_check import run_study

from tuneyard.server.app import start_server
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

SLOTS = 2  # this machine's cores: the server's CPU slots
TrialMetrics = dict[int, list[dict[str, float]]]  # trial id -> its epochs' metrics, in order


@dataclass(frozen=True)
class ServerRow:
    """One (workload, K) study through the server: the median wall over the rounds, what trained fused."""

    workload: str
    k: int
    trials: int
    wall_s: float
    trials_per_s: float
    fused_trials: int  # trials that trained in a fused group (all of them when K > 1)
    max_diff: dict[str, float]  # per compared metric, the largest |trial - solo trial| over every epoch
    off_members: int  # trials whose compared metrics left the tolerance at some epoch


def study_body(spec: dict[str, Any], trials: int, k: int) -> dict[str, Any]:
    """The engine half's spec as a study: every trial may run at once, and fused in groups of K when K > 1."""
    body = {**spec, "budget": {**spec["budget"], "max_concurrent_trials": trials}}
    if k > 1:
        body["resources"] = {**spec.get("resources", {}), "fuse": k}
    return body


def _metrics(trials: Sequence[pb.Trial]) -> TrialMetrics:
    return {t.trial_id: [dict(m.values) for m in t.metrics] for t in trials}


def _difference(
    mine: TrialMetrics, solo: TrialMetrics, compared: Sequence[str], atol: float
) -> tuple[dict[str, float], int]:
    """Per compared metric the largest |trial - solo trial| over every epoch; the trials off by more than `atol`."""
    worst, off = dict.fromkeys(compared, 0.0), 0
    for trial_id, alone in solo.items():
        epochs = mine.get(trial_id, [])
        if len(epochs) != len(alone):
            return dict.fromkeys(compared, math.inf), len(solo)
        member = {
            key: max((abs(a[key] - b[key]) for a, b in zip(epochs, alone, strict=True)), default=0.0)
            for key in compared
        }
        worst = {key: max(worst[key], member[key]) for key in compared}
        off += max(member.values(), default=0.0) > atol
    return worst, off


def _one_study(stub: Any, body: dict[str, Any], trials: int) -> tuple[float, list[pb.Trial]]:
    wall, done = run_study(stub, body)
    finished = [t for t in done if t.state == pb.TRIAL_COMPLETED]
    if len(finished) != trials:
        raise RuntimeError(f"{len(finished)} of {trials} trials completed: {[t.error for t in done if t.error][:2]}")
    return wall, done


def measure_server(
    name: str, spec: dict[str, Any], trials: int, ks: Sequence[int], repeat: int, compared: Sequence[str], atol: float
) -> list[ServerRow]:
    """Every K's row for one workload, on a server of its own with two CPU slots."""
    handle = start_server(data_dir=Path(tempfile.mkdtemp(prefix="tuneyard-fused-server-")), cpu_slots=SLOTS)
    try:
        stub = service_pb2_grpc.TrainingServiceStub(grpc.insecure_channel(handle.address))
        warm = {**spec, "training": {**spec["training"], "epochs": 1}, "budget": {"max_trials": 2 * SLOTS}}
        _one_study(stub, study_body(warm, 2 * SLOTS, 1), 2 * SLOTS)
        _one_study(stub, study_body(warm, 2 * SLOTS, 2), 2 * SLOTS)
        walls: dict[int, list[float]] = {k: [] for k in ks}
        last: dict[int, list[pb.Trial]] = {}
        for _ in range(repeat):
            for k in ks:
                wall, last[k] = _one_study(stub, study_body(spec, trials, k), trials)
                walls[k].append(wall)
    finally:
        handle.stop()
    solo = _metrics(last[1])
    rows = []
    for k in ks:
        wall = statistics.median(walls[k])
        diff, off = _difference(_metrics(last[k]), solo, compared, atol) if k > 1 else (dict.fromkeys(compared, 0.0), 0)
        fused = sum(1 for t in last[k] if t.fused_group)
        rows.append(ServerRow(name, k, trials, wall, trials / wall, fused, diff, off))
    return rows


def print_server_table(rows: Sequence[ServerRow]) -> None:
    print(f"\nThrough the server, {SLOTS} CPU slots (wall from CreateStudy to the end of WatchStudy):")
    header = ("workload         ", " K", "trials", " wall s", "trials/s", "speedup", "fused trials", "max d val_acc")
    header = (*header, "max d val_loss", "trials > 1e-4")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("-" * (len(h) + 2) for h in header) + "|")
    solo = {r.workload: r.trials_per_s for r in rows if r.k == 1}
    for r in rows:
        print(
            f"| {r.workload:17s} | {r.k:2d} | {r.trials:6d} | {r.wall_s:7.2f} | {r.trials_per_s:8.3f} "
            f"| {r.trials_per_s / solo[r.workload]:6.2f}x | {r.fused_trials:12d} "
            f"| {r.max_diff['val_accuracy']:13.2e} | {r.max_diff['val_loss']:14.2e} | {r.off_members:13d} |"
        )


def server_summary(rows: Sequence[ServerRow]) -> dict[str, Any]:
    """Per workload: the solo study's trials/s, the best K's, its speedup, and the largest metric difference."""
    result: dict[str, Any] = {
        "slots": SLOTS,
        "solo_trials_per_s": {},
        "best_trials_per_s": {},
        "speedup_trials_per_s": {},
        "best_k": {},
    }
    for name in dict.fromkeys(r.workload for r in rows):
        mine = [r for r in rows if r.workload == name]
        base = next(r for r in mine if r.k == 1)
        best = max(mine, key=lambda r: r.trials_per_s)
        result["solo_trials_per_s"][name] = base.trials_per_s
        result["best_trials_per_s"][name] = best.trials_per_s
        result["speedup_trials_per_s"][name] = best.trials_per_s / base.trials_per_s
        result["best_k"][name] = best.k
    result["max_member_metric_difference"] = max((max(r.max_diff.values()) for r in rows), default=0.0)
    result["all_fused"] = all(r.fused_trials == r.trials for r in rows if r.k > 1)
    return result

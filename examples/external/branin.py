"""Evaluate anywhere: an external study on the Branin function, evaluated here with the SDK's `optimize`.

The server only suggests, judges and records; this process evaluates. `Client.optimize` creates the
study from branin.json (beside this file), runs two worker threads that each ask for a trial,
evaluate it and tell the server how it ended, and returns once the study has ended:

    python examples/external/branin.py --server 127.0.0.1:50051   # a running `tuneyard serve`
    python examples/external/branin.py --local                     # an in-process server, gone after

`tpe` needs the server's `[optuna]` extra; without optuna installed here the example asks for
`random` (pass `--searcher` to choose). Branin's minimum is 0.397887, at three points.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from tuneyard.client import Client, ExternalTrial, RunResult
from tuneyard.v1 import service_pb2 as pb

SPEC = Path(__file__).with_name("branin.json")


def branin(x: float, y: float) -> float:
    """Branin-Hoo on x in [-5, 10], y in [0, 15]."""
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (y - b * x**2 + c * x - 6) ** 2 + 10 * (1 - t) * math.cos(x) + 10


def evaluate(trial: ExternalTrial) -> dict[str, float]:
    """One trial: report its one step (the server's early stopper may answer STOP: `Pruned`), then
    return the final metrics. An exception here ends the trial FAILED with the traceback."""
    value = branin(trial.config["x"], trial.config["y"])
    trial.report(1, {"value": value})
    return {"value": value}


def default_searcher() -> str:
    return "tpe" if importlib.util.find_spec("optuna") is not None else "random"


def load(searcher: str, trials: int) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(SPEC.read_text())
    if searcher != spec["searcher"]["name"]:
        spec["searcher"] = {"name": searcher}  # the options are tpe's
    spec["budget"]["max_trials"] = trials
    return spec


def optimize(address: str, spec: dict[str, Any], workers: int, progress: bool) -> RunResult:
    with Client(address) as client:
        return client.optimize(spec, evaluate, n_workers=workers, progress=progress)


def optimize_local(spec: dict[str, Any], workers: int, progress: bool) -> RunResult:
    """The study on an in-process loopback server (as `tuneyard run --local`), with a throwaway store."""
    from tuneyard.server.app import start_server  # the [server] extra

    with tempfile.TemporaryDirectory(prefix="tuneyard-branin-", ignore_cleanup_errors=True) as data_dir:
        handle = start_server(data_dir=Path(data_dir), host="127.0.0.1", port=0, devices="cpu", cpu_slots=1)
        try:
            with Client(handle.address, token="") as client:
                return client.optimize(spec, evaluate, n_workers=workers, progress=progress)
        finally:
            handle.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--server", default=os.environ.get("TUNEYARD_SERVER", "127.0.0.1:50051"))
    where.add_argument("--local", action="store_true", help="start an in-process server for this run")
    parser.add_argument("--searcher", default=default_searcher())
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    spec = load(args.searcher, args.trials)
    progress = not args.no_progress
    if args.local:
        result = optimize_local(spec, args.workers, progress)
    else:
        result = optimize(args.server, spec, args.workers, progress)
    study = result.study
    if not result.succeeded:
        print(f"study {study.study_id} ended {pb.StudyState.Name(study.state)}: {study.error}", file=sys.stderr)
        return 1
    counts = study.trial_counts
    print(f"study {study.study_id}: {counts.completed} trials completed, {counts.failed} failed")
    print(f"best trial {study.best_trial.trial_id}: value {result.best_metrics['value']:.6f} at {result.best_config}")
    return 0


if __name__ == "__main__":  # the server's workers are spawned processes: they import this file
    sys.exit(main())

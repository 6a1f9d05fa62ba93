"""Early-stopping benchmark: the same random search on `digits`, without and with `asha`.

Both studies run on one real in-process server (CPU slots) with the same searcher seed, the
same training seed and the same search space, so they propose the same configurations and
train them identically; only the early stopper differs. Measured:

- epochs spent by each study (sum of its trials' ``epochs_completed``, from ListTrials);
- the no-stopping study's best val_accuracy (its best trial's final value);
- the epochs the ASHA study spent until it first showed a val_accuracy within 0.5 points of
  that: epochs are counted one per ``trial_progress`` event, in stream order, until one (or a
  ``trial_finished``) reaches ``best - 0.005``.

Target: ASHA reaches it within 40% of the no-stopping study's epochs. The last printed line
is one JSON object with the headline figures.

Usage: python bench/early_stopping.py [--quick] [--trials N] [--epochs E] [--slots S] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneyard.client import Client
from tuneyard.server.app import start_server
from tuneyard.v1 import service_pb2 as pb

TARGET_RATIO = 0.4
TOLERANCE = 0.005  # 0.5 accuracy points
METRIC = "val_accuracy"


def study_spec(trials: int, epochs: int, concurrency: int, seed: int, stopper: dict[str, Any] | None) -> dict:
    """Random search over a wide range: many configurations are useless, and show it early."""
    spec: dict[str, Any] = {
        "name": f"early-stopping-{stopper['name'] if stopper else 'none'}",
        "dataset": {"name": "digits"},
        "model": {"name": "simple_cnn", "options": {"num_conv_layers": 2}},
        "training": {
            "epochs": epochs,
            "batch_size": 64,
            "optimizer": {"name": "sgd", "options": {"lr": 0.01}},
            "seed": seed,
        },
        "search_space": [
            {"name": "optimizer.lr", "float_range": {"low": 1e-5, "high": 1.0, "log": True}},
            {"name": "optimizer.momentum", "float_range": {"low": 0.0, "high": 0.9}},
            {"name": "model.num_filters", "int_range": {"low": 4, "high": 32, "log": True}},
            {"name": "model.dropout", "float_range": {"low": 0.0, "high": 0.5}},
        ],
        "searcher": {"name": "random"},
        "objective": {"metric": METRIC, "mode": "MAXIMIZE"},
        "budget": {"max_trials": trials, "max_concurrent_trials": concurrency},
    }
    if stopper:
        spec["early_stopping"] = stopper
    return spec


@dataclass
class StudyRun:
    label: str
    study: pb.Study
    trials: list[pb.Trial]
    events: list[pb.StudyEvent]
    wall_s: float

    @property
    def total_epochs(self) -> int:
        return sum(t.epochs_completed for t in self.trials)

    def count(self, state: int) -> int:
        return sum(1 for t in self.trials if t.state == state)

    @property
    def best(self) -> float | None:
        values = [t.final_metrics[METRIC] for t in self.trials if t.state == pb.TRIAL_COMPLETED]
        return max(values) if values else None

    def epochs_to(self, target: float) -> int | None:
        """Epochs spent (one per trial_progress, in stream order) until one shows ``target``."""
        epochs = 0
        for event in self.events:
            kind = event.WhichOneof("event")
            if kind == "trial_progress":
                epochs += 1
                if event.trial_progress.metrics.get(METRIC, -1.0) >= target:
                    return epochs
            elif kind == "trial_finished" and event.trial_finished.trial.final_metrics.get(METRIC, -1.0) >= target:
                return epochs
        return None


def run_study(client: Client, label: str, spec: dict[str, Any]) -> StudyRun:
    events: list[pb.StudyEvent] = []
    started = time.perf_counter()
    result = client.run(spec, on_event=events.append)
    wall = time.perf_counter() - started
    if not result.succeeded:
        raise SystemExit(f"{label} study ended {pb.StudyState.Name(result.study.state)}: {result.study.error}")
    trials = list(client.list_trials(result.study.study_id))
    return StudyRun(label, result.study, trials, events, wall)


def table(runs: list[StudyRun], target: float) -> str:
    head = (
        f"{'study':<12} {'trials':>6} {'done':>5} {'pruned':>6} {'epochs':>7} {'best acc':>9} "
        f"{'epochs to target':>17} {'wall s':>7}"
    )
    rows = [head, "-" * len(head)]
    for r in runs:
        to_target = r.epochs_to(target)
        rows.append(
            f"{r.label:<12} {len(r.trials):>6} {r.count(pb.TRIAL_COMPLETED):>5} {r.count(pb.TRIAL_PRUNED):>6} "
            f"{r.total_epochs:>7} {r.best or 0:>9.4f} {'never' if to_target is None else to_target:>17} "
            f"{r.wall_s:>7.1f}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials and epochs (under 3 minutes)")
    parser.add_argument("--trials", type=int, help="trials per study (default 30, quick 12)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (default 12, quick 9)")
    parser.add_argument("--slots", type=int, default=2, help="CPU slots = concurrent trials (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="searcher and training seed (default 0)")
    parser.add_argument("--grace-period", type=int, default=1, help="asha grace_period (default 1)")
    parser.add_argument("--reduction-factor", type=int, default=3, help="asha reduction_factor (default 3)")
    args = parser.parse_args(argv)
    trials = args.trials or (12 if args.quick else 30)
    epochs = args.epochs or (9 if args.quick else 12)
    asha = {"name": "asha", "options": {"grace_period": args.grace_period, "reduction_factor": args.reduction_factor}}

    print(
        f"digits, simple_cnn, random search: {trials} trials x {epochs} epochs, {args.slots} CPU slots, "
        f"seed {args.seed}; asha {asha['options']}"
    )
    with tempfile.TemporaryDirectory() as data_dir:
        handle = start_server(data_dir=Path(data_dir), devices="cpu", cpu_slots=args.slots)
        try:
            with Client(handle.address) as client:
                # Warm the workers (imports, dataset cache) so that both studies' wall times compare.
                run_study(client, "warm-up", study_spec(args.slots, 1, args.slots, args.seed, None))
                runs = [
                    run_study(client, label, study_spec(trials, epochs, args.slots, args.seed, stopper))
                    for label, stopper in (("no stopping", None), ("asha", asha))
                ]
        finally:
            handle.stop()
    plain, stopped = runs
    if plain.best is None:
        raise SystemExit("the no-stopping study completed no trial")
    target = plain.best - TOLERANCE
    to_target = stopped.epochs_to(target)
    ratio = None if to_target is None else to_target / plain.total_epochs
    print(table(runs, target))
    print(f"target: val_accuracy >= {target:.4f} (no-stopping best {plain.best:.4f} - {TOLERANCE})")
    summary = {
        "trials": trials,
        "epochs_per_trial": epochs,
        "no_stopping_epochs": plain.total_epochs,
        "no_stopping_best": round(plain.best, 4),
        "no_stopping_epochs_to_target": plain.epochs_to(target),
        "asha_epochs_total": stopped.total_epochs,
        "asha_best": None if stopped.best is None else round(stopped.best, 4),
        "asha_epochs_to_target": to_target,
        "ratio": None if ratio is None else round(ratio, 4),
        "total_ratio": round(stopped.total_epochs / plain.total_epochs, 4),
        "target_ratio": TARGET_RATIO,
        "target_met": ratio is not None and ratio <= TARGET_RATIO,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

"""Population-based training (issue 18): `pbt` against random search + ASHA at equal epochs, on real training.

    .venv/bin/python bench/pbt.py            # 3 seeds, a population of 8 trials x 12 epochs (96 epochs a study)
    .venv/bin/python bench/pbt.py --quick    # 1 seed, 4 trials x 6 epochs

One real in-process server (``start_server(devices="cpu", cpu_slots=2)``, a temporary data dir),
driven through the SDK's ``Client``, trains every study: tuneyard's embedded `digits` (the server's
default splits; val and test 270 images each), `simple_cnn` (2 conv layers, 16 filters), SGD with
momentum 0.9, batch 64, **no learning-rate schedule**, searching only ``optimizer.lr`` in 1e-3..1
(log). A fixed learning rate is a compromise here: a large one learns fastest early and a small one
settles best late, so a method that can lower it while training has something to gain.

- ``pbt``: searcher `random`, ``early_stopping: pbt`` (interval ``--interval``, quantile 0.25,
  factors 0.8 / 1.2, resample probability 0.25, the study's seed): a population of ``--trials``
  trials of ``--epochs`` epochs, 2 at a time; every interval epoch a bottom-quartile trial goes on
  from a top-quartile trial's checkpoint with the lr perturbed or resampled.
- ``random_asha``: searcher `random` with ``early_stopping: asha`` (defaults: grace period 1,
  reduction factor 3), the same space, epochs and seed; it starts with ``--trials`` trials and is
  extended (``ExtendStudy``) by the trials its mean epochs per trial says are left, until its
  epochs trained (the sum of its trials' ``epochs_completed``) are within half a trial's mean of
  the pbt study's, so both spend the same epochs; both totals are in the table.

Per method and seed: the study's best trial's final ``val_accuracy`` (the server's ``best_trial``)
and the test accuracy the server measured for it (``Study.test_metrics``); the table shows the
median over seeds, then each seed. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneyard.v1 import service_pb2 as pb

METRIC = "val_accuracy"
METHODS = ("pbt", "random_asha")


@dataclass(frozen=True)
class Outcome:
    """One method's study on one seed, read back from the server."""

    method: str
    seed: int
    best_val_accuracy: float
    test_accuracy: float | None
    epochs: int  # sum of the trials' epochs_completed
    trials: int
    exploits: int  # PBT's config changes, all trials together
    best_lr: tuple[float, float]  # the best trial's lr in its first and last epoch
    wall_s: float


def study_spec(method: str, seed: int, trials: int, epochs: int, interval: int) -> dict[str, Any]:
    """The study both methods run; only the early stopper differs."""
    stopper: dict[str, Any] = {"name": "asha"}
    if method == "pbt":
        options = {"interval": interval, "quantile": 0.25, "perturbation_factors": [0.8, 1.2]}
        stopper = {"name": "pbt", "options": {**options, "resample_probability": 0.25}}
    return {
        "name": f"pbt-bench-{method}-{seed}",
        "dataset": {"name": "digits"},
        "model": {"name": "simple_cnn", "options": {"num_conv_layers": 2, "num_filters": 16}},
        "training": {
            "epochs": epochs,
            "batch_size": 64,
            "seed": seed,
            "optimizer": {"name": "sgd", "options": {"lr": 0.01, "momentum": 0.9}},
        },
        "search_space": [{"name": "optimizer.lr", "float_range": {"low": 1e-3, "high": 1.0, "log": True}}],
        "searcher": {"name": "random"},
        "early_stopping": stopper,
        "objective": {"metric": METRIC, "mode": "MAXIMIZE"},
        "budget": {"max_trials": trials, "max_concurrent_trials": 2},
    }


def finished(client: Any, study_id: str, after: int = 0) -> int:
    """Follows the study to its end; the last event's sequence (where an extension's watch starts)."""
    last = after
    for event in client.watch(study_id, after_sequence=after):
        last = event.sequence
    study = client.get_study(study_id)
    if study.state != pb.STUDY_COMPLETED:
        state = pb.StudyState.Name(study.state)
        raise SystemExit(f"study {study.spec.name} ended {state}: {study.error}")
    return last


def read(client: Any, method: str, seed: int, study_id: str, wall: float) -> Outcome:
    """The outcome as the server stored it."""
    study = client.get_study(study_id)
    trials = list(client.list_trials(study_id))
    best = study.best_trial
    lrs = [m.values["lr"] for m in best.metrics if "lr" in m.values]
    test = study.test_metrics.get("test_accuracy")
    return Outcome(
        method=method,
        seed=seed,
        best_val_accuracy=float(best.final_metrics[METRIC]),
        test_accuracy=None if test is None else float(test),
        epochs=sum(t.epochs_completed for t in trials),
        trials=len(trials),
        exploits=sum(len(t.config_history) for t in trials),
        best_lr=(lrs[0], lrs[-1]) if lrs else (float("nan"), float("nan")),
        wall_s=wall,
    )


def run_pbt(client: Any, seed: int, args: argparse.Namespace) -> Outcome:
    started = time.perf_counter()
    study = client.create_study(study_spec("pbt", seed, args.trials, args.epochs, args.interval))
    finished(client, study.study_id)
    return read(client, "pbt", seed, study.study_id, time.perf_counter() - started)


def run_asha(client: Any, seed: int, target: int, args: argparse.Namespace) -> Outcome:
    """random + ASHA, extended until its epochs are as close to ``target`` as whole trials allow."""
    started = time.perf_counter()
    study = client.create_study(study_spec("random_asha", seed, args.trials, args.epochs, args.interval))
    last = finished(client, study.study_id)
    while True:
        trials = list(client.list_trials(study.study_id))
        spent = sum(t.epochs_completed for t in trials)
        mean = spent / len(trials)
        left = target - spent
        if left < mean / 2:  # one more trial would, on average, overshoot more than it closes
            break
        response = client.extend_study(study.study_id, trials=max(1, int(left // mean)))
        last = finished(client, study.study_id, max(last, response.after_sequence))
    return read(client, "random_asha", seed, study.study_id, time.perf_counter() - started)


def measure(args: argparse.Namespace, tmp: Path) -> list[Outcome]:
    from tuneyard.client import Client
    from tuneyard.server.app import start_server

    outcomes = []
    handle = start_server(data_dir=tmp / "server", devices="cpu", cpu_slots=2)
    try:
        with Client(handle.address) as client:
            # Warm the workers (imports, dataset cache) first so that the walls compare.
            warm = {**study_spec("random_asha", 0, 2, 1, 1), "name": "pbt-bench-warm-up", "early_stopping": None}
            finished(client, client.create_study({k: v for k, v in warm.items() if v is not None}).study_id)
            for seed in range(args.seeds):
                pbt = run_pbt(client, seed, args)
                outcomes += [pbt, run_asha(client, seed, pbt.epochs, args)]
    finally:
        handle.stop()
    return outcomes


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


COLUMNS = (
    "method",
    "seed",
    "best val_acc",
    "test_acc",
    "epochs",
    "trials",
    "exploits",
    "best lr first -> last",
    "wall s",
)
WIDTHS = (6, *(len(c) for c in COLUMNS[2:]))  # after the method's column; "median" fits the seed's


def _row(cells: Sequence[str]) -> str:
    first, *rest = cells
    return "| " + " | ".join([f"{first:<11}", *(f"{c:>{w}}" for c, w in zip(rest, WIDTHS, strict=True))]) + " |"


def table(outcomes: Sequence[Outcome], args: argparse.Namespace) -> str:
    lines = [
        f"pbt vs random+asha: digits, simple_cnn, SGD (momentum 0.9, no lr schedule), optimizer.lr 1e-3..1 (log); "
        f"{args.seeds} seed(s); pbt population {args.trials} x {args.epochs} epochs, interval {args.interval}",
        _row(COLUMNS),
        _row(["-" * 11, *("-" * w for w in WIDTHS)]).replace(" ", "-"),
    ]
    for method in METHODS:
        mine = [o for o in outcomes if o.method == method]
        val = _median([o.best_val_accuracy for o in mine])
        test = _median([o.test_accuracy for o in mine])
        epochs = _median([o.epochs for o in mine])
        wall = sum(o.wall_s for o in mine)
        lines.append(_row([method, "median", _cell(val), _cell(test), f"{epochs or 0:.0f}", "", "", "", f"{wall:.1f}"]))
        for o in mine:
            lr = f"{o.best_lr[0]:.4g} -> {o.best_lr[1]:.4g}"
            cells = [_cell(o.best_val_accuracy), _cell(o.test_accuracy), str(o.epochs), str(o.trials), str(o.exploits)]
            lines.append(_row([method, str(o.seed), *cells, lr, f"{o.wall_s:.1f}"]))
    return "\n".join(lines)


def summary(outcomes: Sequence[Outcome], args: argparse.Namespace) -> dict[str, Any]:
    def per(field: str) -> dict[str, float | None]:
        return {m: _median([getattr(o, field) for o in outcomes if o.method == m]) for m in METHODS}

    best = per("best_val_accuracy")
    ours, theirs = best["pbt"], best["random_asha"]
    return {
        "benchmark": "pbt",
        "best_val_accuracy": best,
        "test_accuracy": per("test_accuracy"),
        "epochs": per("epochs"),
        "seeds": args.seeds,
        "trials": args.trials,
        "epochs_per_trial": args.epochs,
        "interval": args.interval,
        "pbt_beats_random_asha": ours is not None and theirs is not None and ours > theirs,
        "runs": [asdict(o) for o in outcomes],
    }


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 4 trials x 6 epochs, interval 2")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3; --quick 1)")
    parser.add_argument("--trials", type=int, default=None, help="pbt's population (default 8; --quick 4)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (default 12; --quick 6)")
    parser.add_argument("--interval", type=int, default=None, help="pbt's interval (default 3; --quick 2)")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.trials = args.trials or (4 if args.quick else 8)
    args.epochs = args.epochs or (6 if args.quick else 12)
    args.interval = args.interval or (2 if args.quick else 3)
    if args.trials < 2 or args.interval >= args.epochs:
        parser.error("pbt needs at least 2 trials and an interval below the epochs")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="tuneyard-pbt-bench-") as tmp:
        outcomes = measure(args, Path(tmp))
    print(table(outcomes, args))
    print(json.dumps(summary(outcomes, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

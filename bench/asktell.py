"""Ask/tell throughput and latency (issue 16): tuneyard's external studies against Optuna's ask/tell.

    .venv/bin/python bench/asktell.py             # 200 trials per system and sampler, 3 rounds
    .venv/bin/python bench/asktell.py --quick     # 60 trials
    .venv/bin/python bench/asktell.py --trials 10 --repeat 1 --searchers random   # a smoke run

Every system evaluates the same trivial function (a quadratic of two floats) on 2 worker threads in
this process, one system after another, rounds interleaved, with the same trial count and sampler,
after a short warm-up study of its own (imports, connections, first SQL statements):

- ``tuneyard``: an in-process ``start_server(devices="cpu", cpu_slots=1)`` and the SDK's
  ``Client.optimize(spec, fn, n_workers=2, progress=None)`` on a spec with ``external: {}``. The
  server commits each trial's start and end to its SQLite store (WAL, ``synchronous=NORMAL``: a
  commit survives the process's crash) before it answers. ``optimize`` tells a trial's end with its
  next ask (SuggestTrials' ``completions``): one round trip per trial, timed as an ask; a tell = a
  CompleteTrial round trip (a worker's last trial, when the study has no more to hand out).
- ``tuneyard_fsync``: the same with ``PRAGMA synchronous=FULL`` on the server's store connection (the
  WAL fsynced at every commit: durable against power loss, as Optuna's journal is).
- ``optuna_journal``: ``JournalStorage(JournalFileBackend(path))`` (every append fsynced), and
  ``optuna_sqlite``: ``RDBStorage("sqlite:///path")`` (SQLite's defaults: rollback journal,
  ``synchronous=FULL``). Two threads share one storage, as ``study.optimize(n_jobs=2)`` does, each
  looping ask -> ``suggest_float`` x2 -> evaluate -> tell. Ask = ``study.ask()`` plus the two
  suggestions (Optuna samples and stores the parameters there), tell = ``study.tell``.

Samplers: ``random`` (Optuna ``RandomSampler(seed)``) and ``tpe`` (``TPESampler(seed,
multivariate=True, constant_liar=True)``: tuneyard's ``tpe`` wraps the same sampler with these
defaults, so both sides sample with the same algorithm and settings). Wall =
from just before the study is created to the return of the last call that told a trial's end;
calls/tr = ask and tell calls per trial. Every store is read back
afterwards and must hold every trial COMPLETE. The fsync column is the disk's fsync latency, probed
before each system's runs (the disk is shared; Optuna's journal pays one per append). The table
comes first; the last line is one JSON object with every figure and, per sampler, the ratio
tuneyard trials/s / Optuna journal trials/s, and tuneyard_fsync's (issue 16's target: >= 1, both).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SYSTEMS = ("tuneyard", "tuneyard_fsync", "optuna_journal", "optuna_sqlite")
SEARCHERS = ("random", "tpe")
WORKERS = 2
WARMUP_TRIALS = 6
SEED = 7


def quadratic(x: float, y: float) -> float:
    """The trial's whole work: minimum 0 at (1, -2)."""
    return (x - 1.0) ** 2 + (y + 2.0) ** 2


@dataclass(frozen=True)
class Row:
    """One system on one sampler: throughput, latencies (ms) and what was stored."""

    system: str
    searcher: str
    trials: int
    wall_s: float
    trials_per_s: float
    calls_per_trial: float  # ask and tell calls per trial (an ask that tells counts once)
    ask_p50_ms: float | None
    ask_p99_ms: float | None
    tell_p50_ms: float | None
    tell_p99_ms: float | None
    stored_complete: int
    best: float
    fsync_ms: float  # the disk's fsync latency (median) probed just before this system's runs


class Timings:
    """Thread-safe lists of call durations (seconds), and the time the last tell returned."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: dict[str, list[float]] = {"ask": [], "tell": []}
        self.last_tell = 0.0

    @contextmanager
    def timed(self, kind: str, tells: bool | None = None) -> Iterator[None]:
        """Times one call of `kind`; `tells`: it told a trial's end (default: a "tell" does)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            end = time.perf_counter()
            with self._lock:
                self.calls[kind].append(end - start)
                if kind == "tell" if tells is None else tells:
                    self.last_tell = max(self.last_tell, end)


def percentile_ms(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0..100) of durations in seconds, in milliseconds; None: no calls."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1] * 1000


@dataclass(frozen=True)
class Run:
    """One measured study: its wall time, every call's duration, what was stored."""

    system: str
    searcher: str
    trials: int
    wall_s: float
    asks: tuple[float, ...]
    tells: tuple[float, ...]
    stored_complete: int
    best: float
    fsync_ms: float = float("nan")


def make_run(system: str, searcher: str, trials: int, wall: float, timings: Timings, stored: int, best: float) -> Run:
    asks, tells = tuple(timings.calls["ask"]), tuple(timings.calls["tell"])
    return Run(system, searcher, trials, wall, asks, tells, stored, best)


def fsync_ms(folder: Path, count: int = 40) -> float:
    """Median ms of a 64-byte append + fsync in ``folder`` (an Optuna journal append; a FULL commit)."""
    folder.mkdir(parents=True, exist_ok=True)
    times = []
    with open(folder / "fsync-probe", "ab") as probe:
        for _ in range(count):
            start = time.perf_counter()
            probe.write(b"x" * 63 + b"\n")
            probe.flush()
            os.fsync(probe.fileno())
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def combine(runs: list[Run]) -> Row:
    """The repeats of one system and sampler: the median wall; percentiles over every repeat's calls."""
    first = runs[0]
    wall = statistics.median(r.wall_s for r in runs)
    asks = [a for r in runs for a in r.asks]
    tells = [t for r in runs for t in r.tells]
    return Row(
        first.system, first.searcher, first.trials, wall, first.trials / wall,
        (len(asks) + len(tells)) / sum(r.trials for r in runs),
        percentile_ms(asks, 50), percentile_ms(asks, 99), percentile_ms(tells, 50), percentile_ms(tells, 99),
        min(r.stored_complete for r in runs), statistics.median(r.best for r in runs),
        statistics.median(r.fsync_ms for r in runs),
    )  # fmt: skip


def tuneyard_spec(searcher: str, trials: int) -> dict[str, Any]:
    return {
        "name": f"asktell-{searcher}",
        "external": {},
        "search_space": [
            {"name": "x", "float_range": {"low": -5, "high": 5}},
            {"name": "y", "float_range": {"low": -5, "high": 5}},
        ],
        "objective": {"metric": "value", "mode": "MINIMIZE"},
        "searcher": {"name": searcher},
        "budget": {"max_trials": trials, "max_concurrent_trials": WORKERS},
        "training": {"seed": SEED},
    }


def timed_client(address: str, timings: Timings) -> Any:
    """The SDK's Client, its SuggestTrials and CompleteTrial calls timed (the gRPC round trip). A
    SuggestTrials that carries completions (optimize tells a trial's end with its next ask) is an ask
    that also tells."""
    from tuneyard.client import Client

    kinds = {"SuggestTrials": "ask", "CompleteTrial": "tell"}

    class TimedClient(Client):
        def _call(self, method: str, request: Any) -> Any:
            kind = kinds.get(method)
            if kind is None:
                return super()._call(method, request)
            with timings.timed(kind, tells=kind == "tell" or bool(getattr(request, "completions", ()))):
                return super()._call(method, request)

    return TimedClient(address)


def tuneyard_study(address: str, searcher: str, trials: int) -> tuple[float, Timings, Any, str]:
    """One optimize over gRPC: (wall to the last tell, timings, result, study id)."""
    timings = Timings()
    with timed_client(address, timings) as client:
        start = time.perf_counter()
        spec = tuneyard_spec(searcher, trials)
        result = client.optimize(spec, lambda t: quadratic(t.config["x"], t.config["y"]), WORKERS, progress=None)
        study_id = result.study.study_id
        if not result.succeeded:
            raise RuntimeError(f"tuneyard study {study_id} ended {result.study.state}: {result.study.error}")
        stored = list(client.list_trials(study_id))
    return timings.last_tell - start, timings, stored, study_id


def run_tuneyard(system: str, searchers: list[str], trials: int, data_dir: Path) -> list[Run]:
    from tuneyard.server.app import start_server
    from tuneyard.v1 import service_pb2 as pb

    handle = start_server(data_dir=data_dir, devices="cpu", cpu_slots=1)
    if system == "tuneyard_fsync":  # every commit fsynced, as Optuna's journal fsyncs every append
        storage: Any = handle.storage
        with storage._lock:
            storage._db.execute("PRAGMA synchronous=FULL")
    rows = []
    try:
        for searcher in searchers:
            tuneyard_study(handle.address, searcher, WARMUP_TRIALS)
            wall, timings, stored, _ = tuneyard_study(handle.address, searcher, trials)
            done = [t for t in stored if t.state == pb.TRIAL_COMPLETED]
            best = min(t.final_metrics["value"] for t in done)
            rows.append(make_run(system, searcher, trials, wall, timings, len(done), best))
    finally:
        handle.stop()
    return rows


def optuna_storage(kind: str, path: Path) -> Any:
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if kind == "optuna_journal":
        return JournalStorage(JournalFileBackend(str(path.with_suffix(".log"))))
    return RDBStorage(f"sqlite:///{path.with_suffix('.db')}")


def optuna_sampler(searcher: str) -> Any:
    import optuna

    if searcher == "random":
        return optuna.samplers.RandomSampler(seed=SEED)
    # tuneyard's `tpe` defaults (multivariate, constant liar), so both sides run the same algorithm
    return optuna.samplers.TPESampler(seed=SEED, multivariate=True, constant_liar=True)


def optuna_worker(study: Any, take: Callable[[], bool], timings: Timings, errors: list[BaseException]) -> None:
    try:
        while take():
            with timings.timed("ask"):
                trial = study.ask()
                x = trial.suggest_float("x", -5, 5)
                y = trial.suggest_float("y", -5, 5)
            value = quadratic(x, y)
            with timings.timed("tell"):
                study.tell(trial, value)
    except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
        errors.append(exc)


def optuna_study(kind: str, searcher: str, trials: int, path: Path) -> tuple[float, Timings, Any]:
    """One ask/tell study on 2 threads sharing a storage: (wall to the last tell, timings, storage)."""
    import optuna

    storage = optuna_storage(kind, path)
    timings: Timings = Timings()
    errors: list[BaseException] = []
    left, lock = [trials], threading.Lock()

    def take() -> bool:
        with lock:
            left[0] -= 1
            return left[0] >= 0

    start = time.perf_counter()
    study = optuna.create_study(storage=storage, sampler=optuna_sampler(searcher), study_name="asktell")
    threads = [threading.Thread(target=optuna_worker, args=(study, take, timings, errors)) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return timings.last_tell - start, timings, storage


def optuna_stored(kind: str, path: Path) -> tuple[int, float]:
    """Read the study back from its file with a fresh storage object: (COMPLETE trials, best value)."""
    import optuna

    study = optuna.load_study(study_name="asktell", storage=optuna_storage(kind, path))
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    return len(done), min(float(t.value) for t in done if t.value is not None)


def run_optuna(kind: str, searchers: list[str], trials: int, folder: Path) -> list[Run]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for searcher in searchers:
        optuna_study(kind, searcher, WARMUP_TRIALS, folder / f"warmup-{kind}-{searcher}")
        path = folder / f"{kind}-{searcher}"
        wall, timings, storage = optuna_study(kind, searcher, trials, path)
        if hasattr(storage, "engine"):
            storage.engine.dispose()
        stored, best = optuna_stored(kind, path)
        rows.append(make_run(kind, searcher, trials, wall, timings, stored, best))
    return rows


COLUMNS = "system|searcher|trials|wall s|trials/s|calls/tr|ask p50|ask p99|tell p50|tell p99|stored|fsync ms".split("|")


def _width(column: int) -> int:
    return (14, 8)[column] if column < 2 else 8


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(f"{c:<{_width(i)}}" if i < 2 else f"{c:>{_width(i)}}" for i, c in enumerate(cells)) + " |"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(rows: list[Row], repeat: int) -> str:
    lines = [
        f"ask/tell: a trivial function, {WORKERS} worker threads, median wall of {repeat} round(s);"
        " latencies in ms (each call's round trip, every round's calls)",
        _line(COLUMNS),
        "|" + "|".join("-" * (_width(i) + 2) for i in range(len(COLUMNS))) + "|",
    ]
    for r in rows:
        cells = [
            r.system, r.searcher, str(r.trials), f"{r.wall_s:.2f}", f"{r.trials_per_s:.1f}", f"{r.calls_per_trial:.2f}",
            _ms(r.ask_p50_ms), _ms(r.ask_p99_ms), _ms(r.tell_p50_ms), _ms(r.tell_p99_ms),
            str(r.stored_complete), f"{r.fsync_ms:.2f}",
        ]  # fmt: skip
        lines.append(_line(cells))
    return "\n".join(lines)


def summary(rows: list[Row], trials: int, repeat: int) -> dict[str, Any]:
    """Every row, and per sampler each tuneyard system's trials/s over Optuna journal's: the target holds
    when both tuneyard rows (commits that survive a crash; and fsynced, as the journal's) reach it."""
    by = {(r.system, r.searcher): r for r in rows}

    def ratios(system: str) -> dict[str, float]:
        return {
            s: by[(system, s)].trials_per_s / by[("optuna_journal", s)].trials_per_s
            for s in SEARCHERS
            if (system, s) in by and ("optuna_journal", s) in by
        }

    plain, synced = ratios("tuneyard"), ratios("tuneyard_fsync")
    return {
        "trials": trials,
        "workers": WORKERS,
        "repeat": repeat,
        "rows": {f"{r.system}/{r.searcher}": asdict(r) for r in rows},
        "tuneyard_vs_optuna_journal_trials_per_s": plain,
        "tuneyard_fsync_vs_optuna_journal_trials_per_s": synced,
        "target": "tuneyard trials/s >= optuna_journal trials/s, every trial durable (also fsynced)",
        "target_met": bool(plain) and all(v >= 1 for v in [*plain.values(), *synced.values()]),
    }


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=None, help="trials per system and sampler (default 200)")
    parser.add_argument("--quick", action="store_true", help="60 trials")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {', '.join(SYSTEMS)}")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; walls are medians (default 3)")
    parser.add_argument("--searchers", default=",".join(SEARCHERS), help="comma-separated: random, tpe")
    args = parser.parse_args(argv)
    args.trials = args.trials or (60 if args.quick else 200)
    args.systems = [s for s in args.systems.split(",") if s]
    args.searchers = [s for s in args.searchers.split(",") if s]
    bad = [s for s in args.systems if s not in SYSTEMS] + [s for s in args.searchers if s not in SEARCHERS]
    if bad:
        parser.error(f"unknown: {', '.join(bad)}")
    return args


def measure(args: argparse.Namespace, folder: Path) -> list[Row]:
    """Every system in turn, ``--repeat`` rounds (interleaved, so load drifts hit all alike)."""
    runs: list[Run] = []
    for round_ in range(args.repeat):
        for system in args.systems:
            fsync = fsync_ms(folder)
            if system.startswith("tuneyard"):
                done = run_tuneyard(system, args.searchers, args.trials, folder / f"{system}-{round_}")
            else:
                done = run_optuna(system, args.searchers, args.trials, folder / f"optuna-{round_}")
            runs += [dataclasses.replace(run, fsync_ms=fsync) for run in done]
    for run in runs:
        if run.stored_complete != run.trials:
            raise RuntimeError(f"{run.system}/{run.searcher}: {run.stored_complete} of {run.trials} stored COMPLETE")
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.system, run.searcher), []).append(run)
    rows = [combine(group) for group in groups.values()]
    return sorted(rows, key=lambda r: (SEARCHERS.index(r.searcher), SYSTEMS.index(r.system)))


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="tuneyard-asktell-") as tmp:
        rows = measure(args, Path(tmp))
    print(table(rows, args.repeat))
    print(json.dumps(summary(rows, args.trials, args.repeat)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

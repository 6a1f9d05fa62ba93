"""What a huge discrete search space costs the server: a searcher's build, and a real server's CreateStudy.

    .venv/bin/python bench/space_size.py               # int_range [0, 6*10**7] plus a choice
    .venv/bin/python bench/space_size.py --high 1000   # any other upper bound

1. In process: the wall time and the peak resident-memory growth (``ru_maxrss``; tracemalloc would
   itself cost gigabytes on a list of 10**7 ints) of building the ``random`` searcher over the space
   (the registry's ``create``, as the study runner does) and of its first suggestion.
2. A real ``tuneyard serve`` subprocess: its resident memory before CreateStudy, its peak resident
   memory (``VmHWM``) over the study's run, and the slowest GetServerInfo that another client sent
   every 0.1 s meanwhile (the
   study runner shares the server's process, so a searcher that builds a long list stalls every RPC).

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support import ServerProcess, tiny_spec, to_proto  # noqa: E402

from tuneyard.plugins.api import Choice, IntRange, Objective, Parameter  # noqa: E402
from tuneyard.plugins.manager import PluginRegistry  # noqa: E402
from tuneyard.v1 import service_pb2 as pb  # noqa: E402


def in_process(high: int) -> dict[str, float]:
    """Seconds and peak resident-memory growth (MiB) of building the random searcher and its first suggestion."""
    registry = PluginRegistry.load(entry_points=False)
    space = (Parameter("n", IntRange(0, high)), Parameter("c", Choice(("a", "b"))))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    searcher = registry.create("searcher", "random", {}, space=space, objective=Objective("loss", "min"), seed=0)
    searcher.suggest(0)
    seconds = time.perf_counter() - started
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    return {"build_s": round(seconds, 4), "build_peak_mib": round(growth / 1024, 1)}


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _huge_spec(high: int) -> dict[str, Any]:
    return tiny_spec(
        training={"epochs": 1, "batch_size": 128, "optimizer": {"name": "adam", "options": {"lr": 0.01}}, "seed": 0},
        search_space=[
            {"name": "dataset.split_seed", "int_range": {"low": 0, "high": high}},
            {"name": "optimizer.name", "choice": {"values": ["sgd", "adam"]}},
        ],
        budget={"max_trials": 1, "max_concurrent_trials": 1},
    )


def _poll_server_info(stub: Any, done: threading.Event, latencies: list[float]) -> None:
    """GetServerInfo every 0.1 s until `done`, each answer's latency appended (the stall other clients see)."""
    while not done.is_set():
        started = time.perf_counter()
        stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=600)
        latencies.append(time.perf_counter() - started)
        done.wait(0.1)


def _wait_until_finished(stub: Any, study_id: str) -> Any:
    while True:
        got = stub.GetStudy(pb.GetStudyRequest(study_id=study_id), timeout=600)
        if got.state in (pb.STUDY_COMPLETED, pb.STUDY_FAILED, pb.STUDY_CANCELLED):
            return got
        time.sleep(0.2)


def server(high: int) -> dict[str, float]:
    """A real server's RSS growth and slowest GetServerInfo while a study over the space runs."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = ServerProcess(Path(tmp) / "data")
        try:
            stub = proc.stub()
            stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=60)
            rss_before = _status_kib(proc.proc.pid, "VmRSS")
            done = threading.Event()
            latencies: list[float] = []
            poller = threading.Thread(target=_poll_server_info, args=(stub, done, latencies))
            poller.start()
            started = time.perf_counter()
            try:
                study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(_huge_spec(high))), timeout=600)
                create_s = time.perf_counter() - started
                got = _wait_until_finished(stub, study.study_id)
            finally:
                done.set()
                poller.join()
            peak = _status_kib(proc.proc.pid, "VmHWM")
        finally:
            proc.stop()
    return {
        "create_s": round(create_s, 3),
        "slowest_server_info_s": round(max(latencies, default=0.0), 3),
        "rss_before_mib": round(rss_before / 1024, 1),
        "rss_growth_mib": round((peak - rss_before) / 1024, 1),
        "study_state": pb.StudyState.Name(got.state),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--high", type=int, default=6 * 10**7, help="upper bound of the int range")
    args = parser.parse_args()
    result: dict[str, Any] = {"high": args.high, **in_process(args.high)}
    print(
        f"random searcher, int_range [0, {args.high}] + choice: {result['build_s']} s, "
        f"peak RSS +{result['build_peak_mib']} MiB",
        flush=True,
    )
    result.update(server(args.high))
    print(
        f"server: CreateStudy {result['create_s']} s, slowest GetServerInfo {result['slowest_server_info_s']} s, "
        f"RSS {result['rss_before_mib']} MiB + {result['rss_growth_mib']} MiB peak growth, "
        f"study {result['study_state']}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""A bounded load test: concurrent studies train while clients read at a steady rate.

One `tuneyard serve` subprocess (2 CPU slots) runs 20 studies at once, each two tiny trials
(digits, 30 epochs of a few tens of milliseconds: on a 2-core machine the training spans the read
window, so the reads meet a busy server; with 1 epoch the studies end within ~12 s and the reads
meet an idle one). 5 client threads, each on its own connection, send 50 reads per second in all
(GetStudy, ListStudies, ListTrials, GetTrial, GetServerInfo in turn) for 60 s. Every read must
succeed and every study must complete. The p50/p99 latency table goes to stdout and to
bench/load_results.txt.

Skipped by `make test`; run it with `make test-load`. TUNEYARD_LOAD_STUDIES, _RATE, _SECONDS and
_EPOCHS change its size.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from support import REPO, tiny_spec, to_proto, watch_all

from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

Stub = service_pb2_grpc.TrainingServiceStub
STUDIES = int(os.environ.get("TUNEYARD_LOAD_STUDIES", "20"))
RATE = float(os.environ.get("TUNEYARD_LOAD_RATE", "50"))
SECONDS = float(os.environ.get("TUNEYARD_LOAD_SECONDS", "60"))
EPOCHS = int(os.environ.get("TUNEYARD_LOAD_EPOCHS", "30"))
READERS = 5
CPU_SLOTS = 2
RPC_DEADLINE_S = 30
RESULTS = REPO / "bench" / "load_results.txt"
READS = ["GetStudy", "ListStudies", "ListTrials", "GetTrial", "GetServerInfo"]

pytestmark = pytest.mark.load


@dataclass
class Record:
    """What the readers saw, shared between their threads."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in READS})
    errors: list[str] = field(default_factory=list)
    trials: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, rpc: str, seconds: float) -> None:
        with self.lock:
            self.latencies[rpc].append(seconds)

    def fail(self, rpc: str, err: grpc.RpcError) -> None:
        with self.lock:
            self.errors.append(f"{rpc}: {err.code().name}: {err.details()}")


def load_spec() -> dict[str, Any]:
    """Two tiny trials that train for real (digits, simple_cnn, EPOCHS epochs each)."""
    training = {"epochs": EPOCHS, "batch_size": 128, "optimizer": {"name": "adam"}, "seed": 0}
    return tiny_spec(name="load", training=training, budget={"max_trials": 2, "max_concurrent_trials": 2})


def read_call(stub: Stub, rpc: str, study_ids: list[str], record: Record, rng: random.Random) -> Callable[[], Any]:
    """The request for one read; GetTrial asks for a trial some earlier ListTrials returned."""
    study_id = rng.choice(study_ids)
    if rpc == "GetStudy":
        return lambda: stub.GetStudy(pb.GetStudyRequest(study_id=study_id), timeout=RPC_DEADLINE_S)
    if rpc == "ListStudies":
        return lambda: stub.ListStudies(pb.ListStudiesRequest(page_size=50), timeout=RPC_DEADLINE_S)
    if rpc == "ListTrials":
        return lambda: stub.ListTrials(pb.ListTrialsRequest(study_id=study_id), timeout=RPC_DEADLINE_S)
    if rpc == "GetTrial":
        study_id, trial_id = rng.choice(record.trials)
        request = pb.GetTrialRequest(study_id=study_id, trial_id=trial_id)
        return lambda: stub.GetTrial(request, timeout=RPC_DEADLINE_S)
    return lambda: stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=RPC_DEADLINE_S)


def reader(address: str, index: int, study_ids: list[str], record: Record, start: float) -> None:
    """Sends this thread's share of the reads on a fixed schedule, on its own connection."""
    rng = random.Random(index)
    interval = READERS / RATE
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = Stub(channel)
        for n in range(int(SECONDS * RATE / READERS)):
            time.sleep(max(0.0, start + (n + index / READERS) * interval - time.monotonic()))
            rpc = READS[(n + index) % len(READS)]
            if rpc == "GetTrial" and not record.trials:
                rpc = "ListTrials"
            call = read_call(stub, rpc, study_ids, record, rng)
            sent = time.perf_counter()
            try:
                reply = call()
            except grpc.RpcError as err:
                record.fail(rpc, err)
                continue
            record.add(rpc, time.perf_counter() - sent)
            if rpc == "ListTrials" and reply.trials:
                with record.lock:
                    record.trials.extend((t.study_id, t.trial_id) for t in reply.trials)


def watch_until_done(stub: Stub, study_id: str, start: float) -> tuple[int, float]:
    """The study's final state and when it ended, in seconds since the load started."""
    events = watch_all(stub, study_id)
    return events[-1].study_state.state, time.monotonic() - start


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def table(record: Record, finished: list[tuple[int, float]], wall_s: float, load_before: float) -> str:
    """The report: a latency row per RPC and overall, errors, and the studies' outcome."""
    completed = [at for state, at in finished if state == pb.STUDY_COMPLETED]
    reads = sum(len(v) for v in record.latencies.values()) + len(record.errors)
    lines = [
        f"tuneyard load test, {datetime.datetime.now().isoformat(timespec='seconds')}, "
        f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, grpcio {grpc.__version__}",
        f"server: tuneyard serve --devices cpu --cpu-slots {CPU_SLOTS} (subprocess, loopback)",
        f"load: {STUDIES} concurrent studies x 2 trials x {EPOCHS} epoch(s) (digits, simple_cnn); "
        f"reads at {RATE:g} RPC/s from {READERS} threads for {SECONDS:g} s",
        "",
        f"{'rpc':<14}{'count':>7}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}",
    ]
    rows = [(name, record.latencies[name]) for name in READS]
    rows.append(("all reads", [s for v in record.latencies.values() for s in v]))
    for name, values in rows:
        errors = sum(e.startswith(f"{name}:") for e in record.errors) if name in READS else len(record.errors)
        p50, p99, top = (percentile(values, 0.5), percentile(values, 0.99), max(values)) if values else (0, 0, 0)
        lines.append(f"{name:<14}{len(values):>7}{errors:>8}{p50 * 1e3:>9.1f}{p99 * 1e3:>9.1f}{top * 1e3:>9.1f}")
    lines += [
        "",
        f"reads sent: {reads} in {wall_s:.1f} s ({reads / wall_s:.1f} RPC/s); errors: {len(record.errors)}",
        f"machine load average (1 min): {load_before:.1f} before, {os.getloadavg()[0]:.1f} after",
        f"studies completed: {len(completed)}/{STUDIES}"
        + (f" (the last at {max(completed):.1f} s after submission)" if completed else ""),
        *record.errors[:10],
    ]
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(int(SECONDS) + 600)
def test_concurrent_studies_complete_while_reads_stay_error_free(server_process):
    server = server_process(None, "--cpu-slots", str(CPU_SLOTS))
    stub = server.stub()
    spec = to_proto(load_spec())
    study_ids = [stub.CreateStudy(pb.CreateStudyRequest(spec=spec), timeout=60).study_id for _ in range(STUDIES)]
    record = Record()
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    with ThreadPoolExecutor(STUDIES + READERS, thread_name_prefix="load") as pool:
        watches = [pool.submit(watch_until_done, stub, study_id, start) for study_id in study_ids]
        readers = [pool.submit(reader, server.address, i, study_ids, record, start) for i in range(READERS)]
        for done in readers:
            done.result()
        wall_s = time.monotonic() - start
        finished = [watch.result() for watch in watches]

    report = table(record, finished, wall_s, load_before)
    print("\n" + report)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(report)
    assert record.errors == []
    assert [state for state, _ in finished] == [pb.STUDY_COMPLETED] * STUDIES
    assert all(record.latencies[name] for name in READS)

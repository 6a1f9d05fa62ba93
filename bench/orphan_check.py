"""How long a server's worker processes outlive a SIGKILL of the server: idle, under CPU load, and stopped.

Each run starts `tuneyard serve` on 2 CPU slots with 4 packed trials (`gpus_per_trial: 0.5`, so 4
worker processes), waits until every trial has finished an epoch (each worker is training), SIGKILLs
the server and polls every worker pid each millisecond until it is gone (exited or a zombie).
Conditions: **idle**; **load**: `--load` busy-loop processes spin meanwhile (started once the trials
train, 2 s before the kill); **stopped**: every worker is SIGSTOPped before the kill, so none of its
threads can run (only the kernel can end it). A worker still alive after `--timeout` s counts as a
survivor and is killed by the script.

Usage: python bench/orphan_check.py [--runs 3] [--load 4] [--timeout 10] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc, spec_pb2

TARGET_MS = 500.0  # what the README promised before issue 13
WORKERS = 4
SPEC = {
    "name": "orphans",
    "dataset": {"name": "digits"},
    "model": {"name": "simple_cnn", "options": {"num_filters": 8}},
    "training": {"epochs": 10000, "batch_size": 32, "optimizer": {"name": "adam"}},
    "search_space": [{"name": "training.seed", "int_range": {"low": 0, "high": 1000}}],
    "objective": {"metric": "val_accuracy", "mode": "MAXIMIZE"},
    "budget": {"max_trials": WORKERS, "max_concurrent_trials": WORKERS},
    "resources": {"gpus_per_trial": 0.5},
}  # fmt: skip


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie runs nothing, it waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.rsplit(") ", 1)[1].startswith("Z")


def worker_pids(server_pid: int) -> list[int]:
    """The server's spawned workers (children running multiprocessing's spawn_main)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == server_pid and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


def start_server(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """`tuneyard serve` on 2 CPU slots; returns the process and the address from its banner."""
    cmd = [sys.executable, "-m", "tuneyard.client.cli", "serve", "--port", "0", "--data-dir", str(data_dir),
           "--devices", "cpu", "--cpu-slots", "2"]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"serving on (\S+)", line)
        if match:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # never let its pipe fill
            return proc, match.group(1)
    raise RuntimeError("the server exited before serving")


def wait_training(address: str, deadline_s: float = 300) -> None:
    """Creates the study and returns once each of its trials has finished an epoch."""
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.TrainingServiceStub(channel)
        study = stub.CreateStudy(pb.CreateStudyRequest(spec=json_format.ParseDict(SPEC, spec_pb2.StudySpec())))
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id)).trials
            if len(trials) == WORKERS and all(t.epochs_completed >= 1 for t in trials):
                return
            time.sleep(0.2)
    raise RuntimeError("the trials did not start training in time")


def survival(pids: list[int], timeout_s: float, started: float) -> dict[int, float]:
    """Seconds from `started` until each pid is gone; a survivor gets `inf` and is killed."""
    gone: dict[int, float] = {}
    while len(gone) < len(pids) and time.perf_counter() - started < timeout_s:
        for pid in pids:
            if pid not in gone and not alive(pid):
                gone[pid] = time.perf_counter() - started
        time.sleep(0.001)
    for pid in pids:
        if pid not in gone:
            gone[pid] = float("inf")
            for sig in (signal.SIGKILL, signal.SIGCONT):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
    return gone


def busy_loops(count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def one_run(condition: str, load: int, timeout_s: float) -> dict[str, Any]:
    """Starts a server, gets its workers training, SIGKILLs it and times each worker's end."""
    loops: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="orphan-check-") as data_dir:
        server, address = start_server(Path(data_dir))
        try:
            wait_training(address)
            pids = worker_pids(server.pid)
            if condition == "load":
                loops = busy_loops(load)
                time.sleep(2)
            if condition == "stopped":
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)
            loadavg = os.getloadavg()[0]
            started = time.perf_counter()
            server.kill()
            times = survival(pids, timeout_s, started)
        finally:
            for loop in loops:
                loop.kill()
                loop.wait()
            if server.poll() is None:
                server.kill()
            server.wait()
    return {"condition": condition, "workers": len(pids), "loadavg": loadavg, "seconds": sorted(times.values())}


def ms(seconds: float) -> str:
    return "survived" if seconds == float("inf") else f"{seconds * 1000:.0f}"


def print_table(rows: list[dict[str, Any]], timeout_s: float) -> None:
    print(
        f"worker survival after SIGKILL of the server, ms ({WORKERS} workers a run; "
        f"survived = still alive at {timeout_s:g} s)"
    )
    print(f"{'condition':<10} {'run':>3} {'load1':>6} {'workers':>7} {'min':>9} {'median':>9} {'max':>9}")
    for i, row in enumerate(rows):
        s = row["seconds"]
        print(f"{row['condition']:<10} {i:>3} {row['loadavg']:>6.1f} {row['workers']:>7} {ms(s[0]):>9} "
              f"{ms(statistics.median(s)):>9} {ms(s[-1]):>9}")  # fmt: skip


def summary(rows: list[dict[str, Any]], runs: int, load: int) -> dict[str, Any]:
    """Per condition: the largest and median survival (ms; null when a worker survived) and survivors."""
    out: dict[str, Any] = {"runs": runs, "workers_per_run": WORKERS, "busy_loops": load}
    for condition in ("idle", "load", "stopped"):
        times = [t for row in rows if row["condition"] == condition for t in row["seconds"]]
        finite = [t * 1000 for t in times if t != float("inf")]
        out[f"{condition}_survivors"] = len(times) - len(finite)
        out[f"{condition}_max_ms"] = round(max(finite), 1) if finite and len(finite) == len(times) else None
        out[f"{condition}_median_ms"] = round(statistics.median(finite), 1) if finite else None
        out[f"{condition}_loadavg"] = round(max(r["loadavg"] for r in rows if r["condition"] == condition), 2)
    worst = [out[f"{c}_max_ms"] for c in ("idle", "load", "stopped")]
    out["target_ms"] = TARGET_MS
    out["target_met"] = all(w is not None and w <= TARGET_MS for w in worst)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per condition")
    parser.add_argument("--load", type=int, default=4, help="busy-loop processes in the 'load' condition")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds after which a worker counts as a survivor")
    parser.add_argument("--quick", action="store_true", help="one run per condition")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    rows = [one_run(c, args.load, args.timeout) for c in ("idle", "load", "stopped") for _ in range(runs)]
    print_table(rows, args.timeout)
    print(json.dumps(summary(rows, runs, args.load)))


if __name__ == "__main__":
    main()

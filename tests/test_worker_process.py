"""Worker processes live as long as their server, and not longer."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from support import REPO

from tuneyard.server.devices import Device
from tuneyard.server.workers import Worker, read_tail, signal_name

CPU = Device(0, "cpu:0", "cpu", "cpu", "", 1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def test_worker_started_by_a_thread_that_ends_lives_on(tmp_path):
    """Regression: a runner thread that started a worker (packing) and then finished took the
    worker with it when the worker asked the kernel for a parent-death signal."""
    made: list[Worker] = []
    starter = threading.Thread(target=lambda: made.append(Worker(CPU, "", log_dir=tmp_path)))
    starter.start()
    starter.join()
    worker = made[0]
    try:
        time.sleep(3)
        assert worker.process.is_alive() and worker.processes_started == 1 and worker.restarts == 0
    finally:
        worker.close()


SERVER_STAND_IN = """
import sys, time
from tuneyard.server.devices import Device
from tuneyard.server.workers import Worker
worker = Worker(Device(0, "cpu:0", "cpu", "cpu", "", 1), "")
print(worker.pid, flush=True)
time.sleep(600)
"""


def test_worker_exits_when_its_server_is_killed():
    server = subprocess.Popen([sys.executable, "-c", SERVER_STAND_IN], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert server.stdout is not None
    pid = int(server.stdout.readline())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    server.kill()
    server.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.1)
    assert not alive(pid), "the orphaned worker kept running"


def test_stderr_tail_reads_only_this_task_and_at_most_fifty_lines(tmp_path):
    log = tmp_path / "worker.log"
    log.write_text("earlier task\n")
    offset = log.stat().st_size
    with log.open("a") as f:
        f.writelines(f"line {i}\n" for i in range(80))
    tail = read_tail(log, offset).splitlines()
    assert tail == [f"line {i}" for i in range(30, 80)]
    assert read_tail(log, log.stat().st_size) == ""
    assert read_tail(tmp_path / "missing.log", 0) == ""


def test_signal_names():
    assert signal_name(-9) == "SIGKILL" and signal_name(-11) == "SIGSEGV"
    assert signal_name(3) == "" and signal_name(None) == ""

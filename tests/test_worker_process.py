"""Worker processes live as long as their server, and not longer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from support import REPO, tiny_spec, to_proto

from tuneyard.plugins.api import Objective
from tuneyard.server.execution import forensics
from tuneyard.server.execution.devices import Device
from tuneyard.server.execution.forensics import WorkerLog, read_tail, signal_name
from tuneyard.server.execution.local_worker import Worker
from tuneyard.server.execution.messages import Crashed, Train, TrainTask
from tuneyard.server.execution.ray_pool import RayWorker
from tuneyard.server.execution.spawner import spawner
from tuneyard.server.execution.task_holder import RunningTask, sink_for
from tuneyard.v1 import service_pb2 as pb

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
from tuneyard.server.execution.devices import Device
from tuneyard.server.execution.local_worker import Worker
worker = Worker(Device(0, "cpu:0", "cpu", "cpu", "", 1), "")
print(worker.pid, flush=True)
time.sleep(600)
"""


# Prints the worker's pid once the worker is up (it has imported torch, so it asked for its
# parent-death signal long before).
READY_STAND_IN = """
import time
from tuneyard.server.execution.devices import Device
from tuneyard.server.execution.local_worker import Worker
worker = Worker(Device(0, "cpu:0", "cpu", "cpu", "", 1), "")
while not worker._ready:
    time.sleep(0.05)
print(worker.pid, flush=True)
time.sleep(600)
"""


def gone_within(pid: int, seconds: float) -> bool:
    """Polls until `pid` is gone; a generous bound, not a timing claim."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.05)
    return not alive(pid)


def kill_if_alive(pid: int) -> None:
    """Cleans up a worker a failing test left behind (stopped or wedged)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_stand_in(script: str) -> tuple[subprocess.Popen[str], int]:
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert server.stdout is not None
    pid = int(server.stdout.readline())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    return server, pid


def test_worker_exits_when_its_server_is_killed():
    server, pid = start_stand_in(SERVER_STAND_IN)
    server.kill()
    server.wait()
    try:
        assert gone_within(pid, 30), "the orphaned worker kept running"
    finally:
        kill_if_alive(pid)


def test_a_stopped_worker_is_killed_with_its_server():
    """Regression (issue 13): a worker that polled for its parent's death in a Python thread lived on
    for seconds under load. A stopped process runs no thread at all, yet the kernel's parent-death
    SIGKILL still ends it: only a kernel-delivered end passes this test."""
    server, pid = start_stand_in(READY_STAND_IN)
    try:
        os.kill(pid, signal.SIGSTOP)
        server.kill()
        server.wait()
        assert gone_within(pid, 10), "the stopped worker outlived its server"
    finally:
        kill_if_alive(pid)
        if server.poll() is None:
            server.kill()


def test_a_worker_wedged_holding_the_gil_mid_trial_dies_with_its_server(server_process, tmp_path):
    """Regression (issue 13): a real server, a trial whose model spins in native code without ever
    releasing the GIL (tests/fault_plugins/tuneyard_spin.py); SIGKILL of the server ends the worker."""
    pid_file = tmp_path / "spinning.pid"
    server = server_process(tmp_path / "data", env={"PYTHONPATH": str(REPO / "tests" / "fault_plugins")})
    spec = tiny_spec(
        model={"name": "spinning", "options": {"pid_file": str(pid_file)}},
        search_space=[],
        budget={"max_trials": 1},
    )
    server.stub().CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not pid_file.exists():
        time.sleep(0.1)
    pid = int(pid_file.read_text())
    try:
        assert pid in server.worker_pids()
        time.sleep(0.5)  # well inside the regex by now
        server.kill()
        assert gone_within(pid, 10), "the wedged worker outlived its server"
    finally:
        kill_if_alive(pid)


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


def test_worker_log_tails_only_the_current_task_and_empties_a_full_log_between_tasks(tmp_path, monkeypatch):
    path = tmp_path / "worker.log"
    path.write_text("earlier task\n")
    worker_log = WorkerLog(path)
    worker_log.start_task()
    with path.open("a") as f:
        f.write("this task\n")
    assert worker_log.task_tail() == "this task"
    monkeypatch.setattr(forensics, "LOG_ROTATE_BYTES", 10)
    worker_log.start_task()  # the log is past 10 bytes now: emptied, and the next task starts at 0
    assert path.read_bytes() == b""
    with path.open("a") as f:
        f.write("next task\n")
    assert worker_log.task_tail() == "next task"
    assert WorkerLog(None).task_tail() == ""


def test_a_late_message_of_an_earlier_task_finds_no_sink():
    received: list[object] = []
    task = RunningTask("trial-2", received.append)
    assert sink_for(task, "trial-2") is task.sink
    assert sink_for(task, "trial-1") is None and sink_for(None, "trial-2") is None


def test_one_spawner_thread_lives_on_after_the_threads_that_asked_for_it():
    asked: list[object] = []
    threads = [threading.Thread(target=lambda: asked.append(spawner())) for _ in range(3)]
    for thread in threads:
        thread.start()
        thread.join()
    assert len(asked) == 3 and all(s is spawner() for s in asked)
    assert [t.name for t in threading.enumerate()].count("worker-spawner") == 1


def test_signal_names():
    assert signal_name(-9) == "SIGKILL" and signal_name(-11) == "SIGSEGV"
    assert signal_name(3) == "" and signal_name(None) == ""


class _ActorlessRayWorker(RayWorker):
    """A Ray worker handle whose actor is never started: its handling of an actor's death, alone."""

    def _start_actor(self) -> None:
        self.actors_started = getattr(self, "actors_started", 0) + 1


def test_a_dead_ray_actor_crashes_the_task_it_held_whichever_stream_noticed() -> None:
    worker = _ActorlessRayWorker(CPU, 1.0, "")
    received: list[Any] = []
    worker._hold(Train(2, TrainTask(2, {}, "c.pt", Objective("val_loss", "min"))), received.append)
    worker._on_death(1, RuntimeError("actor died"))  # the stream of an earlier task on the same actor noticed
    assert [type(m) for m in received] == [Crashed] and received[0].key == 2 and received[0].reason == "crash"
    assert "actor died" in received[0].why and not worker.busy and worker.restarts == 1 and worker.actors_started == 2

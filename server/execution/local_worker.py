"""One long-lived spawned worker process of the local executor, bound to a device, replaced when it dies.

The process imports torch once and runs tasks one after another, so a task costs a pipe message,
not a process start. A reader thread forwards its messages (`messages.Epoch` and the task's final
message) to the sink given with the current task; when the process dies mid-task the sink gets
`messages.Crashed` and a fresh process takes its place. With `max_tasks` the worker is recycled (a
fresh process) after that many tasks.

Each process writes its stderr to `<log_dir>/<worker>.log`; a task's failure (`Error`, `Crashed`)
carries forensics (`forensics`): the task's stderr tail, and for a dead process the reason
("crash", "timeout", "stopped"), exit code and signal. `last_beat` is when the current task last
showed progress; the runner kills a worker whose task went quiet. Every process is started from the
one `spawner` thread, so Linux ends each with the server.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tuneyard.server.execution.devices import Device
from tuneyard.server.execution.forensics import WorkerLog, signal_name
from tuneyard.server.execution.messages import (
    Beat,
    Crashed,
    Done,
    Epoch,
    Error,
    FromWorker,
    Infeasible,
    Ready,
    Request,
    Shutdown,
    Sink,
    Stop,
    WorkerStart,
    task_key,
)
from tuneyard.server.execution.spawner import spawner
from tuneyard.server.execution.task_holder import TaskHolder, sink_for
from tuneyard.server.worker.main import worker_main

log = logging.getLogger(__name__)
_serial = itertools.count(1)


def _log_path(device: Device, log_dir: Path | None) -> Path | None:
    """A fresh log file name for a worker on `device`, in `log_dir` (made if missing); None without one."""
    if log_dir is None:
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    return log_dir / f"worker-{device.name.replace(':', '')}-{next(_serial)}.log"


class Worker(TaskHolder):
    """One process bound to a device, its pipe, and the thread reading it."""

    def __init__(
        self, device: Device, data_root: str, max_tasks: int = 0, log_dir: Path | None = None, plugins_dir: str = ""
    ) -> None:
        super().__init__(device)
        self._data_root, self._plugins_dir = data_root, plugins_dir
        self._max_tasks = max_tasks
        self._ctx = mp.get_context("spawn")
        self._log = WorkerLog(_log_path(device, log_dir))
        self._start_process()
        self._reader = threading.Thread(target=self._read_loop, name=f"worker-{device.name}", daemon=True)
        self._reader.start()

    def _start_process(self) -> None:
        parent, child = self._ctx.Pipe()
        start = WorkerStart(
            server_pid=os.getpid(),
            device=self.device.torch_device,
            cuda_visible=self.device.cuda_visible,
            threads=self.device.threads,
            data_root=self._data_root,
            log_path=str(self._log.path) if self._log.path else "",
            plugins_dir=self._plugins_dir,
        )
        self.process = self._ctx.Process(
            target=worker_main, args=(child, start), name=f"tuneyard-worker-{self.device.name}", daemon=False
        )
        self._ready = False  # until the process has imported torch and loaded the plugins
        spawner().start(self.process)
        self.processes_started += 1
        child.close()
        self._conn = parent
        self._tasks_this_process = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def starting(self) -> bool:
        return not self._ready

    def silent_for(self) -> float:
        """Seconds since the current task last showed progress; 0 when idle or still starting up
        (a fresh process importing torch is not the task's fault)."""
        if self._task is None or not self._ready:
            return 0.0
        return time.monotonic() - self.last_beat

    def submit(self, request: Request, sink: Sink) -> None:
        """Sends a task; its messages go to `sink`. The worker must be idle (the scheduler ensures it)."""
        with self._lock:
            self._hold(request, sink)
            self._log.start_task()
            try:
                self._conn.send(request)
            except (BrokenPipeError, OSError):
                pass  # the reader sees the death and reports the task as crashed

    def stop(self, key: Any) -> None:
        """Asks the worker to end task `key` at its next batch boundary (a `MemberKey`: one member of
        the fused group it runs)."""
        with self._lock:
            if sink_for(self._task, task_key(key)) is not None:
                try:
                    self._conn.send(Stop(key))
                except (BrokenPipeError, OSError):
                    pass

    def kill(self, reason: str = "crash") -> None:
        """Ends the process at once; a fresh one replaces it and the task ends "crashed" with `reason`
        ("timeout" for a task that stopped beating, "stopped" for one that ignored a stop)."""
        if self.process.is_alive():
            self._kill_reason = reason
            self.process.kill()

    def _read_loop(self) -> None:
        while True:
            try:
                msg: FromWorker = self._conn.recv()
            except (EOFError, OSError):
                if self._closing:
                    return
                self._on_death()
                continue
            match msg:
                case Ready():
                    self._ready, self.last_beat = True, time.monotonic()
                case Beat(key=key):
                    self._progress(key)
                case Epoch(key=key):
                    sink = self._progress(key)
                    if sink:
                        sink(msg)
                case Error():
                    self._end_task(replace(msg, stderr_tail=self._log.task_tail()))
                case Done() | Infeasible():
                    self._end_task(msg)

    def _progress(self, key: Any) -> Sink | None:
        """Notes that task `key` showed progress; its sink, or None when `key` is not the current task."""
        sink = self._sink(key)
        if sink is not None:
            self.last_beat = time.monotonic()
        return sink

    def _end_task(self, msg: Done | Error | Infeasible) -> None:
        self.tasks_done += 1
        self._tasks_this_process += 1
        if self._max_tasks and self._tasks_this_process >= self._max_tasks:
            self._recycle()
        sink = self._finish(msg.key)
        if sink:
            sink(msg)

    def _recycle(self) -> None:
        """Replaces the process after `max_trials_per_worker` tasks, before the next task arrives."""
        old, old_conn = self.process, self._conn
        try:
            old_conn.send(Shutdown())
        except (BrokenPipeError, OSError):
            pass
        old.join(10)
        if old.is_alive():
            old.kill()
            old.join(5)
        old_conn.close()
        self._start_process()

    def _on_death(self) -> None:
        self.process.join(timeout=5)
        code = self.process.exitcode
        reason, self._kill_reason = self._kill_reason or "crash", ""
        signame = signal_name(code)
        why = f"worker process {self.process.pid} died (exit code {code}{', ' + signame if signame else ''})"
        if reason == "timeout":
            why = f"worker process {self.process.pid} killed: its trial sent no heartbeat in time"
        log.warning("%s on %s; starting a new one", why, self.device.name)
        task = self._drop()
        tail = self._log.task_tail()  # before the new process writes to the log
        self.restarts += 1
        self._conn.close()
        self._start_process()
        if task is not None:
            task.sink(Crashed(task.key, why, reason, exit_code=code, exit_signal=signame, stderr_tail=tail))

    def close(self, timeout: float = 5.0) -> None:
        self._closing = True
        if self.starting:  # still importing torch: it holds nothing yet, and would hear Shutdown only when ready
            self.process.kill()
        else:
            try:
                self._conn.send(Shutdown())
            except (BrokenPipeError, OSError):
                pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self._conn.close()

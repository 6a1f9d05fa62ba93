"""The local executor: long-lived spawned worker processes bound to devices, replaced when they die.

Each worker imports torch once and runs trials one after another, so a trial costs a pipe
message, not a process start. A device gets one worker at start and more on demand when trials
are packed onto it (fractional `gpus_per_trial`). A reader thread per worker forwards its
messages (`messages.Epoch` and the task's final message) to the sink given with the current task;
when the process dies mid-task the sink gets `messages.Crashed` and a fresh process takes its
place. With `max_trials_per_worker` a worker is recycled (a fresh process) after that many tasks.

Each process writes its stderr to `<log_dir>/<worker>.log`; a task's failure (`Error`, `Crashed`)
carries forensics: the last STDERR_LINES lines written to stderr during the task, and for a dead
process the reason ("crash", "timeout", "stopped"), exit code and signal. `last_beat` is when
the current task last showed progress; the runner kills a worker whose task went quiet.

Every process is started from one thread (`Spawner`), so Linux ends each with the server (see
`worker._die_with_parent`), and a device never has more than MAX_WORKERS_PER_DEVICE workers: a
trial beyond them waits for one to come free.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import multiprocessing as mp
import os
import queue
import signal
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from tuneyard.server.execution.devices import Device
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
)
from tuneyard.server.worker.main import worker_main

log = logging.getLogger(__name__)
STDERR_LINES = 50
TAIL_BYTES = 64 * 1024  # enough for 50 long lines; the tail is read from the end of the log
LOG_ROTATE_BYTES = 16 * 1024 * 1024
# Each worker is a process of its own (~0.8 GB with torch imported); with 1/16 the smallest share a
# spec may ask for (limits.MIN_GPU_SHARE), 16 is what a full device of packed trials needs.
MAX_WORKERS_PER_DEVICE = 16
_serial = itertools.count(1)


class Spawner:
    """One thread that starts every worker process and lives as long as this process.

    A worker asks Linux to SIGKILL it when its parent dies, and for that signal the parent is the
    *thread* that started it: a runner thread (a packed trial's worker) or a worker's reader thread
    (a replacement) would take the worker with it when it ends, so no thread but this one starts one.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[BaseProcess, Future[None]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="worker-spawner", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            process, done = self._jobs.get()
            try:
                process.start()
            except BaseException as exc:  # noqa: BLE001 - the caller gets it; this thread goes on
                done.set_exception(exc)
            else:
                done.set_result(None)

    def start(self, process: BaseProcess) -> None:
        """Starts `process` from the spawner thread; returns once it is started (or raises why not)."""
        done: Future[None] = Future()
        self._jobs.put((process, done))
        done.result()


_spawner: Spawner | None = None
_spawner_lock = threading.Lock()


def spawner() -> Spawner:
    """This process's one spawner, started on first use."""
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = Spawner()
        return _spawner


def read_tail(path: Path, offset: int, lines: int = STDERR_LINES) -> str:
    """The last `lines` lines written to `path` after byte `offset`."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, 2)
            f.seek(max(offset, end - TAIL_BYTES))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def signal_name(exit_code: int | None) -> str:
    """The name ("SIGKILL") for exit code -9 (multiprocessing's way of saying a signal ended the process)."""
    if exit_code is None or exit_code >= 0:
        return ""
    try:
        return signal.Signals(-exit_code).name
    except ValueError:
        return f"signal {-exit_code}"


class Worker:
    """One process bound to a device, its pipe, and the thread reading it."""

    def __init__(self, device: Device, data_root: str, max_tasks: int = 0, log_dir: Path | None = None) -> None:
        self.device = device
        self._data_root = data_root
        self._max_tasks = max_tasks
        self._ctx = mp.get_context("spawn")
        self._lock = threading.Lock()
        self._task: tuple[Any, Sink] | None = None
        self._closing = False
        self._kill_reason = ""
        self._log_offset = 0
        self.last_beat = time.monotonic()
        self.log_path: Path | None = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = log_dir / f"worker-{device.name.replace(':', '')}-{next(_serial)}.log"
        self.restarts = 0
        self.tasks_done = 0
        self.processes_started = 0
        self._start_process()
        self._reader = threading.Thread(target=self._read_loop, name=f"worker-{device.name}", daemon=True)
        self._reader.start()

    def _start_process(self) -> None:
        parent, child = self._ctx.Pipe()
        info = {
            "server_pid": os.getpid(),
            "device": self.device.torch_device,
            "cuda_visible": self.device.cuda_visible,
            "threads": self.device.threads,
            "data_root": self._data_root,
            "log_path": str(self.log_path) if self.log_path else "",
        }
        self.process = self._ctx.Process(
            target=worker_main, args=(child, info), name=f"tuneyard-worker-{self.device.name}", daemon=False
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
    def busy(self) -> bool:
        return self._task is not None

    def silent_for(self) -> float:
        """Seconds since the current task last showed progress; 0 when idle or still starting up
        (a fresh process importing torch is not the task's fault)."""
        if self._task is None or not self._ready:
            return 0.0
        return time.monotonic() - self.last_beat

    def submit(self, request: Request, sink: Sink) -> None:
        """Sends a task; its messages go to `sink`. The worker must be idle (the scheduler ensures it)."""
        with self._lock:
            self._task = (request.key, sink)
            self._log_offset = self._log_size()
            self.last_beat = time.monotonic()
            try:
                self._conn.send(request)
            except (BrokenPipeError, OSError):
                pass  # the reader sees the death and reports the task as crashed

    def stop(self, key: Any) -> None:
        """Asks the worker to end task `key` at its next batch boundary."""
        with self._lock:
            if self._task and self._task[0] == key:
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

    def _log_size(self) -> int:
        """The log's size; a log grown past LOG_ROTATE_BYTES is emptied first (only between tasks)."""
        if self.log_path is None:
            return 0
        try:
            size = self.log_path.stat().st_size
            if size > LOG_ROTATE_BYTES:
                self.log_path.write_bytes(b"")  # the process appends (O_APPEND), so it goes on at 0
                return 0
            return size
        except OSError:
            return 0

    def _stderr_tail(self) -> str:
        return read_tail(self.log_path, self._log_offset) if self.log_path else ""

    def _finish(self, key: Any) -> Sink | None:
        with self._lock:
            if self._task and self._task[0] == key:
                sink = self._task[1]
                self._task = None
                return sink
            return None

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
                    self._end_task(replace(msg, stderr_tail=self._stderr_tail()))
                case Done() | Infeasible():
                    self._end_task(msg)

    def _progress(self, key: Any) -> Sink | None:
        """Notes that task `key` showed progress; its sink, or None when `key` is not the current task."""
        with self._lock:
            current = self._task is not None and self._task[0] == key
            sink = self._task[1] if current and self._task else None
        if current:
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
        with self._lock:
            task, self._task = self._task, None
        tail = self._stderr_tail()  # before the new process writes to the log
        self.restarts += 1
        self._conn.close()
        self._start_process()
        if task:
            key, sink = task
            sink(Crashed(key, why, reason, exit_code=code, exit_signal=signame, stderr_tail=tail))

    @property
    def closed(self) -> bool:
        return self._closing

    def close(self, timeout: float = 5.0) -> None:
        self._closing = True
        try:
            self._conn.send(Shutdown())
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self._conn.close()


class PooledWorkers:
    """Workers grouped by device, handed out one per trial share and given back after it.

    Both executors pool this way; a subclass says how to start a worker (`_new`) and which idle
    one may take a share (`_fits`)."""

    # Why a trial may not span several devices on this executor; empty when it may.
    single_device_only = ""

    def _init_pool(self, devices: list[Device], start_one: bool) -> None:
        self.devices = devices
        self._lock = threading.Lock()
        self._by_device: dict[int, list[Any]] = {d.index: ([self._new(d, 1.0)] if start_one else []) for d in devices}
        self._taken: set[int] = set()  # id() of workers handed out

    def _new(self, device: Device, share: float) -> Any:
        raise NotImplementedError

    def _fits(self, worker: Any, share: float) -> bool:
        return True

    @property
    def workers(self) -> list[Any]:
        with self._lock:
            return [w for ws in self._by_device.values() for w in ws]

    def _idle(self, device: Device) -> list[Any]:
        return [w for w in self._by_device[device.index] if id(w) not in self._taken]

    def has_room(self, device: Device) -> bool:
        """Whether `take` can hand out a worker on `device` now: one is idle, or fewer than
        MAX_WORKERS_PER_DEVICE exist there. The scheduler asks before it places a trial."""
        with self._lock:
            return len(self._by_device[device.index]) < MAX_WORKERS_PER_DEVICE or bool(self._idle(device))

    def take(self, device: Device, share: float = 1.0) -> Any:
        """An idle worker on `device` that fits `share`, else a new one; on a device that already has
        MAX_WORKERS_PER_DEVICE, the new one replaces an idle worker that does not fit."""
        retired = None
        with self._lock:
            workers, idle = self._by_device[device.index], self._idle(device)
            worker = next((w for w in idle if self._fits(w, share)), None)
            if worker is None:
                if len(workers) >= MAX_WORKERS_PER_DEVICE:
                    if not idle:
                        raise RuntimeError(f"{device.name}: all {len(workers)} workers are taken (ask has_room first)")
                    retired = idle[0]
                    workers.remove(retired)
                worker = self._new(device, share)
                workers.append(worker)
            self._taken.add(id(worker))
        if retired is not None:
            retired.close()
        return worker

    def give_back(self, worker: Any) -> None:
        with self._lock:
            self._taken.discard(id(worker))

    def counts(self, device: Device) -> tuple[int, int]:
        """(workers, taken workers) on a device."""
        with self._lock:
            workers = self._by_device[device.index]
            return len(workers), sum(id(w) in self._taken for w in workers)


class WorkerPool(PooledWorkers):
    """Every worker of the local executor, grouped by device; grows when trials are packed."""

    name = "local"

    def __init__(
        self, devices: list[Device], data_root: str = "", max_trials_per_worker: int = 0, log_dir: Path | None = None
    ) -> None:
        self._data_root = data_root
        self._max_tasks = max_trials_per_worker
        self._log_dir = log_dir
        self._init_pool(devices, start_one=True)
        # Workers are not daemonic (their DataLoaders start worker processes of their own), so
        # close them before multiprocessing joins its children at exit.
        atexit.register(self.close)

    def _new(self, device: Device, share: float) -> Worker:
        return Worker(device, self._data_root, self._max_tasks, self._log_dir)

    def nodes(self) -> list[dict[str, Any]]:
        """This machine, the only node of the local executor."""
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            memory = 0
        gpus = sum(1 for d in self.devices if d.kind == "cuda")
        host = socket.gethostname()
        return [
            {
                "node_id": host,
                "address": host,
                "alive": True,
                "cpus": float(os.cpu_count() or 1),
                "gpus": float(gpus),
                "memory_bytes": memory,
            }
        ]

    def close(self) -> None:
        for worker in self.workers:
            if not worker.closed:
                worker.close()

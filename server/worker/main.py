"""The worker process: imports torch once, then runs trials sent over its pipe, one after another.

It receives `Train`, `Evaluate`, `Stop` and `Shutdown` and sends `Ready`, `Beat` (at most every
HEARTBEAT_S while a task makes progress), `Epoch` and one final `Done`, `Error` or `Infeasible` per
task: the protocol of `messages`, shared with the Ray executor through `run_task`.

The process writes its stderr to its own log file (the server quotes a failed trial's part of
it), dumps a Python traceback there on a fatal signal, and dies with the server.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from tuneyard.server.execution.messages import (
    Beat,
    Done,
    Epoch,
    Error,
    Evaluate,
    EvaluateTask,
    FromWorker,
    Infeasible,
    MemberKey,
    Ready,
    Request,
    Shutdown,
    Stop,
    Train,
    TrainGroup,
    TrainGroupTask,
    TrainTask,
    WorkerStart,
    task_key,
)
from tuneyard.server.worker.allocator import keep_freed_memory
from tuneyard.server.worker.protocol import (
    GroupReport,
    GroupShouldStop,
    GroupTaskTrainer,
    Report,
    ShouldStop,
    TaskTrainer,
)

HEARTBEAT_S = 1.0
PARENT_CHECK_S = 0.5  # where the kernel cannot end this process with the server (not Linux)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _ask_kernel_to_kill_with_parent() -> bool:
    """Asks Linux for SIGKILL when the thread that started this process ends; False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _poll_parent(server_pid: int) -> None:
    """The fallback: a thread that exits this process once its parent is no longer `server_pid`."""

    def watch() -> None:
        while os.getppid() == server_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _die_with_parent(server_pid: int) -> None:
    """Ends this process when the server dies, even by SIGKILL, so an orphan never writes a
    checkpoint the restarted server is resuming from.

    On Linux the kernel sends the SIGKILL (PR_SET_PDEATHSIG), so it comes even while this process is
    stopped, busy in native code or holding the GIL. The signal fires when the *thread* that started
    the process ends, which is why every worker is started from one thread that lives as long as the
    server (`execution.spawner.Spawner`). A server that died before the request was made sends nothing: then
    the parent is already someone else, and this process exits at once. Elsewhere a thread polls.
    """
    by_kernel = _ask_kernel_to_kill_with_parent()
    if os.getppid() != server_pid:
        os._exit(0)
    if not by_kernel:
        _poll_parent(server_pid)


def _redirect_stderr(path: str) -> None:
    """Sends fd 2 (Python tracebacks, C libraries, faulthandler) to the worker's log file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    faulthandler.enable()


class Trainers:
    """The worker's `TaskTrainer`: each task goes to the trainer its settings name, the built-in
    trainer or a trainable's runner, and a fused group to the group trainer (made on first use); the
    worker protocol is the same for all."""

    def __init__(self, builtin: TaskTrainer, trainable: TaskTrainer, fused: Callable[[], Any] | None = None) -> None:
        self.builtin, self.trainable = builtin, trainable
        self._make_fused = fused
        self._fused: Any = None  # the group trainer, once a group came

    @property
    def heartbeat(self) -> Callable[[], None]:
        return self.builtin.heartbeat

    @heartbeat.setter
    def heartbeat(self, beat: Callable[[], None]) -> None:
        self.builtin.heartbeat = self.trainable.heartbeat = beat
        if self._fused is not None:
            self._fused.heartbeat = beat

    def train_group(self, group: TrainGroupTask, report: GroupReport, should_stop: GroupShouldStop) -> dict[str, Any]:
        """The group trained fused, or why `GroupTrainer.prepare` refuses it (nothing trained then)."""
        if self._make_fused is None:
            return {"refused": "this worker has no group trainer"}
        if self._fused is None:
            self._fused = self._make_fused()
            self._fused.heartbeat = self.builtin.heartbeat
        prepared = self._fused.prepare(group.tasks)  # built once: to check, then to train
        if isinstance(prepared, str):
            ids = ", ".join(str(task.trial_id) for task in group.tasks)
            print(f"trials {ids} cannot train fused: {prepared}", file=sys.stderr, flush=True)
            return {"refused": prepared}
        return {"members": self._fused.train_prepared(prepared, report, should_stop)}

    def train(self, task: TrainTask, report: Report, should_stop: ShouldStop) -> dict[str, Any]:
        from tuneyard.server.study.settings import TrainableSettings

        chosen = self.trainable if isinstance(task.settings, TrainableSettings) else self.builtin
        return chosen.train(task, report, should_stop)

    def evaluate(self, task: EvaluateTask) -> dict[str, float]:
        return self.builtin.evaluate(task)


def make_trainer(device: str, threads: int, data_root: str, plugins_dir: str = "") -> TaskTrainer:
    """Imports torch and the plugins (once per process) and builds the trainers for `device`; the
    process keeps the memory a step frees for the next (`allocator`)."""
    keep_freed_memory()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # lets deterministic trials run on CUDA
    if data_root:
        os.environ["TUNEYARD_DATA_ROOT"] = data_root  # where model plugins may read weight files
    import torch

    torch.set_num_threads(int(threads))
    from tuneyard.plugins.manager import PluginRegistry
    from tuneyard.server.worker.trainable import TrainableRunner
    from tuneyard.server.worker.trainer import Trainer

    registry = PluginRegistry.load(plugins_dir=plugins_dir)

    def fused() -> Any:
        from tuneyard.server.worker.fused.trainer import GroupTrainer

        return GroupTrainer(registry, device, data_root)

    builtin = Trainer(registry, device, data_root)
    return Trainers(builtin, TrainableRunner(registry, device, int(threads), data_root), fused)


def _train_group(
    trainer: TaskTrainer,
    request: TrainGroup,
    send: Callable[[FromWorker], None],
    stop_all: ShouldStop,
    member_stopped: Callable[[Any], bool],
) -> dict[str, Any]:
    """A fused group's task: each member's epochs sent under the group's key, naming the member."""
    if not isinstance(trainer, GroupTaskTrainer):
        raise TypeError(f"{type(trainer).__name__} cannot train fused groups")
    key = request.key

    def report(trial_id: int, epoch: int, metrics: dict[str, float]) -> None:
        send(Epoch(key, epoch, metrics, member=trial_id))

    def should_stop(trial_id: int) -> bool:
        return stop_all() or member_stopped(MemberKey(key, trial_id))

    return trainer.train_group(request.task, report, should_stop)


def run_task(
    trainer: TaskTrainer,
    request: Request,
    send: Callable[[FromWorker], None],
    stop_requested: Callable[[], bool],
    member_stopped: Callable[[Any], bool] = lambda key: False,
) -> None:
    """Runs one task, sending its messages (beats, epochs, and one final message) through `send`.

    Shared by the local worker process and the Ray actor, so both executors report alike.
    `member_stopped(MemberKey)`: one member of a fused group was asked to stop.
    """

    from tuneyard.plugins.api import Infeasible as InfeasibleConfig

    key = request.key
    last_beat = [0.0]

    def beat() -> None:
        now = time.monotonic()
        if now - last_beat[0] >= HEARTBEAT_S:
            last_beat[0] = now
            send(Beat(key))

    def should_stop() -> bool:
        beat()
        return stop_requested()

    def report(epoch: int, metrics: dict[str, float]) -> None:
        send(Epoch(key, epoch, metrics))

    trainer.heartbeat = beat
    try:
        match request:
            case Train(task=task):
                result: Any = trainer.train(task, report, should_stop)
            case TrainGroup():
                result = _train_group(trainer, request, send, should_stop, member_stopped)
            case Evaluate(task=task):
                result = trainer.evaluate(task)
        send(Done(key, result))
    except SystemExit:
        raise
    except InfeasibleConfig as exc:
        send(Infeasible(key, str(exc) or type(exc).__name__))
    except BaseException:  # noqa: BLE001 - the trial fails, the worker lives on
        send(Error(key, traceback.format_exc(limit=20)))


def worker_main(conn: Connection, start: WorkerStart) -> None:
    """Entry point of a spawned worker process."""
    _die_with_parent(start.server_pid)
    if start.log_path:
        _redirect_stderr(start.log_path)
    os.environ["CUDA_VISIBLE_DEVICES"] = start.cuda_visible
    trainer = make_trainer(start.device, start.threads, start.data_root, start.plugins_dir)
    conn.send(Ready(os.getpid()))
    pending_stop: set[Any] = set()

    def drain() -> None:
        while conn.poll():
            match conn.recv():
                case Stop(key=key):
                    pending_stop.add(key)
                case Shutdown():
                    raise SystemExit(0)

    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        match msg:
            case Shutdown():
                return
            case Train() | TrainGroup() | Evaluate():
                pending_stop.difference_update({k for k in pending_stop if task_key(k) == msg.key})

                def stop_requested(key: Any = msg.key) -> bool:
                    drain()
                    return key in pending_stop

                def member_stopped(key: Any) -> bool:
                    drain()
                    return key in pending_stop

                run_task(trainer, msg, conn.send, stop_requested, member_stopped)
            case _:
                continue  # a Stop of a task that already ended

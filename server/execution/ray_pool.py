"""The Ray executor: trials run in warm Ray actors anywhere on a Ray cluster.

The same interface as the local `WorkerPool`: the device scheduler asks for a worker per device
share and gets a `RayWorker`, which the runner drives exactly like a local worker. Each actor
requests `num_gpus` equal to the trial's share of a GPU (fractional included) — or a share of a CPU
on a cluster without GPUs — imports torch once, and runs trial after trial, streaming its
messages (`messages`) back through a Ray streaming generator (`worker.run_task` produces them, as
in a local worker process). An actor that dies — its process killed, its node lost, Ray's memory
monitor — ends its task `Crashed` (reason "oom" for the memory monitor) with Ray's explanation,
and a fresh actor takes its place.

The cluster's devices are its GPUs (or CPU slots) counted from `ray.cluster_resources()`; Ray
decides which node and GPU an actor lands on. Checkpoints must live on a path every node sees
(`tuneyard serve --checkpoint-dir`). A local Ray started by the server is confined to 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneyard.server.execution.devices import Device
from tuneyard.server.execution.forensics import STDERR_LINES
from tuneyard.server.execution.messages import (
    FINAL,
    Crashed,
    Done,
    Epoch,
    Error,
    FromWorker,
    Infeasible,
    Request,
    Sink,
    TaskMessage,
    task_key,
)
from tuneyard.server.execution.pooled import PooledWorkers
from tuneyard.server.execution.protocol import Node
from tuneyard.server.execution.task_holder import TaskHolder, sink_for
from tuneyard.server.worker.main import make_trainer, run_task

log = logging.getLogger(__name__)
RAY_TOKEN_FILE = Path.home() / ".ray" / "auth_token"


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install 'tuneyard[ray]'") from None
    return ray


class TrialActor:
    """Lives in a Ray worker process: the trainer, and the trial it runs now."""

    def __init__(self, device: str, threads: int, data_root: str, plugins_dir: str) -> None:
        self.trainer = make_trainer(device, threads, data_root, plugins_dir)
        self._stops: set[Any] = set()

    def pid(self) -> int:
        return os.getpid()

    def stop(self, key: Any) -> None:
        self._stops.add(key)

    def run(self, request: Request) -> Iterator[FromWorker]:
        """Runs the task in a thread (so `stop` can arrive meanwhile) and yields its messages."""
        key = request.key
        self._stops.discard(key)
        messages: queue.Queue[FromWorker] = queue.Queue()
        threading.Thread(
            target=run_task, args=(self.trainer, request, messages.put, lambda: key in self._stops), daemon=True
        ).start()
        while True:
            msg = messages.get()
            yield msg
            if isinstance(msg, FINAL):
                return


def cluster_devices(resources: dict[str, float], cpu_slots: int | None = None) -> list[Device]:
    """The cluster's GPUs as devices, or, without GPUs, its CPUs as slots (`cpu_slots` of them)."""
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if gpus:
        threads = max(1, cpus // gpus)
        return [
            Device(i, f"ray:gpu{i}", "cuda", "cuda:0", "", threads, 0, "a GPU of the Ray cluster") for i in range(gpus)
        ]
    count = cpu_slots or max(1, cpus)
    return [Device(i, f"ray:cpu{i}", "cpu", "cpu", "", 1, 0, "a CPU of the Ray cluster") for i in range(count)]


class RayWorker(TaskHolder):
    """A `TrialActor` seen through the local worker's interface (see `local_worker.Worker`)."""

    def __init__(self, device: Device, share: float, data_root: str, plugins_dir: str = "") -> None:
        super().__init__(device)
        self.share, self._data_root, self._plugins_dir = share, data_root, plugins_dir
        self._start_actor()

    def _start_actor(self) -> None:
        ray = _ray()
        resources = {"num_gpus": self.share} if self.device.kind == "cuda" else {"num_cpus": self.share}
        actor_class = ray.remote(TrialActor).options(max_concurrency=4, max_restarts=0, **resources)
        device = self.device
        self._actor = actor_class.remote(device.torch_device, device.threads, self._data_root, self._plugins_dir)
        self._pid: int | None = None
        self.processes_started += 1

    @property
    def pid(self) -> int | None:
        if self._pid is None:
            try:
                self._pid = _ray().get(self._actor.pid.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - not up yet, or dead: no pid to show
                return None
        return self._pid

    def silent_for(self) -> float:
        return time.monotonic() - self.last_beat if self._task is not None else 0.0

    @property
    def starting(self) -> bool:
        return False  # the actor's first call waits for it to start; its task's clock starts then

    def submit(self, request: Request, sink: Sink) -> None:
        with self._lock:
            self._hold(request, sink)
            stream = self._actor.run.options(num_returns="streaming").remote(request)
        threading.Thread(
            target=self._read, args=(request.key, stream), name=f"ray-{self.device.name}", daemon=True
        ).start()

    def _read(self, key: Any, stream: Any) -> None:
        ray = _ray()
        try:
            for ref in stream:
                msg: FromWorker = ray.get(ref)
                self.last_beat = time.monotonic()
                match msg:
                    case Epoch():
                        self._deliver(key, msg, final=False)
                    case Done() | Error() | Infeasible():  # an Error has no stderr tail here: Ray keeps the logs
                        self.tasks_done += 1
                        self._deliver(key, msg, final=True)
                        return
        except Exception as exc:  # noqa: BLE001 - the actor died: its task crashed
            self._on_death(key, exc)

    def _deliver(self, key: Any, msg: TaskMessage, final: bool) -> None:
        sink = self._finish(key) if final else self._sink(key)
        if sink is not None:
            sink(msg)

    def _on_death(self, key: Any, exc: Exception) -> None:
        """Ray's reason becomes the trial's forensics; a new actor replaces the dead one."""
        text = str(exc)
        reason = self._kill_reason or ("oom" if type(exc).__name__ == "OutOfMemoryError" else "crash")
        self._kill_reason = ""
        why = f"Ray actor on {self.device.name} died: {type(exc).__name__}: {text.splitlines()[0] if text else ''}"
        log.warning("%s; starting a new one", why)
        tail = "\n".join(text.splitlines()[-STDERR_LINES:])
        task = self._drop()
        self.restarts += 1
        if not self._closing:
            self._start_actor()
        if task is not None:  # whatever task the actor held died with it, even one newer than this stream
            task.sink(Crashed(task.key, why, reason, exit_code=None, exit_signal="", stderr_tail=tail))

    def stop(self, key: Any) -> None:
        """Asks the actor to end task `key` (a `MemberKey`: one member of the fused group it runs)."""
        with self._lock:
            if sink_for(self._task, task_key(key)) is not None:
                self._actor.stop.remote(key)

    def kill(self, reason: str = "crash") -> None:
        self._kill_reason = reason
        _ray().kill(self._actor, no_restart=True)

    def close(self, timeout: float = 5.0) -> None:
        self._closing = True
        try:
            _ray().kill(self._actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


def _use_ray_token_if_any() -> None:
    """Clusters started by `ray start` require Ray's own auth token when one exists (Ray >= 2.5x);
    a joining driver must then say so too, or the cluster refuses it."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or RAY_TOKEN_FILE.exists():
        os.environ["RAY_AUTH_MODE"] = "token"


class RayPool(PooledWorkers):
    """Every Ray worker of this server, grouped by device and share; the cluster it runs on."""

    name = "ray"
    single_device_only = (
        "a trial on the Ray executor uses at most one GPU (data-parallel trials need the local executor)"
    )

    def __init__(
        self, address: str = "", data_root: str = "", cpu_slots: int | None = None, plugins_dir: str = ""
    ) -> None:
        # Before Ray is imported: it reads these settings then.
        if address:
            _use_ray_token_if_any()
        else:
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keeps our own Ray on loopback
        ray = _ray()
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "namespace": "tuneyard"}
        if address:
            options["address"] = address
        else:
            options.update(_node_ip_address="127.0.0.1", num_cpus=os.cpu_count() or 1)
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            ray.init(**options)
        self._data_root, self._plugins_dir = data_root, plugins_dir  # on every node, as the data root
        self._init_pool(cluster_devices(ray.cluster_resources(), cpu_slots), start_one=False)

    def _new(self, device: Device, share: float) -> RayWorker:
        return RayWorker(device, share, self._data_root, self._plugins_dir)

    def _fits(self, worker: RayWorker, share: float) -> bool:
        """An actor holds the resources it was created with: only a trial of the same share fits."""
        return abs(worker.share - share) < 1e-9

    def nodes(self) -> list[Node]:
        """The cluster's nodes as GetServerInfo reports them."""
        return [
            Node(
                node_id=node["NodeID"],
                address=node["NodeManagerAddress"],
                alive=bool(node["Alive"]),
                cpus=float(node["Resources"].get("CPU", 0)),
                gpus=float(node["Resources"].get("GPU", 0)),
                memory_bytes=int(node["Resources"].get("memory", 0)),
            )
            for node in _ray().nodes()
        ]

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        if self._started_ray:
            _ray().shutdown()

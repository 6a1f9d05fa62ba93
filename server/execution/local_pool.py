"""The local executor: long-lived spawned worker processes (`local_worker.Worker`) bound to this machine's devices.

A device gets one worker at start and more on demand when trials are packed onto it (fractional
`gpus_per_trial`), up to `pooled.MAX_WORKERS_PER_DEVICE`: a trial beyond them waits for one to come
free. With `max_trials_per_worker` a worker is recycled (a fresh process) after that many tasks.
"""

from __future__ import annotations

import atexit
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tuneyard.server.execution.devices import Device
from tuneyard.server.execution.local_worker import Worker
from tuneyard.server.execution.mps import start_mps
from tuneyard.server.execution.pooled import PooledWorkers
from tuneyard.server.execution.protocol import Node

# tests/test_scheduling.py imports these two from here.


class WorkerPool(PooledWorkers):
    """Every worker of the local executor, grouped by device; grows when trials are packed."""

    name = "local"

    def __init__(
        self,
        devices: list[Device],
        data_root: str = "",
        max_trials_per_worker: int = 0,
        log_dir: Path | None = None,
        plugins_dir: str = "",
        mps_folder: Path | None = None,
    ) -> None:
        self._data_root, self._plugins_dir = data_root, plugins_dir
        self._max_tasks = max_trials_per_worker
        self._log_dir = log_dir
        # `--mps`: the daemon runs before any worker starts (they inherit its folders) and quits after the last.
        self._mps = start_mps(mps_folder, devices) if mps_folder is not None else None
        try:
            self._init_pool(devices, start_one=True)
        except BaseException:
            self.close()
            raise
        # Workers are not daemonic (their DataLoaders start worker processes of their own), so
        # close them before multiprocessing joins its children at exit.
        atexit.register(self.close)

    def _new(self, device: Device, share: float) -> Worker:
        return Worker(device, self._data_root, self._max_tasks, self._log_dir, self._plugins_dir)

    def nodes(self) -> list[Node]:
        """This machine, the only node of the local executor."""
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            memory = 0
        gpus = sum(1 for d in self.devices if d.kind == "cuda")
        host = socket.gethostname()
        return [Node(host, host, alive=True, cpus=float(os.cpu_count() or 1), gpus=float(gpus), memory_bytes=memory)]

    def close(self) -> None:
        """Closes every worker at once (each hears Shutdown and exits in about a second: closed one
        after another, a pool of many packed workers took tens of seconds to stop)."""
        open_workers = [worker for worker in getattr(self, "workers", []) if not worker.closed]
        if open_workers:
            with ThreadPoolExecutor(max_workers=len(open_workers), thread_name_prefix="close-worker") as closing:
                for done in [closing.submit(worker.close) for worker in open_workers]:
                    done.result()
        if self._mps is not None:
            self._mps.stop()
            self._mps = None

"""Workers grouped by device, handed out one per trial share: the bookkeeping both executors share."""

from __future__ import annotations

import threading
from typing import Any

from tuneyard.server.execution.devices import Device
from tuneyard.server.execution.protocol import WorkerCounts

# Each worker is a process of its own (~0.8 GB with torch imported); with 1/16 the smallest share a
# spec may ask for (limits.MIN_GPU_SHARE), 16 is what a full device of packed trials needs.
MAX_WORKERS_PER_DEVICE = 16


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

    def counts(self, device: Device) -> WorkerCounts:
        with self._lock:
            workers = self._by_device[device.index]
            return WorkerCounts(len(workers), sum(id(w) in self._taken for w in workers))

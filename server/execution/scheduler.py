"""Device scheduling: which share of which device each trial holds, and whose turn it is.

A trial asks for `units` of device: a fraction (0.5, 0.25: trials packed onto one device, each
with its own worker), one whole device, or several whole devices (a data-parallel trial, one
rank per device). A packed trial on a GPU is admitted only while the memory it needs (declared,
or measured on earlier trials of its study) fits beside its neighbours, and on any device only
while the pool can give it a worker there (at most `pooled.MAX_WORKERS_PER_DEVICE` per device).
Studies ask without blocking; one that got nothing is woken when capacity is released. Between
waiting studies the scheduler keeps a weighted fair share: capacity goes to the study holding the
least per unit of `priority`, so no study starves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from tuneyard.server.execution.devices import Device
from tuneyard.server.execution.gang import Gang
from tuneyard.server.execution.protocol import Executor, WorkerCounts, WorkerHandle

EPS = 1e-9


@dataclass
class Allocation:
    """What one trial holds: devices (in rank order), its share of each, and a worker per device."""

    study_id: str
    devices: tuple[Device, ...]
    share: float
    workers: list[WorkerHandle]
    holder: str = ""
    memory_bytes: int = 0  # GPU memory reserved on each device (packed trials)

    @property
    def units(self) -> float:
        return self.share * len(self.devices)

    @property
    def name(self) -> str:
        return "+".join(d.name for d in self.devices)

    @cached_property
    def gang(self) -> Gang:
        """The workers as one handle, the ranks of a data-parallel trial folded into one task."""
        return Gang(self.workers)


@dataclass(frozen=True)
class Occupancy:
    """One device now: the share of it in use, its workers, and who holds them (study/trial)."""

    device: Device
    share_in_use: float
    workers: WorkerCounts
    holders: list[str]


@dataclass
class _Demand:
    units: float
    memory_bytes: int
    priority: float
    wake: Callable[[], None]
    since: int


@dataclass
class _Usage:
    held: float = 0.0
    allocations: list[Allocation] = field(default_factory=list)


class DeviceScheduler:
    """Hands out device shares with workers; thread safe."""

    def __init__(self, devices: list[Device], pool: Executor) -> None:
        self.devices = devices
        self.pool = pool
        self._lock = threading.Lock()
        self._used = {d.index: 0.0 for d in devices}
        self._memory = {d.index: 0 for d in devices}
        self._usage: dict[str, _Usage] = {}
        self._waiting: dict[str, _Demand] = {}
        self._ticket = 0

    def check(self, units: float) -> str | None:
        """Why a request for `units` can never be met on this server, or None."""
        if units > 1 + EPS and self.pool.single_device_only:
            return self.pool.single_device_only
        if units > 1 + EPS and units > len(self.devices):
            return f"needs {units:g} devices; this server has {len(self.devices)}"
        return None

    def _memory_fits(self, device: Device, memory_bytes: int) -> bool:
        if not memory_bytes or not device.memory_bytes:
            return True
        return self._memory[device.index] + memory_bytes <= device.memory_bytes

    def _placement(self, units: float, memory_bytes: int = 0) -> tuple[tuple[Device, ...], float] | None:
        if units <= 1 + EPS:
            fitting = [
                d
                for d in self.devices
                if self._used[d.index] + units <= 1 + EPS
                and self._memory_fits(d, memory_bytes)
                and self.pool.has_room(d)
            ]
            if not fitting:
                return None
            # Pack: the fullest device that still fits, so whole devices stay free for big trials.
            best = max(fitting, key=lambda d: (self._used[d.index], -d.index))
            return (best,), units
        free = [d for d in self.devices if self._used[d.index] <= EPS and self.pool.has_room(d)]
        count = int(round(units))
        return (tuple(free[:count]), 1.0) if len(free) >= count else None

    def _ratio(self, study_id: str, priority: float) -> float:
        return self._usage.get(study_id, _Usage()).held / max(priority, EPS)

    def try_acquire(
        self, study_id: str, units: float, wake: Callable[[], None], priority: float = 1.0, memory_bytes: int = 0
    ) -> Allocation | None:
        """A share of the devices, or None; then `wake` is called when capacity is released.

        `memory_bytes` is what a packed trial needs on its GPU; whole devices ignore it.
        """
        units = units if units > 0 else 1.0
        memory_bytes = memory_bytes if units < 1 - EPS else 0
        with self._lock:
            placement = self._placement(units, memory_bytes)
            mine = self._ratio(study_id, priority)
            ahead = [
                (s, d)
                for s, d in self._waiting.items()
                if s != study_id
                and self._placement(d.units, d.memory_bytes) is not None
                and (self._ratio(s, d.priority), d.since) < (mine, self._waiting.get(study_id, d).since)
            ]
            if placement is None or ahead:
                if study_id not in self._waiting:
                    self._ticket += 1
                    self._waiting[study_id] = _Demand(units, memory_bytes, priority, wake, self._ticket)
                return None
            devices, share = placement
            for device in devices:
                self._used[device.index] += share
                self._memory[device.index] += memory_bytes
            self._waiting.pop(study_id, None)
            alloc = Allocation(study_id, devices, share, [self.pool.take(d, share) for d in devices], "", memory_bytes)
            usage = self._usage.setdefault(study_id, _Usage())
            usage.held += alloc.units
            usage.allocations.append(alloc)
            others_waiting = bool(self._waiting)
        if others_waiting:
            self._wake_all()  # what is left may fit another study
        return alloc

    def withdraw(self, study_id: str) -> None:
        """The study wants nothing more for now; others stop waiting for it."""
        with self._lock:
            demand = self._waiting.pop(study_id, None)
        if demand is not None:
            self._wake_all()

    def release(self, alloc: Allocation) -> None:
        """Returns the allocation's share and workers, and wakes the waiting studies."""
        with self._lock:
            for device in alloc.devices:
                self._used[device.index] = max(0.0, self._used[device.index] - alloc.share)
                self._memory[device.index] = max(0, self._memory[device.index] - alloc.memory_bytes)
            usage = self._usage.get(alloc.study_id)
            if usage is not None and alloc in usage.allocations:
                usage.allocations.remove(alloc)
                usage.held = max(0.0, usage.held - alloc.units)
                if not usage.allocations:
                    del self._usage[alloc.study_id]
        for worker in alloc.workers:
            self.pool.give_back(worker)
        self._wake_all()

    def _wake_all(self) -> None:
        with self._lock:
            wakes = [d.wake for d in sorted(self._waiting.values(), key=lambda d: d.since)]
        for wake in wakes:
            wake()

    def waiting_studies(self) -> int:
        """How many studies wait for a device share the scheduler cannot give yet."""
        with self._lock:
            return len(self._waiting)

    def occupancy(self) -> list[Occupancy]:
        """How each device is used now, for GetServerInfo."""
        with self._lock:
            holders: dict[int, list[str]] = {d.index: [] for d in self.devices}
            for usage in self._usage.values():
                for alloc in usage.allocations:
                    for device in alloc.devices:
                        holders[device.index].append(alloc.holder or alloc.study_id)
            used = dict(self._used)
        return [
            Occupancy(device, used[device.index], self.pool.counts(device), holders[device.index])
            for device in self.devices
        ]

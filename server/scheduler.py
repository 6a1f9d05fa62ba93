"""Device slots: which are free, which trial holds each, and who to wake when one frees up.

Slots come from CUDA devices (`--devices`) or, without CUDA, from `--cpu-slots`. Studies
ask without blocking; a study that got none is woken when a slot is released. (Weighted fair
share between studies is the device scheduler's next step.)
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable

from tuneyard.server.workers import Slot


def default_cpu_slots() -> int:
    """One slot per two cores, at least one."""
    return max(1, (os.cpu_count() or 1) // 2)


def cuda_device_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA means CPU slots
        return 0


def plan_slots(devices: str | None, cpu_slots: int | None) -> list[Slot]:
    """Turns `--devices` (`cpu`, `all`, `cuda:0,cuda:2`; default: all GPUs, else CPU) into slots."""
    spec = (devices or "").strip()
    if spec in ("", "all"):
        count = cuda_device_count()
        indices = list(range(count))
        if not indices and spec == "all":
            raise ValueError("--devices all: no CUDA device is visible")
    elif spec == "cpu":
        indices = []
    else:
        indices = []
        for part in spec.split(","):
            part = part.strip()
            if not part.startswith("cuda:") or not part[5:].isdigit():
                raise ValueError(f"--devices: expected cpu, all or cuda:N[,cuda:M], got {part!r}")
            indices.append(int(part[5:]))
        available = cuda_device_count()
        missing = [i for i in indices if i >= available]
        if missing:
            raise ValueError(f"--devices: cuda:{missing[0]} does not exist ({available} CUDA devices visible)")
    cores = os.cpu_count() or 1
    if indices:
        return [Slot(i, f"cuda:{d}", "cuda:0", str(d), max(1, cores // len(indices))) for i, d in enumerate(indices)]
    count = cpu_slots or default_cpu_slots()
    if count < 1:
        raise ValueError("--cpu-slots must be at least 1")
    return [Slot(i, f"cpu:{i}", "cpu", "", max(1, cores // count)) for i in range(count)]


class SlotScheduler:
    """Hands out free slots; thread safe."""

    def __init__(self, slots: list[Slot]) -> None:
        self.slots = slots
        self._lock = threading.Lock()
        self._holders: dict[int, str] = {}  # slot index -> "study_id/trial"
        self._waiting: deque[tuple[str, Callable[[], None]]] = deque()

    def try_acquire(self, study_id: str, wake: Callable[[], None]) -> Slot | None:
        """A free slot, or None; then `wake` is called once when a slot frees up."""
        with self._lock:
            for slot in self.slots:
                if slot.index not in self._holders:
                    self._holders[slot.index] = study_id
                    return slot
            if all(s != study_id for s, _ in self._waiting):
                self._waiting.append((study_id, wake))
            return None

    def label(self, slot: Slot, holder: str) -> None:
        """Records which trial holds the slot, for `GetServerInfo`."""
        with self._lock:
            self._holders[slot.index] = holder

    def release(self, slot: Slot) -> None:
        """Frees the slot and wakes every waiting study in arrival order; each asks again."""
        with self._lock:
            self._holders.pop(slot.index, None)
            waiting, self._waiting = list(self._waiting), deque()
        for _, wake in waiting:
            wake()

    def occupancy(self) -> list[tuple[Slot, str | None]]:
        with self._lock:
            return [(s, self._holders.get(s.index)) for s in self.slots]

"""The devices trials run on: CUDA GPUs picked with `--devices`, or CPU slots standing in for them.

The server learns the GPUs from one short child interpreter at start-up, so that only worker
processes ever import torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    """One device. Workers bound to it see it as their only device (`torch_device`)."""

    index: int
    name: str  # shown to users: "cpu:0", "cuda:1"
    kind: str  # "cpu" or "cuda"
    torch_device: str  # inside the worker: "cpu" or "cuda:0"
    cuda_visible: str  # CUDA_VISIBLE_DEVICES of its workers; "" hides every GPU
    threads: int  # torch threads of each of its workers
    memory_bytes: int = 0
    description: str = ""


class DeviceProbeError(RuntimeError):
    """The devices could not be found (the probe died or hung): the server cannot start as asked."""


def default_cpu_slots() -> int:
    """One slot per two cores, at least one."""
    return max(1, (os.cpu_count() or 1) // 2)


# Run in a child interpreter: the server process itself never imports torch (only its workers do).
# It prints [[name, memory_bytes], ...] for every visible CUDA device; no usable CUDA prints [].
_PROBE = """
import json
try:
    import torch

    found = [
        [torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory]
        for i in range(torch.cuda.device_count())
    ] if torch.cuda.is_available() else []
except Exception:  # no torch or no usable CUDA: CPU slots
    found = []
print(json.dumps(found))
"""
PROBE_TIMEOUT_S = 120.0  # importing torch and initialising CUDA take seconds, not minutes


def _cuda() -> list[tuple[str, int]]:
    """(name, memory) of every visible CUDA device; empty without CUDA.

    Asked of a short child process so the server never imports torch; DeviceProbeError when that child
    hangs or dies, since then the devices are unknown rather than absent.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise DeviceProbeError(f"finding the CUDA devices took over {PROBE_TIMEOUT_S:g} s; try --devices cpu") from None
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except (IndexError, ValueError):
        found = None
    if not isinstance(found, list):
        tail = (done.stderr or done.stdout).strip()[-500:]
        raise DeviceProbeError(f"finding the CUDA devices failed (exit status {done.returncode}): {tail}")
    return [(str(name), int(memory)) for name, memory in found]


def plan_devices(devices: str | None, cpu_slots: int | None) -> list[Device]:
    """Turns `--devices` (`cpu`, `all`, `cuda:0,cuda:2`; default: all GPUs, else CPU) into devices."""
    spec = (devices or "").strip()
    cores = os.cpu_count() or 1
    if spec == "cpu":
        indices: list[int] = []
        visible: list[tuple[str, int]] = []
    else:
        visible = _cuda()
        if spec in ("", "all"):
            indices = list(range(len(visible)))
            if not indices and spec == "all":
                raise ValueError("--devices all: no CUDA device is visible")
        else:
            indices = []
            for part in spec.split(","):
                part = part.strip()
                if not part.startswith("cuda:") or not part[5:].isdigit():
                    raise ValueError(f"--devices: expected cpu, all or cuda:N[,cuda:M], got {part!r}")
                indices.append(int(part[5:]))
            missing = [i for i in indices if i >= len(visible)]
            if missing:
                raise ValueError(f"--devices: cuda:{missing[0]} does not exist ({len(visible)} CUDA devices visible)")
    if indices:
        threads = max(1, cores // len(indices))
        return [
            Device(i, f"cuda:{d}", "cuda", "cuda:0", str(d), threads, visible[d][1], visible[d][0])
            for i, d in enumerate(indices)
        ]
    count = cpu_slots or default_cpu_slots()
    if count < 1:
        raise ValueError("--cpu-slots must be at least 1")
    return [Device(i, f"cpu:{i}", "cpu", "cpu", "", max(1, cores // count), 0, "CPU slot") for i in range(count)]

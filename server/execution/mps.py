"""NVIDIA's Multi-Process Service for the server's life (`tuneyard serve --mps`).

Packed worker processes on one GPU (`gpus_per_trial` < 1) each get their own CUDA context, whose
kernels the GPU time-slices; under MPS their kernels run side by side. The server starts the
control daemon (`nvidia-cuda-mps-control -d`) before its workers, with its pipe and log folders in
the data directory, exports them to the workers it spawns (they inherit the environment), and
quits the daemon when it stops. No daemon binary, or no CUDA device, is a clear error at start.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tuneyard.server.execution.devices import Device

log = logging.getLogger(__name__)

CONTROL = "nvidia-cuda-mps-control"
TIMEOUT_S = 30.0


class MpsError(ValueError):
    """MPS cannot run here; the message says what is missing."""


@dataclass(frozen=True)
class MpsDaemon:
    """A running MPS control daemon and the environment that reaches it."""

    control: str
    env: dict[str, str]

    def stop(self) -> None:
        """Asks the daemon to quit (it ends its MPS servers once their clients have gone)."""
        try:
            subprocess.run([self.control], input="quit\n", text=True, env=self.env, timeout=TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("the MPS control daemon did not quit: %s", exc)
        for name in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
            if os.environ.get(name) == self.env[name]:
                del os.environ[name]


def start_mps(folder: Path, devices: Sequence[Device]) -> MpsDaemon:
    """Starts the daemon for these planned devices (one of them CUDA), its folders under `folder`."""
    if not any(device.kind == "cuda" for device in devices):
        raise MpsError("--mps shares GPUs between worker processes: this server plans no CUDA device")
    control = shutil.which(CONTROL)
    if control is None:
        raise MpsError(f"--mps needs NVIDIA's {CONTROL} on PATH (it comes with the CUDA driver): none found")
    pipe, logs = folder / "pipe", folder / "log"
    for each in (pipe, logs):
        each.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(logs)}
    try:
        done = subprocess.run(
            [control, "-d"], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MpsError(f"{CONTROL} -d did not start: {exc}") from exc
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"
        raise MpsError(f"{CONTROL} -d failed: {why} (see {logs})")
    os.environ.update({"CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(logs)})
    log.info("MPS control daemon started (pipe %s, log %s)", pipe, logs)
    return MpsDaemon(control, env)

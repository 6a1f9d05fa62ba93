"""Shared fixtures: real servers on loopback ports chosen by the OS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import ServerProcess

from tuneyard.v1 import service_pb2_grpc


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One in-process server for the session (2 CPU slots, warm workers)."""
    from tuneyard.server.app import start_server

    handle = start_server(data_dir=tmp_path_factory.mktemp("server-data"), devices="cpu", cpu_slots=2)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module's tests, as a worker on one CPU slot: tiny models gain nothing
    from two, their spin-waits stall on a busy 2-core machine, and CPU kernels then round alike."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def channel(server: Any) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> service_pb2_grpc.TrainingServiceStub:
    return service_pb2_grpc.TrainingServiceStub(channel)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Any]:
    """Factory: `server_process(data_dir=None, *extra_args, env=None)` starts a `tuneyard serve` subprocess."""
    started: list[ServerProcess] = []

    def start(data_dir: Path | None = None, *extra: str, env: dict[str, str] | None = None) -> ServerProcess:
        proc = ServerProcess(data_dir or tmp_path / "data", *extra, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()

"""A file written at once (`server.worker.atomic_file`): the swap on Linux and the rename elsewhere."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest

from tuneyard.server.worker import atomic_file


@pytest.fixture(params=["exchange", "rename"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with the swap (where this machine has it) and with the plain rename."""
    if request.param == "rename":
        monkeypatch.setattr(atomic_file, "_exchange", None)
    elif atomic_file._exchange is None:
        pytest.skip("this machine has no renameat2")
    return str(request.param)


def test_a_new_file_is_written(tmp_path: Path, way: str) -> None:
    target = tmp_path / "checkpoint.pt"
    atomic_file.write_atomically(target, b"first")
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_an_existing_file_is_replaced_and_no_temporary_file_is_left(tmp_path: Path, way: str) -> None:
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")
    atomic_file.write_atomically(target, memoryview(b"new bytes"))
    assert target.read_bytes() == b"new bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert (atomic_file._exchange is not None) == (way == "exchange")  # swapped, not fallen back


def test_a_reader_that_opened_the_old_file_reads_it_to_its_end(tmp_path: Path, way: str) -> None:
    """A download streaming a checkpoint while its trial writes the next one gets one whole file."""
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"o" * 100_000)
    with target.open("rb") as reader:
        head = reader.read(10)
        atomic_file.write_atomically(target, b"n" * 50)
        assert head + reader.read() == b"o" * 100_000
    assert target.read_bytes() == b"n" * 50


def test_a_missing_temporary_file_is_an_error_and_the_target_is_kept(tmp_path: Path, way: str) -> None:
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"kept")
    with pytest.raises(FileNotFoundError):
        atomic_file.replace(tmp_path / "absent.tmp", target)
    assert target.read_bytes() == b"kept"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the swap is Linux's")
def test_a_file_system_that_refuses_the_swap_falls_back_to_the_rename_from_then_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bytes] = []

    def refusing(src_dir: int, src: bytes, dst_dir: int, dst: bytes, flags: int) -> int:
        calls.append(dst)
        import ctypes

        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(atomic_file, "_exchange", refusing)
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")
    atomic_file.write_atomically(target, b"new")
    atomic_file.write_atomically(target, b"newer")
    assert target.read_bytes() == b"newer"
    assert calls == [os.fsencode(target)]  # asked once; the second write renamed at once
    assert atomic_file._exchange is None

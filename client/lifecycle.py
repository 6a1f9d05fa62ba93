"""A study's life after its run: download a trial's checkpoint, extend the study, delete it.

The SDK's ``Client.download_checkpoint`` / ``extend_study`` / ``delete_study`` call into here, and
so do the CLI's ``download``, ``extend`` and ``delete`` commands (registered by ``add_commands``).
A download is written beside its destination under a temporary name, checked against the size and
SHA-256 the server sent first, and only then renamed into place: a broken stream or a corrupted
file never leaves a partial ``best.pt`` behind.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import duration_pb2
from rich.console import Console

from tuneyard.client import render
from tuneyard.client.errors import TuneyardError, from_rpc_error
from tuneyard.client.progress import PlainProgress
from tuneyard.v1 import service_pb2, service_pb2_grpc

if TYPE_CHECKING:
    from tuneyard.client.sdk import Client

__all__ = ["Download", "add_commands", "COMMANDS", "download", "extend_request", "parse_duration"]

_DURATION = re.compile(r"(?:(?P<h>\d+(?:\.\d*)?)h)?(?:(?P<m>\d+(?:\.\d*)?)m)?(?:(?P<s>\d+(?:\.\d*)?)s)?")


@dataclass(frozen=True)
class Download:
    """A checkpoint written to ``path``: ``size`` bytes with SHA-256 ``sha256``, trial ``trial_id``'s;
    ``server_path`` is where it lies on the server, relative to its data directory."""

    path: Path
    size: int
    sha256: str
    trial_id: int
    server_path: str


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``90``, ``"90s"``, ``"10m"``, ``"2h"`` or ``"1h30m"``; INVALID_ARGUMENT otherwise."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        match = _DURATION.fullmatch(text)
        if text and text.replace(".", "", 1).isdigit():
            seconds = float(text)
        elif text and match:
            seconds = sum(float(match[k] or 0) * scale for k, scale in (("h", 3600), ("m", 60), ("s", 1)))
        else:
            raise TuneyardError(grpc.StatusCode.INVALID_ARGUMENT, f"not a duration: {value!r} (e.g. 90s, 10m, 1h30m)")
    if seconds < 0:
        raise TuneyardError(grpc.StatusCode.INVALID_ARGUMENT, f"a duration must not be negative, got {value!r}")
    return seconds


def extend_request(
    study_id: str, trials: int = 0, duration: str | float | None = None
) -> service_pb2.ExtendStudyRequest:
    request = service_pb2.ExtendStudyRequest(study_id=study_id, add_trials=trials)
    if duration is not None:
        seconds = parse_duration(duration)
        nanos = round((seconds % 1) * 1e9)
        request.add_duration.CopyFrom(duration_pb2.Duration(seconds=int(seconds), nanos=min(nanos, 999_999_999)))
    return request


def _destination(out: str | os.PathLike[str] | None, study_id: str, trial_id: int) -> Path:
    default = f"{study_id}-trial-{trial_id}.pt"
    if out is None:
        return Path(default)
    path = Path(out)
    return path / default if path.is_dir() else path


def download(
    stub: service_pb2_grpc.TrainingServiceStub,
    study_id: str,
    trial_id: int = 0,
    out: str | os.PathLike[str] | None = None,
) -> Download:
    """Streams a trial's checkpoint (0: the best trial's) to ``out`` (a file, a folder, or None for
    ``<study>-trial-<n>.pt`` here), checked and renamed into place; TuneyardError when the server
    refuses, the stream breaks, or what arrived is not what the server announced (DATA_LOSS)."""
    stream = stub.DownloadCheckpoint(service_pb2.DownloadCheckpointRequest(study_id=study_id, trial_id=trial_id))
    try:
        chunks: Iterator[service_pb2.CheckpointChunk] = iter(stream)
        first = next(chunks)
        path = _destination(out, study_id, first.trial_id)
        partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            size, digest = _write(partial, first, chunks)
            if size != first.size or digest != first.sha256:
                raise TuneyardError(
                    grpc.StatusCode.DATA_LOSS,
                    f"the download does not match the server's file ({size} bytes, sha256 {digest}; "
                    f"announced {first.size} bytes, sha256 {first.sha256}); nothing was written to {path}",
                )
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    except grpc.RpcError as err:
        raise from_rpc_error(err) from err
    except StopIteration:
        raise TuneyardError(grpc.StatusCode.DATA_LOSS, "the server sent no checkpoint") from None
    finally:
        stream.cancel()
    return Download(path, size, digest, first.trial_id, first.path)


def _write(
    partial: Path, first: service_pb2.CheckpointChunk, rest: Iterator[service_pb2.CheckpointChunk]
) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(partial, "wb") as f:
        for chunk in _chain(first, rest):
            f.write(chunk.data)
            digest.update(chunk.data)
            size += len(chunk.data)
        f.flush()
        os.fsync(f.fileno())
    return size, digest.hexdigest()


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


# ---- the CLI's commands ----


def add_commands(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Adds ``download``, ``delete`` and ``extend`` with ``add(name, help)`` (the CLI's sub-parser maker)."""
    p = add("download", "download a trial's checkpoint (default: the best trial's), checked against its sha256")
    p.add_argument("study_id", metavar="ID")
    p.add_argument("trial_id", metavar="TRIAL", type=int, nargs="?", default=0, help="default: the best trial")
    p.add_argument("-o", "--out", metavar="FILE", type=Path, help="default: ID-trial-N.pt; a folder: into it")
    p = add("delete", "delete a finished study: its trials, events and checkpoints on the server")
    p.add_argument("study_id", metavar="ID")
    p.add_argument("-y", "--yes", action="store_true", help="delete without asking")
    p = add("extend", "give a finished study more trials and/or time, then follow it to its new end")
    p.add_argument("study_id", metavar="ID")
    p.add_argument("--trials", metavar="N", type=int, default=0, help="run exactly N more trials")
    p.add_argument("--duration", metavar="TIME", help="more time: 90s, 10m, 2h, 1h30m")
    p.add_argument("--detach", action="store_true", help="return once extended, without following it")


def _download(client: Client, args: argparse.Namespace, out: Console) -> int:
    done = client.download_checkpoint(args.study_id, args.trial_id, args.out)
    out.print(
        f"wrote {done.path}: trial {done.trial_id}'s checkpoint, {done.size} bytes, sha256 {done.sha256} (verified)",
        markup=False,
    )
    return 0


def _delete(client: Client, args: argparse.Namespace, out: Console) -> int:
    if not args.yes:
        study = client.get_study(args.study_id)
        if not sys.stdin.isatty():
            print(f"error: not deleting study {args.study_id} without a prompt: pass --yes", file=sys.stderr)
            return 2
        counts = study.trial_counts
        trials = sum(getattr(counts, f.name) for f in counts.DESCRIPTOR.fields)
        question = (
            f"delete study {args.study_id} ({study.spec.name or 'unnamed'}, {trials} trials) and its files? [y/N] "
        )
        if input(question).strip().lower() not in ("y", "yes"):
            out.print("not deleted", markup=False)
            return 1
    response = client.delete_study(args.study_id)
    out.print(
        f"deleted study {response.study_id}: {response.trials} trials, {response.bytes_removed} bytes of files",
        markup=False,
    )
    return 0


def _extend(client: Client, args: argparse.Namespace, out: Console) -> int:
    response = client.extend_study(args.study_id, trials=args.trials, duration=args.duration)
    budget = response.study.spec.budget
    more = f", max_duration {budget.max_duration.ToJsonString()}" if budget.HasField("max_duration") else ""
    out.print(f"study {args.study_id} extended: max_trials {budget.max_trials}{more}", markup=False)
    if args.detach:
        return 0
    display = PlainProgress(response.study.spec, out)
    result = client.wait(args.study_id, after_sequence=response.after_sequence, on_event=display)
    print(render.result_yaml(result), end="", flush=True)
    if result.study.state == service_pb2.STUDY_COMPLETED:
        return 0
    print(
        f"error: study {args.study_id} {render.study_state(result.study.state)}: {result.study.error}", file=sys.stderr
    )
    return 1


COMMANDS: dict[str, Callable[[Client, argparse.Namespace, Console], int]] = {
    "download": _download,
    "delete": _delete,
    "extend": _extend,
}

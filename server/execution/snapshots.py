"""A trial folder's kept steps, for population-based training (`early_stopping: pbt`).

A population stopper's exploit sends a trial on from another trial's checkpoint of an earlier step,
so every trial keeps its folder's files of each decision step — a multiple of the stopper's
`checkpoint_interval` (`TrainTask.decide_every`) below the last — in `snapshots/epoch-<step>/`,
taken in the worker after the step's files are written and before the step is reported (a
reported step's snapshot exists); the run then ends, for the server to judge the trial. The
server's runner copies a source's snapshot over an exploiting trial's files.
No torch here: the server imports it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tuneyard.server.execution.messages import TrainTask

SNAPSHOTS = "snapshots"


def decision_epoch(task: TrainTask, epoch: int, epochs: int) -> bool:
    """Whether the task's run keeps its files of `epoch` and ends there (PBT judges it): a multiple
    of `decide_every` below the trial's last epoch and above the epochs stored of it when the run
    started (those were judged already; a trainable that starts over reports them again)."""
    return bool(task.decide_every) and epoch % task.decide_every == 0 and task.stored_epochs < epoch < epochs


def snapshot_dir(folder: Path, epoch: int) -> Path:
    """Where trial folder `folder` keeps its files of step `epoch`."""
    return folder / SNAPSHOTS / f"epoch-{epoch}"


def take_snapshot(folder: Path, epoch: int, *, link: bool) -> Path:
    """Keeps the folder's files (not its snapshots) as step `epoch`'s. `link` hard-links them, for files
    that are only ever replaced whole (the built-in trainer's: written to a temporary file, then
    renamed); a trainable may rewrite its files in place, so its are copied."""
    target = snapshot_dir(folder, epoch)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for item in folder.iterdir():
        if item.name == SNAPSHOTS or item.name.endswith(".tmp"):
            continue
        if item.is_dir():
            shutil.copytree(item, partial / item.name)
        elif link:
            os.link(item, partial / item.name)
        else:
            shutil.copy2(item, partial / item.name)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # a step's snapshot appears whole or not at all
    return target


def adopt_snapshot(source: Path, epoch: int, folder: Path) -> None:
    """Replaces trial folder `folder`'s files (its snapshots kept) with a copy of trial folder
    `source`'s snapshot of step `epoch`. Repeating it gives the same files (a restart may)."""
    kept = snapshot_dir(source, epoch)
    if not kept.is_dir():
        raise FileNotFoundError(f"no snapshot of step {epoch} in {source}")
    folder.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        if item.name == SNAPSHOTS:
            continue
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()
    for item in kept.iterdir():
        if item.is_dir():
            shutil.copytree(item, folder / item.name)
        else:
            shutil.copy2(item, folder / item.name)

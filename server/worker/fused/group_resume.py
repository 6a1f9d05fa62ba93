"""A fused group's files: one resume file an epoch for all its members, and each member's own files when it leaves.

Solo, a trial writes its checkpoint and the state it resumes from every epoch (`checkpoints`). K
members doing so write 2K files and capture the same random generators K times an epoch: at K=16
(`mlp` under Adam, CPU) 12.2 ms an epoch, a third of the group's time through a server. So a group
writes one file an epoch (in its first member's folder, named for this group run) holding each
member's solo resume state (its progress and parts, its weights among them) and the group's
generators; each member's folder names the file and the member's entry in it
(`checkpoints.group_pointer_path`), where `checkpoints.resume_states` finds it. The file is
replaced whole, so a kill never leaves members at different epochs; a member's folder names the
file only once the file holds that member.

A member that leaves the group (it ends, is stopped or pruned, or fails) gets its own files of its
last saved epoch, its checkpoint (the weights a test run or a download reads) and its resume state,
and stops naming the group's, so it resumes alone or in any other group; the group's file goes
when the run ends. While a member trains in the group it has no checkpoint file of its own. A run
that dies (its worker killed) leaves the file and the names: the members resume from it.

Imported only in worker processes (it imports torch).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tuneyard.server.execution.messages import TrainTask
from tuneyard.server.worker.atomic_file import write_atomically
from tuneyard.server.worker.checkpoints import (
    group_pointer_path,
    named_group_file,
    python_state,
    resume_path,
    resume_states,
    save_checkpoint,
    settle_group_entry,
)
from tuneyard.server.worker.packed_state import dumps, loads

Entry = dict[str, Any]  # a member's solo resume state without its generators: progress and "parts"


class GroupResume:
    """One group run's resume file, and the members' names for it."""

    def __init__(self, tasks: Sequence[TrainTask]) -> None:
        self._checkpoints = {task.trial_id: Path(task.checkpoint) for task in tasks}
        first = Path(tasks[0].checkpoint)
        self.path = first.with_name(f"group-resume.{uuid.uuid4().hex[:12]}.pt")  # this run's, not a past one's
        self._named: set[int] = set()  # members whose folders name this file
        self._last: dict[int, Entry] = {}  # per member, its entry in the file as last written
        self._rng: dict[str, Any] = {}
        self._earlier = {named[0] for c in self._checkpoints.values() if (named := named_group_file(c)) is not None}

    def save(self, epoch: int, entries: dict[int, Entry], rng: dict[str, Any]) -> None:
        """The members' states of `epoch` (one entry per trial id) in the group's file, then their names for it."""
        for trial_id in self._named - entries.keys():
            self.leave(trial_id)  # not saved this epoch (it failed): its own file keeps its last state
        checkpoints = {i: os.path.relpath(self._checkpoints[i], self.path.parent) for i in entries}
        state = {"epoch": epoch, "rng": rng, "members": entries, "checkpoints": checkpoints}
        write_atomically(self.path, dumps(state))
        self._last, self._rng = entries, rng
        for trial_id in entries.keys() - self._named:
            pointer = {"file": os.path.relpath(self.path, self._checkpoints[trial_id].parent), "trial_id": trial_id}
            write_atomically(group_pointer_path(self._checkpoints[trial_id]), json.dumps(pointer).encode())
            self._named.add(trial_id)

    def leave(self, trial_id: int) -> None:
        """The member's own files of its latest state, its checkpoint and its resume state (as a solo
        run leaves them): this run's last save of it, else its entry in an earlier run's file when
        that is newer than its own; its folder then names no group file."""
        checkpoint = self._checkpoints[trial_id]
        if trial_id not in self._named:  # nothing saved of it here: its own state, or an earlier run's entry
            settle_group_entry(checkpoint)
            return
        entry = {**self._last[trial_id], "rng": self._rng}
        write_atomically(resume_path(checkpoint), dumps(entry))
        save_checkpoint(checkpoint, entry["parts"]["model"], int(entry["epoch"]))
        group_pointer_path(checkpoint).unlink(missing_ok=True)
        self._named.discard(trial_id)

    def end(self, trial_ids: Sequence[int]) -> None:
        """The run is over: these members leave, and the files no folder names any more go (this
        run's, and those of earlier runs its members resumed from)."""
        for trial_id in trial_ids:
            self.leave(trial_id)
        if not self._named:
            self.path.unlink(missing_ok=True)
        for earlier in self._earlier - {self.path.resolve()}:
            if not _still_named(earlier):
                earlier.unlink(missing_ok=True)
                for stale in earlier.parent.glob(f"{earlier.name}.*.tmp"):  # a kill's, mid-write
                    stale.unlink(missing_ok=True)


def _still_named(file: Path) -> bool:
    """Whether a folder of any member in this group file still names it (a member not in this run)."""
    try:
        checkpoints = loads(file.read_bytes())["checkpoints"]
    except FileNotFoundError:
        return False
    for checkpoint in checkpoints.values():
        named = named_group_file(file.parent / checkpoint)
        if named is not None and named[0] == file.resolve():
            return True
    return False


def common_resume(tasks: Sequence[TrainTask]) -> list[dict[str, Any] | None] | str:
    """Each member's state at the epoch all of them can resume from, or why there is none.

    Members can be an epoch apart (a kill between a group's file and its members' names for it,
    or solo runs): those ahead go back to their previous state (or to the start, from their first
    epoch), which the others hold. The states must also agree on the random generators (one batch
    order for the whole group)."""
    groups: dict[Path, dict[str, Any]] = {}  # each group file read once for all its members
    saved = [resume_states(Path(task.checkpoint), groups) for task in tasks]
    epoch = min((int(states[0]["epoch"]) if states else 0) for states in saved)
    picked: list[dict[str, Any] | None] = []
    for states in saved:
        at = [s for s in states if int(s["epoch"]) == epoch]
        if not at and epoch == 0 and (not states or int(states[0]["epoch"]) == 1):
            picked.append(None)
        elif at:
            picked.append(at[0])
        else:
            epochs = sorted({int(states[0]["epoch"]) if states else 0 for states in saved})
            return f"the members' checkpoints are at different epochs ({epochs}); resume them solo"
    kept = [s["rng"] for s in picked if s is not None]
    for rng in kept[1:]:
        same = torch.equal(rng["torch"], kept[0]["torch"]) and torch.equal(rng["shuffle"], kept[0]["shuffle"])
        if not same or python_state(rng) != python_state(kept[0]):
            return "the members' checkpoints hold different random generator states (batch order); resume them solo"
    return picked

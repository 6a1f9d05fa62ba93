"""Fused groups of trials (`resources.fuse`, issue 17) as the study runner forms and ends them.

The server decides which trials may train together from their resolved settings alone (no torch):
trials whose settings are equal once the fusable ones are blanked (`settings.fusion_key`), that
start fresh together or resume from the same epoch. The worker's `group_problem` has the final
word: a group it refuses comes back as `{"refused": why}`; its members then run solo, and no later
trial with the same non-fusable settings is grouped again. A group's one final message becomes one
`Ending` per member: its own result, its own error (a member that diverged), or the group's crash.
A member the early stopper prunes leaves at once (`left`): it ends with the epoch it was judged on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.execution.messages import Final, Sink, Train, TrainGroup, TrainGroupTask
from tuneyard.server.execution.scheduler import Allocation
from tuneyard.server.storage.store import Store
from tuneyard.server.study.outcomes import Ending, ending_of
from tuneyard.server.study.settings import TrialSettings, fusion_key
from tuneyard.server.study.trial_runs import GroupRun, TaskBoard, TrialRun, placement

log = logging.getLogger(__name__)


def group_key(members: Sequence[TrialRun]) -> str:
    """A group's id, unique among a study's running tasks: its first member's trial id."""
    return f"g{members[0].trial_id}"


class Fusion:
    """A study's fusion policy: the group size, and the settings the worker refused to fuse."""

    def __init__(self, study_id: str, size: int, registry: PluginRegistry | None = None) -> None:
        self.study_id = study_id
        self.size = size if size > 1 else 1
        self.registry = registry  # which model options are fusable (`PluginEntry.fusable_options`)
        self._refused: list[TrialSettings] = []

    @property
    def on(self) -> bool:
        return self.size > 1

    def together(self, first: TrialRun, other: TrialRun) -> bool:
        """Whether `other` may train in `first`'s group: same non-fusable settings, same epoch, neither
        marked solo, and settings the worker has not refused before."""
        key = fusion_key(first.task.settings, self.registry)
        return (
            key is not None
            and not first.solo
            and not other.solo
            and first.epochs == other.epochs
            and key not in self._refused
            and fusion_key(other.task.settings, self.registry) == key
        )

    def resume_members(self, waiting: Sequence[TrialRun]) -> list[TrialRun]:
        """The first waiting trial and those that may resume in one group with it (itself alone when none)."""
        first = waiting[0]
        members = [first]
        for run in waiting[1:] if self.on else ():
            if len(members) < self.size and self.together(first, run):
                members.append(run)
        return members

    def refused(self, members: Sequence[TrialRun], why: str, resume: bool) -> None:
        """The worker would not fuse these trials: they run solo, and so will later ones like them
        (a refusal of fresh trials is about their settings; one on resume may be about checkpoints)."""
        ids = ", ".join(str(run.trial_id) for run in members)
        log.warning("study %s: trials %s cannot train fused (%s); they run solo", self.study_id, ids, why)
        key = fusion_key(members[0].task.settings, self.registry)
        if not resume and key is not None and key not in self._refused:
            self._refused.append(key)
        for run in members:
            run.solo = True


def member_endings(msg: Final, members: Sequence[int]) -> dict[int, Ending] | str:
    """Each member's ending from its group's final message; the worker's reason when it refused the group."""
    ending = ending_of(msg)
    if ending.kind != "done":
        return {trial_id: ending for trial_id in members}
    if "refused" in ending.result:
        return str(ending.result["refused"])
    results = ending.result.get("members") or {}
    out: dict[int, Ending] = {}
    for trial_id in members:
        result = results.get(trial_id)
        if result is None:
            out[trial_id] = Ending("error", error="its fused group returned no result for it", reason="error")
        elif "error" in result:
            out[trial_id] = Ending("error", error=str(result["error"]), reason="error")
        else:
            out[trial_id] = Ending("done", result=dict(result))
    return out


class Launcher:
    """Submits a study's trials to their allocations — one as its own task, several as one fused
    group's — and reads a group's end back as its members' endings."""

    def __init__(self, board: TaskBoard, storage: Store, sink: Sink, memory_gb: float, fusion: Fusion) -> None:
        self.board, self.storage, self.sink = board, storage, sink
        self.memory_gb, self.fusion = memory_gb, fusion

    def launch(self, members: Sequence[TrialRun], alloc: Allocation, *, resume: bool) -> None:
        """Starts these trials on `alloc` (fresh, or from their checkpoints with `resume`)."""
        where = placement(alloc, self.memory_gb)
        tasks = tuple(replace(run.task, placement=where, resume=resume, stored_epochs=run.epochs) for run in members)
        if len(members) == 1:
            self.board.hold(members[0].trial_id, members[0], alloc)
            self._join(members[0], "")
            alloc.gang.submit(Train(members[0].trial_id, tasks[0]), self.sink)
            return
        group = GroupRun(key=group_key(members), members=[run.trial_id for run in members], resume=resume)
        self.board.groups[group.key] = group
        self.board.hold(group.key, group, alloc)
        for run in members:
            run.stop_reason = run.stop_time = None
            self._join(run, group.key)
        log.info("study %s: trials %s train fused as group %s", self.fusion.study_id, group.members, group.key)
        alloc.gang.submit(TrainGroup(group.key, TrainGroupTask(tasks)), self.sink)

    def _join(self, run: TrialRun, key: str) -> None:
        """The trial trains in fused group `key` now ("": solo), as its stored `fused_group` says."""
        run.group = key
        if self.fusion.on:
            self.storage.set_fused_group(self.fusion.study_id, run.trial_id, key)

    def left(self, group: GroupRun, run: TrialRun, epoch: int, metrics: dict[str, float]) -> Ending:
        """A member the stopper pruned after `epoch` leaves the group (the worker drops it at its next
        batch): it ends now with that epoch's metrics, the group's end no longer about it."""
        group.members.remove(run.trial_id)
        run.group = ""
        return Ending("done", result={"final_metrics": dict(metrics), "epochs": epoch, "stopped": True})

    def ended(self, group: GroupRun, msg: Final) -> list[tuple[TrialRun, Ending]]:
        """The group (its allocation released) is over: each member with its ending, its stop reason
        the group's when it had none; none when the worker refused the group (they wait to run solo)."""
        del self.board.groups[group.key]
        members = [self.board.trials[trial_id] for trial_id in group.members]
        for run in members:
            run.group = ""
        endings = member_endings(msg, group.members)
        if isinstance(endings, str):
            self.fusion.refused(members, endings, group.resume)
            self.board.requeued.extend(run.trial_id for run in members)
            return []
        for run in members:
            run.stop_reason = run.stop_reason or group.stop_reason
        return [(run, endings[run.trial_id]) for run in members]

"""A fused group's one resume file an epoch (`server.worker.fused.group_resume`), the members'
names for it, what a member that leaves keeps, and which files go when a run ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch

from tuneyard.plugins.api import Objective
from tuneyard.server.execution.messages import TrainTask
from tuneyard.server.study.settings import TrialSettings
from tuneyard.server.worker.checkpoints import group_pointer_path, resume_path, resume_states
from tuneyard.server.worker.fused.group_resume import GroupResume

RNG = {"torch": torch.get_rng_state(), "python": b"", "shuffle": torch.get_rng_state()}


def _tasks(root: Path, ids: list[int]) -> list[TrainTask]:
    settings = cast(TrialSettings, None)  # the resume file reads only ids and checkpoint paths
    tasks = [TrainTask(i, settings, str(root / f"t{i}" / "checkpoint.pt"), Objective("val_loss", "min")) for i in ids]
    for task in tasks:
        Path(task.checkpoint).parent.mkdir(parents=True, exist_ok=True)
    return tasks


def _entry(epoch: int, weight: float) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "metrics": {"val_loss": weight},
        "best": weight,
        "since_best": 0,
        "parts": {"model": {"w": torch.full((3,), weight)}},
    }


def _state(root: Path, trial_id: int) -> list[tuple[int, float]]:
    return [
        (int(s["epoch"]), float(s["parts"]["model"]["w"][0]))
        for s in resume_states(root / f"t{trial_id}" / "checkpoint.pt")
    ]


def _named(root: Path, trial_id: int) -> bool:
    return group_pointer_path(root / f"t{trial_id}" / "checkpoint.pt").exists()


def test_members_read_their_entries_in_the_one_file_and_a_member_that_leaves_keeps_its_last_epoch(
    tmp_path: Path,
) -> None:
    run = GroupResume(_tasks(tmp_path, [3, 4]))
    run.save(1, {3: _entry(1, 0.5), 4: _entry(1, 0.75)}, RNG)
    assert _state(tmp_path, 3) == [(1, 0.5)] and _state(tmp_path, 4) == [(1, 0.75)]
    assert not resume_path(tmp_path / "t3" / "checkpoint.pt").exists()  # one file for the group, named by both
    assert not (tmp_path / "t3" / "checkpoint.pt").exists()  # written when the member leaves
    assert torch.equal(resume_states(tmp_path / "t4" / "checkpoint.pt")[0]["rng"]["torch"], RNG["torch"])
    run.save(2, {3: _entry(2, 0.4375)}, RNG)  # member 4 failed in epoch 2: it leaves with epoch 1
    assert _state(tmp_path, 4) == [(1, 0.75)] and not _named(tmp_path, 4)
    assert resume_path(tmp_path / "t4" / "checkpoint.pt").exists()
    saved = torch.load(tmp_path / "t4" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1 and torch.equal(saved["model"]["w"], torch.full((3,), 0.75))
    assert _state(tmp_path, 3) == [(2, 0.4375)]
    run.end([3])
    assert _state(tmp_path, 3) == [(2, 0.4375)] and not _named(tmp_path, 3)
    assert not run.path.exists()


def test_a_run_that_ends_removes_the_earlier_runs_files_no_member_names_any_more(tmp_path: Path) -> None:
    killed = GroupResume(_tasks(tmp_path, [0, 1]))
    killed.save(1, {0: _entry(1, 0.0625), 1: _entry(1, 0.125)}, RNG)  # then its worker died: no end
    alone = GroupResume(_tasks(tmp_path, [0]))  # member 0 goes on in a group of its own
    alone.save(2, {0: _entry(2, 0.375)}, RNG)
    alone.end([0])
    assert killed.path.exists() and _state(tmp_path, 1) == [(1, 0.125)]  # member 1 still resumes from it
    other = GroupResume(_tasks(tmp_path, [1, 2]))
    other.save(2, {1: _entry(2, 0.25), 2: _entry(1, 0.875)}, RNG)
    other.end([1, 2])
    assert not killed.path.exists() and not other.path.exists()
    assert _state(tmp_path, 0) == [(2, 0.375)] and _state(tmp_path, 1) == [(2, 0.25)]
    assert sorted(p.name for p in (tmp_path / "t0").iterdir()) == ["checkpoint.pt", "resume.pt"]


def test_a_solo_epoch_after_the_group_stops_naming_its_file(tmp_path: Path) -> None:
    """A member resumed solo writes its own state; its folder's name for the group file goes with it."""
    from tuneyard.server.worker.checkpoints import save_epoch

    run = GroupResume(_tasks(tmp_path, [0]))
    run.save(1, {0: _entry(1, 0.0625)}, RNG)
    path = tmp_path / "t0" / "checkpoint.pt"

    class Batches:
        generator = torch.Generator()

    model = torch.nn.Linear(2, 1)
    progress = {"epoch": 2, "metrics": {}, "best": None, "since_best": 0}
    save_epoch(path, model, {"model": model}, cast(Any, Batches()), progress, torch.device("cpu"))
    assert not _named(tmp_path, 0) and [int(s["epoch"]) for s in resume_states(path)] == [2]


def test_members_a_kill_left_named_at_an_earlier_file_get_their_own_files_when_the_next_run_ends(
    tmp_path: Path,
) -> None:
    """A kill while a run wrote its members' own files (member 3 done, member 4 not): the next run has
    nothing left to train, and still leaves member 4 its checkpoint and resume state of that epoch."""
    killed = GroupResume(_tasks(tmp_path, [3, 4]))
    killed.save(2, {3: _entry(2, 0.5), 4: _entry(2, 0.75)}, RNG)
    killed.leave(3)  # then the kill
    assert not (tmp_path / "t4" / "checkpoint.pt").exists() and _named(tmp_path, 4)
    (tmp_path / "t3" / f"{killed.path.name}.999.tmp").write_bytes(b"half a write")
    GroupResume(_tasks(tmp_path, [3, 4])).end([3, 4])
    assert _state(tmp_path, 4) == [(2, 0.75)] and not _named(tmp_path, 4)
    assert torch.load(tmp_path / "t4" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in (tmp_path / "t3").iterdir()) == ["checkpoint.pt", "resume.pt"]

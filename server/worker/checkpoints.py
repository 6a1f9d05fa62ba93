"""A trial's two files per epoch: the checkpoint and, beside it, the state to resume from.

Imported only in worker processes (it imports torch). The checkpoint (`{"model", "epoch"}`) holds
the weights a test run evaluates (the EMA weights when averaging). `resume.pt` holds all a run
needs to go on after its last finished epoch: the progress (`epoch`, `metrics`, `best`,
`since_best`), every part's state (model, optimizer, schedule, EMA, gradient scaler) and the
random generators, its tensors packed into one buffer per dtype (`packed_state`: a fraction of
`torch.save`'s cost per tensor; older plain states still load). Both are written atomically
(`atomic_file`).

A fused group's members resume from one file for the whole group, which each member's folder
names (`group_pointer_path`; written by `fused.group_resume`): `resume_states` reads a member's
entry there as it reads the member's own file, newest epoch first.
"""

from __future__ import annotations

import io
import json
import pickle
import random
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from tuneyard.server.worker.atomic_file import write_atomically
from tuneyard.server.worker.batches import Batches
from tuneyard.server.worker.packed_state import dumps, loads


def python_state(rng: dict[str, Any]) -> Any:
    """The Python generator's state in a saved `rng` (packed bytes; a tuple in older checkpoints)."""
    saved = rng["python"]
    return pickle.loads(saved) if isinstance(saved, bytes) else saved


def resume_path(checkpoint: Path) -> Path:
    """Where the state to resume a trial lives: beside its checkpoint."""
    return checkpoint.with_name("resume.pt")


def group_pointer_path(checkpoint: Path) -> Path:
    """Where a fused member's folder names its group's resume file and the member's entry in it."""
    return checkpoint.with_name("resume.group")


def capture_rng(batches: Batches, device: torch.device) -> dict[str, Any]:
    """The random generators a run goes on with: torch's (and CUDA's), Python's, the batch order's."""
    # Python's state packed as one bytes object: the resume state's pickler calls its Python
    # persistent-id hook on every object, and this state alone is 625 ints (`packed_state`).
    python = pickle.dumps(random.getstate())
    rng = {"torch": torch.get_rng_state(), "python": python, "shuffle": batches.generator.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def save_epoch(
    path: Path,
    evaluated: nn.Module,
    parts: dict[str, Any],
    batches: Batches,
    progress: dict[str, Any],
    device: torch.device,
) -> None:
    """Writes the epoch's resume state, then its checkpoint; `parts` maps a name to a part or None."""
    parts_state = {name: part.state_dict() for name, part in parts.items() if part is not None}
    write_atomically(resume_path(path), dumps({**progress, "parts": parts_state, "rng": capture_rng(batches, device)}))
    group_pointer_path(path).unlink(missing_ok=True)  # a former fused member's: its own state is newer
    save_checkpoint(path, evaluated.state_dict(), int(progress["epoch"]))


def save_checkpoint(path: Path, weights: dict[str, torch.Tensor], epoch: int) -> None:
    """The weights a test run evaluates (a module's state dict), as `torch.load(weights_only=True)` reads them."""
    checkpoint = io.BytesIO()  # then one write: torch.save's many small writes to a file cost more
    torch.save({"model": weights, "epoch": epoch}, checkpoint)
    write_atomically(path, checkpoint.getbuffer())


def _read(path: Path) -> dict[str, Any]:
    # Written by this trainer into the server's own data directory; it holds schedule objects
    # that weights_only loading refuses.
    return cast(dict[str, Any], loads(path.read_bytes()))


def resume_states(path: Path, groups: dict[Path, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The trial's saved resume states, newest epoch first: its own file's and, for a fused member,
    its entry in its group's file (a member that resumed solo has both). `groups` keeps the group
    files read, for a caller that reads a whole group's members."""
    states = [state for state in (own_state(path), group_entry(path, groups)) if state is not None]
    return sorted(states, key=lambda state: -int(state["epoch"]))


def own_state(path: Path) -> dict[str, Any] | None:
    """The trial's own resume state (`resume.pt`), if it has one."""
    return _read(resume_path(path)) if resume_path(path).exists() else None


def named_group_file(path: Path) -> tuple[Path, int] | None:
    """The group resume file a fused member's folder names (resolved), and the member's trial id in it."""
    try:
        pointer = json.loads(group_pointer_path(path).read_text())
    except FileNotFoundError:
        return None
    return (path.parent / pointer["file"]).resolve(), int(pointer["trial_id"])


def group_entry(path: Path, groups: dict[Path, dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """A fused member's state in its group's file: its progress and parts, and the group's generators."""
    named = named_group_file(path)
    if named is None:
        return None
    groups = {} if groups is None else groups
    try:
        if named[0] not in groups:
            groups[named[0]] = _read(named[0])
    except FileNotFoundError:  # its group's file is gone (the group ended: the member left it)
        return None
    group = groups[named[0]]
    entry = group["members"].get(named[1])
    return None if entry is None else {**entry, "rng": group["rng"]}


def settle_group_entry(path: Path) -> None:
    """A fused member's entry in a group's file, when newer than its own state, becomes its own files
    (its resume state and checkpoint, as a solo run leaves them); its folder then names no group file."""
    if not group_pointer_path(path).exists():
        return
    entry, own = group_entry(path), own_state(path)
    if entry is not None and (own is None or int(own["epoch"]) < int(entry["epoch"])):
        write_atomically(resume_path(path), dumps(entry))
        save_checkpoint(path, entry["parts"]["model"], int(entry["epoch"]))
    group_pointer_path(path).unlink(missing_ok=True)


def load_resume(path: Path, parts: dict[str, Any], batches: Batches, device: torch.device) -> dict[str, Any] | None:
    """Restores the parts and generators from the trial's last epoch, when an earlier attempt left
    its state; returns that state (with its progress), or None. A former fused member's state
    becomes its own files first (`settle_group_entry`)."""
    settle_group_entry(path)
    states = resume_states(path)
    if not states:
        return None
    restore(states[0], parts, batches, device)
    return states[0]


def restore(state: dict[str, Any], parts: dict[str, Any], batches: Batches, device: torch.device) -> None:
    """Sets the parts and the random generators to a saved resume state."""
    for name, part_state in state["parts"].items():
        if parts.get(name) is not None:
            parts[name].load_state_dict(part_state)
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(python_state(rng))
    batches.generator.set_state(rng["shuffle"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)

"""A trial's two files per epoch: the checkpoint and, beside it, the state to resume from.

Imported only in worker processes (it imports torch). The checkpoint (`{"model", "epoch"}`) holds
the weights a test run evaluates (the EMA weights when averaging). `resume.pt` holds all a run
needs to go on after its last finished epoch: the progress (`epoch`, `metrics`, `best`,
`since_best`), every part's state (model, optimizer, schedule, EMA, gradient scaler) and the
random generators, its tensors packed into one buffer per dtype (`packed_state`: a fraction of
`torch.save`'s cost per tensor; older plain states still load). Both are written atomically
(`atomic_file`).

A fused group's members also keep their previous epoch's state (`resume.prev.pt`): a group's K
writes are not one atomic step, so a kill among them leaves some members one epoch ahead, and the
group resumes from the epoch all of them hold (`resume_states`).
"""

from __future__ import annotations

import io
import os
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


def previous_resume_path(checkpoint: Path) -> Path:
    """Where a fused member's state of the epoch before its last lives."""
    return checkpoint.with_name("resume.prev.pt")


def save_epoch(
    path: Path,
    evaluated: nn.Module,
    parts: dict[str, Any],
    batches: Batches,
    progress: dict[str, Any],
    device: torch.device,
    *,
    keep_previous: bool = False,
) -> None:
    """Writes the epoch's resume state, then its checkpoint; `parts` maps a name to a part or None.
    With `keep_previous` the state it replaces becomes `resume.prev.pt`."""
    # Python's state packed as one bytes object: the resume state's pickler calls its Python
    # persistent-id hook on every object, and this state alone is 625 ints (`packed_state`).
    python = pickle.dumps(random.getstate())
    rng = {"torch": torch.get_rng_state(), "python": python, "shuffle": batches.generator.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    parts_state = {name: part.state_dict() for name, part in parts.items() if part is not None}
    if keep_previous and resume_path(path).exists():  # until the new one lands, readers take this one
        previous_resume_path(path).unlink(missing_ok=True)  # first: a rename over it would flush (`atomic_file`)
        os.replace(resume_path(path), previous_resume_path(path))
    elif not keep_previous:
        previous_resume_path(path).unlink(missing_ok=True)  # a fused member's, now stale
    write_atomically(resume_path(path), dumps({**progress, "parts": parts_state, "rng": rng}))
    checkpoint = io.BytesIO()  # then one write: torch.save's many small writes to a file cost more
    torch.save({"model": evaluated.state_dict(), "epoch": progress["epoch"]}, checkpoint)
    write_atomically(path, checkpoint.getbuffer())


def _read(path: Path) -> dict[str, Any]:
    # Written by this trainer into the server's own data directory; it holds schedule objects
    # that weights_only loading refuses.
    return cast(dict[str, Any], loads(path.read_bytes()))


def resume_states(path: Path) -> list[dict[str, Any]]:
    """The trial's saved resume states, newest first: its last epoch's and, for a fused member,
    the one before (alone when a kill came between the two renames of `save_epoch`)."""
    return [_read(each) for each in (resume_path(path), previous_resume_path(path)) if each.exists()]


def load_resume(path: Path, parts: dict[str, Any], batches: Batches, device: torch.device) -> dict[str, Any] | None:
    """Restores the parts and generators from the trial's last epoch, when an earlier attempt left
    its state; returns that state (with its progress), or None."""
    saved = next((each for each in (resume_path(path), previous_resume_path(path)) if each.exists()), None)
    if saved is None:
        return None
    state = _read(saved)
    restore(state, parts, batches, device)
    return state


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

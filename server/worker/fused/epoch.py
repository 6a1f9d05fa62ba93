"""A fused epoch's per-member measurements in few calls: losses, sums, validation, checkpoint parts.

The solo trainer calls its task's `loss` and `sums` once per batch; a group of K members calling
them K times per batch (and validating K unstacked copies, probing K latencies) spends its epoch in
Python, not in the fused kernels. For the built-in classification task (`Classification`, the
task of every built-in classification dataset) the members' losses and sums are computed here in
one vectorised op over the outputs (K, N, C), with each member's label smoothing as a (K,) tensor:
torch's own formula (log-softmax, the mean NLL, ``(1 - ls) * nll + ls / C * smooth``), so every
member's gradient is bitwise its solo `F.cross_entropy`'s and its loss equal to rounding (2e-7).
Any other task (a plugin's, regression, multilabel) is called once per member, as before. `vmap`
over a task's functions was measured and not used: its fixed cost (about 0.7 ms a call on CPU) is
more than K plain calls up to K=16.

Imported only in worker processes (it imports torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

import torch

from tuneyard.plugins.api import Task
from tuneyard.plugins.builtin.tasks.heads import Classification
from tuneyard.server.worker.batches import Batches
from tuneyard.server.worker.fused.stack import FusedModel
from tuneyard.server.worker.measure import autocast
from tuneyard.server.worker.trainer import EVAL_BATCH

EVAL_MEMBER_ROWS = 1024  # rows times members per fused eval forward on CPU (`eval_rows`)
EVAL_ROWS_MIN = 32
TRAIN_PART_BYTES = 2 << 20  # the largest activation of one part of the stack in a CPU training step


def _class_indices(targets: torch.Tensor) -> bool:
    return targets.dim() == 1 and not targets.is_floating_point()


def _classification_losses(outputs: torch.Tensor, targets: torch.Tensor, smoothing: torch.Tensor) -> torch.Tensor:
    """(K,) `F.cross_entropy(outputs[k], targets, label_smoothing=smoothing[k])`, in one op over the members."""
    logp = torch.log_softmax(outputs.float(), -1)
    index = targets.view(1, -1, 1).expand(outputs.shape[0], -1, 1)
    nll = -logp.gather(-1, index).squeeze(-1).mean(1)
    if not bool(smoothing.any()):
        return nll
    smoothing = smoothing.to(logp.device)
    smooth = -logp.sum(-1).mean(1)
    kept, spread = (1 - smoothing).to(logp.dtype), (smoothing / outputs.shape[-1]).to(logp.dtype)
    return torch.where(smoothing.ne(0), kept * nll + smooth * spread, nll)  # torch skips the smoothing at 0


class MemberLosses:
    """(K,) losses: member k's task loss on its outputs; one op for all when they are built-in classification."""

    def __init__(self, tasks: Sequence[Task]) -> None:
        self.tasks = list(tasks)
        smoothing = [float(t.label_smoothing) for t in self.tasks if type(t) is Classification]
        fast = len(smoothing) == len(self.tasks)
        self._smoothing = torch.tensor(smoothing, dtype=torch.float64) if fast else None

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor, members: slice = slice(None)) -> torch.Tensor:
        """The losses of the members in `members` (all by default), whose outputs `outputs` are."""
        tasks = self.tasks[members]
        if len(tasks) != outputs.shape[0]:
            raise ValueError(f"{len(tasks)} losses for {outputs.shape[0]} members")
        if self._smoothing is not None and _class_indices(targets):
            return _classification_losses(outputs, targets, self._smoothing[members])
        return torch.stack([task.loss(outputs[k], targets) for k, task in enumerate(tasks)])


def member_sums(task: Task, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """The task's sums for every member's outputs (K, N, ...): (K,) tensors."""
    if type(task) is Classification and _class_indices(targets):
        return {"correct": (outputs.argmax(-1) == targets).sum(-1)}
    each = [task.sums(outputs[k], targets) for k in range(outputs.shape[0])]
    return {key: torch.stack([e[key] for e in each]) for key in each[0]}


class FusedTotals:
    """`TaskTotals` for K members at once: (K,) loss sums and (K,) task sums, read once per pass."""

    def __init__(self, task: Task, size: int, device: torch.device) -> None:
        self.task, self.size = task, size
        self.loss = torch.zeros(size, device=device)
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, losses: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """One batch: `losses` (K,) are the members' mean losses, `outputs` (K, N, ...)."""
        n = len(targets)
        self.loss += losses.detach().float() * n  # as TaskTotals.add, element by element
        for key, value in member_sums(self.task, outputs.detach(), targets).items():
            value = value.detach()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.count += n

    def keep(self, members: Sequence[int]) -> None:
        """Only these members' rows go on (the others left the group mid-pass)."""
        index = torch.tensor(list(members), dtype=torch.long, device=self.loss.device)
        self.loss = self.loss[index]
        self.sums = {key: value[index] for key, value in self.sums.items()}
        self.size = len(members)

    def read(self) -> list[dict[str, float]]:
        """Per member, `loss` (mean per sample) and the task's metrics, as `TaskTotals.read` gives them."""
        losses = [float(v) / max(self.count, 1) for v in self.loss.tolist()]
        columns = {key: [float(v) for v in value.tolist()] for key, value in self.sums.items()}
        return [
            {"loss": losses[k], **self.task.metrics({key: col[k] for key, col in columns.items()}, self.count)}
            for k in range(self.size)
        ]


@torch.no_grad()
def evaluate_members(
    fused: FusedModel,
    batches: Batches,
    task: Task,
    precision: str,
    device: torch.device,
    heartbeat: Callable[[], None],
) -> list[dict[str, float]]:
    """Every member's `measure.evaluate_split` in one fused forward per batch (in parts on CPU: `eval_rows`)."""
    fused.eval()
    losses = MemberLosses([task] * fused.size)
    totals = FusedTotals(task, fused.size, device)
    rows = eval_rows(fused, device)
    for x, y in batches:
        heartbeat()
        with autocast(device, precision):
            outputs = fused(x) if len(x) <= rows else torch.cat([fused(part) for part in x.split(rows)], dim=1)
        totals.add(losses(outputs, y), outputs, y)
    return totals.read()


def eval_rows(fused: FusedModel, device: torch.device) -> int:
    """How many rows of an eval batch go through the fused model at once.

    On CPU, K members' activations of a whole eval batch (512 rows) are megabytes and far past L2:
    digits' `simple_cnn` at K=16 validates in 19 ms by 64 rows against 49 ms whole, with outputs
    bitwise equal. A batch is split only where each sample's outputs depend on it alone, and never
    on a GPU, which wants the large batch.
    """
    if device.type != "cpu" or not fused.samplewise_eval:
        return EVAL_BATCH
    return max(EVAL_ROWS_MIN, EVAL_MEMBER_ROWS // fused.size)


def train_parts(fused: FusedModel, x: torch.Tensor, device: torch.device) -> list[slice]:
    """The runs of members one training step takes in turn, each a forward and a backward of its own.

    A member's activations are its own, so a part of the stack trains exactly as in the whole
    (batch norm's statistics are per channel, over the whole batch, in any part). On CPU, K
    members' activations of a batch are megabytes, past L2: each part is kept to about
    `TRAIN_PART_BYTES` of its largest activation. Digits' `simple_cnn` at K=16 is 4 MB whole, so it
    runs in two parts of 8. Through a server on two CPU slots (its two K=16 groups side by side), the
    study took 1.36-1.52 s with 2 MB parts, 1.64-1.90 s with 1 MB parts and 1.29-1.63 s whole (solo:
    3.2-3.7 s); before workers kept their freed memory (`allocator`), whose page faults grew with the
    part, parts of 4 had run 25% faster than the whole. A GPU, and a model vmap runs, take the stack whole.
    Validation splits rows instead (`eval_rows`); training cannot, as batch norm needs the whole batch.
    """
    size = fused.size
    per_member = fused.activation_bytes(x) * len(x)
    if device.type != "cpu" or fused.uses_vmap or per_member * size <= TRAIN_PART_BYTES:
        return [slice(0, size)]
    count = -(-size // max(1, TRAIN_PART_BYTES // per_member))
    bounds = [round(i * size / count) for i in range(count + 1)]
    return [slice(first, stop) for first, stop in pairwise(bounds)]


def train_part(
    fused: FusedModel,
    losses: MemberLosses,
    x: torch.Tensor,
    y: torch.Tensor,
    part: slice,
    device: torch.device,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward and backward of the members in `part` (their gradients accumulate into the
    stack's); their outputs and losses, detached."""
    with autocast(device, precision):
        outputs = fused(x, part)
        part_losses = losses(outputs, y, part)
    part_losses.sum().backward()
    return outputs.detach(), part_losses.detach()


class StateOf:
    """A part whose state dict is already taken (a member's weights, copied once for both files)."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state

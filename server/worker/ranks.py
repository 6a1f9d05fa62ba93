"""The process group of a data-parallel trial (one rank per device), or a single rank.

Imported only in worker processes (it imports torch). Every collective call here must be made by
every rank in the same order; the trainer's loop is written so that they are.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from tuneyard.server.execution.messages import Rank

RENDEZVOUS_TIMEOUT = timedelta(seconds=60)


class Ranks:
    """This process's rank in the trial, and the few collectives the trainer needs."""

    def __init__(self, rank: Rank, device: torch.device) -> None:
        self.rank, self.world = rank.rank, rank.world_size
        if self.world > 1:
            dist.init_process_group(
                backend="nccl" if device.type == "cuda" else "gloo",
                init_method=f"tcp://127.0.0.1:{rank.dist_port}",
                rank=self.rank,
                world_size=self.world,
                timeout=RENDEZVOUS_TIMEOUT,
            )
        self.device = device

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def agree(self, local: bool) -> bool:
        """True on every rank when any rank says so, so all ranks stop at the same batch."""
        if self.world == 1:
            return local
        flag = torch.tensor([1.0 if local else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def share(self, value: float) -> float:
        """Rank 0's value on every rank (a monitored metric for the LR schedule)."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

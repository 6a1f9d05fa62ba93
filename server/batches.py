"""Batches for the trainer: tensors sliced directly when a split fits in memory, else a DataLoader."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

Transform = Callable[[torch.Tensor], torch.Tensor]


class Batches:
    """Yields (inputs, labels); `transform` runs on each batch of inputs (on the CPU)."""

    def __init__(
        self,
        data: Dataset,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        transform: Transform | None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        """`shard=(rank, world_size)`: every rank walks the same batches and keeps its slice of each."""
        self.data, self.batch_size, self.shuffle, self.transform = data, batch_size, shuffle, transform
        self.rank, self.world = shard
        self.generator = torch.Generator().manual_seed(seed)
        self.tensors = data.tensors if isinstance(data, TensorDataset) else None

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.tensors is None:
            loader = DataLoader(
                self.data, batch_size=self.batch_size, shuffle=self.shuffle, generator=self.generator
            )
            for x, y in loader:
                yield self._apply(x[self.rank :: self.world]), y[self.rank :: self.world]
            return
        x_all, y_all = self.tensors
        n = len(x_all)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size][self.rank :: self.world]
            yield self._apply(x_all[idx]), y_all[idx]

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x) if self.transform is not None else x

"""How batches reach the model: the device path or the loader path.

Device path: a split that is an in-memory tensor (TensorDataset) and fits is copied to the
trial's device once; each batch is an index into it, per-sample augmentations run there, and
normalisation follows. No worker processes, no per-batch host-to-device copy.
Loader path: a DataLoader whose worker processes load and augment samples; batches are copied
to the device and normalised there. Used for datasets that are not tensors or do not fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

Transform = Callable[[torch.Tensor], torch.Tensor]
DEVICE_MEMORY_SHARE = 0.25  # a split may take this share of free GPU memory on the device path


def _per_sample(augmentations: Sequence[Transform], x: torch.Tensor) -> torch.Tensor:
    """Each sample gets its own random draw of every augmentation."""
    if not augmentations:
        return x
    out = torch.empty_like(x)
    for i in range(len(x)):
        sample = x[i]
        for aug in augmentations:
            sample = aug(sample)
        out[i] = sample
    return out


def fits_on_device(data: Dataset, device: torch.device) -> bool:
    """True when `data` is a TensorDataset small enough to keep whole on `device`."""
    if not isinstance(data, TensorDataset):
        return False
    if device.type != "cuda":
        return True
    size = sum(t.numel() * t.element_size() for t in data.tensors)
    free, _total = torch.cuda.mem_get_info(device)
    return size <= DEVICE_MEMORY_SHARE * free


class _Augmented(Dataset):
    """A dataset whose samples are augmented on access (inside DataLoader workers)."""

    def __init__(self, base: Dataset, augmentations: Sequence[Transform]) -> None:
        self.base, self.augmentations = base, augmentations

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        x, y = self.base[index]
        for aug in self.augmentations:
            x = aug(x)
        return x, y


class Batches:
    """Yields (inputs, labels) on `device`, augmented per sample, then normalised.

    Labels pass through as the dataset holds them: int class labels (N,), or float targets (N,) or
    (N, T) of a regression or multilabel task (indexed on the device path, stacked by the loader's
    collate on the loader path; a task casts them to the dtype it computes in).

    `shard=(rank, world_size)`: every rank walks the same batches and keeps its slice of each.
    """

    def __init__(
        self,
        data: Dataset,
        batch_size: int,
        *,
        device: torch.device,
        shuffle: bool,
        seed: int,
        augmentations: Sequence[Transform] = (),
        normalise: Transform | None = None,
        pipeline: str = "auto",
        loader_workers: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.data, self.batch_size, self.device, self.shuffle = data, batch_size, device, shuffle
        self.augmentations, self.normalise = list(augmentations), normalise
        self.rank, self.world = shard
        self.generator = torch.Generator().manual_seed(seed)
        if pipeline == "device" and not isinstance(data, TensorDataset):
            raise ValueError("data_pipeline 'device' needs an in-memory (tensor) dataset; use 'auto' or 'loader'")
        self.on_device = pipeline == "device" or (pipeline == "auto" and fits_on_device(data, device))
        # on_device implies a TensorDataset: the "device" pipeline checked it above, fits_on_device checks it.
        self.tensors = [t.to(device) for t in cast(TensorDataset, data).tensors] if self.on_device else None
        self.loader = (
            None
            if self.on_device
            else DataLoader(
                _Augmented(data, self.augmentations),
                batch_size=batch_size,
                shuffle=shuffle,
                generator=self.generator,
                num_workers=loader_workers,
                pin_memory=device.type == "cuda",
                persistent_workers=loader_workers > 0,
            )
        )

    @property
    def pipeline(self) -> str:
        return "device" if self.on_device else "loader"

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.tensors is None:
            yield from self._from_loader()
            return
        x_all, y_all = self.tensors
        n = len(x_all)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.device)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size][self.rank :: self.world]
            yield self._finish(_per_sample(self.augmentations, x_all[idx])), y_all[idx]

    def _from_loader(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cuda = self.device.type == "cuda"
        assert self.loader is not None
        for x, y in self.loader:
            x, y = x[self.rank :: self.world], y[self.rank :: self.world]
            yield self._finish(x.to(self.device, non_blocking=cuda)), y.to(self.device, non_blocking=cuda)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalise is not None:
            x = self.normalise(x)
        if self.device.type == "cuda" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

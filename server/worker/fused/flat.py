"""All of a fused model's parameters as one (K, P) tensor, so an optimizer step is one update, not one per tensor.

A step of the stacked optimizer runs its rule's dozen-odd elementwise ops once per parameter
tensor; a small model's step is then those ops' fixed costs (about 2 ms for Adam on a three-layer
MLP's six tensors on CPU, the largest part of its fused batch). When every member keeps all its
parameters in one param group, the hyperparameters are the same for every tensor, so the rule runs
once over the members' gradients and weights laid side by side: the optimizer's state tensors are
views into one (K, P) buffer per state, and the weights and gradients are gathered into (K, P) and
the new weights copied back. The ops are elementwise, so each element's value is the one the
per-tensor step computes.

Imported only in worker processes (it imports torch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


class FlatLayout:
    """Where each parameter's elements lie along P, the (K, P) gather and the write-back."""

    def __init__(self, params: Mapping[str, Tensor]) -> None:
        first = next(iter(params.values()))
        self.k, self.dtype, self.device = first.shape[0], first.dtype, first.device
        self.shapes = [tuple(t.shape) for t in params.values()]
        self.sizes = [t[0].numel() for t in params.values()]
        self.width = sum(self.sizes)

    @staticmethod
    def fits(params: Mapping[str, Tensor]) -> bool:
        """Whether the parameters can share one buffer: one dtype and one device."""
        tensors = list(params.values())
        return bool(tensors) and all(t.dtype == tensors[0].dtype and t.device == tensors[0].device for t in tensors)

    def buffer(self) -> Tensor:
        """A zeroed (K, P) buffer in the parameters' dtype and device."""
        return torch.zeros(self.k, self.width, dtype=self.dtype, device=self.device)

    def views(self, flat: Tensor) -> list[Tensor]:
        """Each parameter's shaped view into a (K, P) buffer, in the parameters' order."""
        return [part.view(shape) for part, shape in zip(flat.split(self.sizes, dim=1), self.shapes, strict=True)]

    def gather(self, tensors: Sequence[Tensor]) -> Tensor:
        """The tensors (one per parameter, in order) side by side as (K, P)."""
        return torch.cat([t.reshape(self.k, -1) for t in tensors], dim=1)

    def scatter(self, flat: Tensor, into: Sequence[Tensor]) -> None:
        """Copies a (K, P) tensor back into the parameters' own tensors."""
        for target, part in zip(into, self.views(flat), strict=True):
            target.copy_(part)

"""Built-in per-sample augmentations (torchvision.transforms.v2) on float CHW tensors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchvision.transforms import v2

from tuneyard.plugins import hookimpl


def random_crop(*, input_shape: tuple[int, ...], padding: int = 1) -> Callable[[Any], Any]:
    """Pad each side with zeros, then crop a random window of the input's own size.

    Args:
        padding: pixels of zero padding added to each side before cropping.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    height, width = int(input_shape[-2]), int(input_shape[-1])
    return v2.RandomCrop((height, width), padding=padding)


def horizontal_flip(*, p: float = 0.5) -> Callable[[Any], Any]:
    """Mirror the image left-right with probability p.

    Args:
        p: probability of flipping each sample.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return v2.RandomHorizontalFlip(p=p)


@hookimpl
def tuneyard_register_augmentations(register: Any) -> None:
    register("random_crop", random_crop)
    register("horizontal_flip", horizontal_flip)

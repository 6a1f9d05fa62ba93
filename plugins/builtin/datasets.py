"""Built-in datasets. `digits` is bundled with scikit-learn, so it needs no network."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import DatasetSplits


def digits(*, root: str, val_fraction: float = 0.15, test_fraction: float = 0.15, split_seed: int = 0) -> DatasetSplits:
    """8x8 handwritten digits (1797 images, 10 classes), split stratified and seeded.

    Args:
        val_fraction: share of the images in the validation split.
        test_fraction: share of the images in the test split.
        split_seed: seed of the split (the same seed always gives the same split).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be > 0 and sum to less than 1")
    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=split_seed)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), stratify=labels[rest], random_state=split_seed
    )

    def subset(idx: np.ndarray) -> TensorDataset:
        idx = np.sort(idx)
        return TensorDataset(torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]))

    train_pixels = images[train]
    return DatasetSplits(
        train=subset(train),
        val=subset(val),
        test=subset(test),
        num_classes=10,
        input_shape=(1, 8, 8),
        mean=(float(train_pixels.mean()),),
        std=(float(train_pixels.std()),),
    )


@hookimpl
def tuneyard_register_datasets(register: Any) -> None:
    register("digits", digits)

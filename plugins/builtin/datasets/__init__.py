"""Built-in datasets, each returning float CHW tensors in [0, 1] as TensorDatasets.

`digits` (scikit-learn's 8x8 digits, stored in this package as `digits.npz`: loading it imports
no scikit-learn, which costs a new worker 1.5 s) and `synthetic` (generated) need no files or
network. `mnist`, `fashion_mnist`, `cifar10`, `cifar100` read torchvision's on-disk format and
`image_folder` reads class-per-folder images, all from a folder inside the server's data root
(``root``); paths that leave it are refused. Nothing is downloaded unless `download: true` is set.
Statistics for normalisation are computed on the training split. The tabular datasets (`diabetes`,
`breast_cancer`, `wine`, `iris`, `csv`; in ``tabular``) return standardised feature vectors instead.

The server reads these factories' schemas without importing torch: torch and the loaders in
``files`` (which import it) are imported inside the factories, which only workers call.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import Bounds, DataPath, DatasetSplits
from tuneyard.plugins.builtin.datasets.tabular import breast_cancer, csv_file, diabetes, iris, wine

if TYPE_CHECKING:
    import numpy as np
    from torch.utils.data import TensorDataset


def stratified_split(labels: np.ndarray, fractions: tuple[float, float], seed: int) -> list[np.ndarray]:
    """Seeded train / val / test indices holding each class in the same shares: of every class,
    `fractions` (val, test) of its items, rounded, go to val and test, the rest to train."""
    import numpy as np

    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        val, test = (int(round(len(members) * fraction)) for fraction in fractions)
        parts[0].append(members[val + test :])
        parts[1].append(members[:val])
        parts[2].append(members[val : val + test])
    return [np.concatenate(part) for part in parts]


def digits(*, root: str, val_fraction: float = 0.15, test_fraction: float = 0.15, split_seed: int = 0) -> DatasetSplits:
    """8x8 handwritten digits (1797 images, 10 classes), split stratified and seeded.

    Args:
        val_fraction: share of the images in the validation split.
        test_fraction: share of the images in the test split.
        split_seed: seed of the split (the same seed always gives the same split).
    """
    import numpy as np
    import torch
    from torch.utils.data import TensorDataset

    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be > 0 and sum to less than 1")
    with np.load(Path(__file__).with_name("digits.npz")) as stored:
        images = (stored["images"].astype(np.float32) / 16.0)[:, None, :, :]
        labels = stored["labels"].astype(np.int64)
    train, val, test = stratified_split(labels, (val_fraction, test_fraction), split_seed)

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


def synthetic(
    *,
    root: str,
    num_samples: int = 512,
    num_classes: int = 4,
    channels: int = 1,
    size: int = 8,
    noise: float = 0.3,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> DatasetSplits:
    """Generated images: one smooth random pattern per class plus Gaussian noise (seeded).

    Every sample is its class's pattern (a low-resolution random image scaled up to size x size),
    plus independent Gaussian noise, clipped to [0, 1]; classes are balanced. The same options
    always give the same data and splits.

    Args:
        num_samples: total number of images over all splits.
        num_classes: number of classes (each gets its own pattern).
        channels: channels per image (1 or 3 are typical).
        size: height and width of the images.
        noise: standard deviation of the Gaussian pixel noise (larger: harder).
        seed: seed of the patterns, the noise and the split.
        val_fraction: share of the images in the validation split.
        test_fraction: share of the images in the test split.
    """
    import torch

    from tuneyard.plugins.builtin.datasets import files

    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if num_samples < 3 * num_classes:
        raise ValueError(f"num_samples must be >= 3 * num_classes, got {num_samples}")
    if channels < 1 or size < 1:
        raise ValueError(f"channels and size must be >= 1, got channels={channels}, size={size}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    files.check_fraction("val_fraction", val_fraction)
    files.check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must sum to less than 1")
    generator = torch.Generator().manual_seed(seed)
    coarse = max(2, (size + 1) // 2)
    patterns = torch.rand(num_classes, channels, coarse, coarse, generator=generator)
    patterns = torch.nn.functional.interpolate(patterns, size=(size, size), mode="bilinear", align_corners=False)
    labels = (torch.arange(num_samples) % num_classes)[torch.randperm(num_samples, generator=generator)]
    images = patterns[labels] + noise * torch.randn(num_samples, channels, size, size, generator=generator)
    images = images.clamp_(0.0, 1.0).contiguous()
    train, val, test = files.stratified_split(labels.numpy(), [val_fraction, test_fraction], seed)
    parts = [(images[torch.from_numpy(i)], labels[torch.from_numpy(i)]) for i in (train, val, test)]
    return files.make_splits(parts[0], parts[1], parts[2], num_classes)


def _torchvision(
    name: str, root: str, path: str, download: bool, val_fraction: float, split_seed: int
) -> DatasetSplits:
    from tuneyard.plugins.builtin.datasets import files

    return files.load_torchvision(
        name, root=root, path=path, download=download, val_fraction=val_fraction, split_seed=split_seed
    )


def mnist(
    *, root: str, path: DataPath = "mnist", download: bool = False, val_fraction: float = 0.1, split_seed: int = 0
) -> DatasetSplits:
    """MNIST handwritten digits (28x28 grayscale, 10 classes) in torchvision's format.

    Reads `<data root>/<path>/MNIST/raw/` (train-images-idx3-ubyte, ...). The official training
    set is split into train and val; the official test set is the test split.

    Args:
        path: folder inside the data root that holds torchvision's MNIST/ folder.
        download: fetch the files into that folder when they are missing (needs a network).
        val_fraction: share of the official training set held out for validation (stratified).
        split_seed: seed of the train/val split.
    """
    return _torchvision("mnist", root, path, download, val_fraction, split_seed)


def fashion_mnist(
    *,
    root: str,
    path: DataPath = "fashion_mnist",
    download: bool = False,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> DatasetSplits:
    """Fashion-MNIST clothing images (28x28 grayscale, 10 classes) in torchvision's format.

    Reads `<data root>/<path>/FashionMNIST/raw/`. The official training set is split into train
    and val; the official test set is the test split.

    Args:
        path: folder inside the data root that holds torchvision's FashionMNIST/ folder.
        download: fetch the files into that folder when they are missing (needs a network).
        val_fraction: share of the official training set held out for validation (stratified).
        split_seed: seed of the train/val split.
    """
    return _torchvision("fashion_mnist", root, path, download, val_fraction, split_seed)


def cifar10(
    *, root: str, path: DataPath = "cifar10", download: bool = False, val_fraction: float = 0.1, split_seed: int = 0
) -> DatasetSplits:
    """CIFAR-10 (32x32 RGB, 10 classes) in torchvision's format, checksums verified.

    Reads `<data root>/<path>/cifar-10-batches-py/` (data_batch_1..5, test_batch, batches.meta).
    The official training set is split into train and val; the official test set is the test split.

    Args:
        path: folder inside the data root that holds cifar-10-batches-py/.
        download: fetch and extract the archive into that folder when missing (needs a network).
        val_fraction: share of the official training set held out for validation (stratified).
        split_seed: seed of the train/val split.
    """
    return _torchvision("cifar10", root, path, download, val_fraction, split_seed)


def cifar100(
    *, root: str, path: DataPath = "cifar100", download: bool = False, val_fraction: float = 0.1, split_seed: int = 0
) -> DatasetSplits:
    """CIFAR-100 (32x32 RGB, 100 fine classes) in torchvision's format, checksums verified.

    Reads `<data root>/<path>/cifar-100-python/` (train, test, meta). The official training set is
    split into train and val; the official test set is the test split.

    Args:
        path: folder inside the data root that holds cifar-100-python/.
        download: fetch and extract the archive into that folder when missing (needs a network).
        val_fraction: share of the official training set held out for validation (stratified).
        split_seed: seed of the train/val split.
    """
    return _torchvision("cifar100", root, path, download, val_fraction, split_seed)


def image_folder(
    *,
    root: str,
    path: DataPath,
    size: int = 32,
    channels: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_seed: int = 0,
) -> DatasetSplits:
    """Class-per-folder images (any format PIL reads), resized to size x size and loaded once.

    Two layouts under `<data root>/<path>`: `train/<class>/*.png` with optional `val/<class>/` and
    `test/<class>/` folders, or `<class>/*.png` directly. A split without its own folder is carved
    out of the training images (stratified, seeded) by its fraction. Classes are the training
    folder's subfolder names, sorted; images are searched recursively inside each.

    Args:
        path: folder inside the data root that holds the images.
        size: height and width every image is resized to.
        channels: 1 (grayscale), 3 (RGB), or 0 for 1 when every image is grayscale and 3 otherwise.
        val_fraction: share of the training images held out for validation when there is no val/ folder.
        test_fraction: share of the training images held out for testing when there is no test/ folder
            (0: an empty test split).
        split_seed: seed of the carved-out splits.
    """
    from tuneyard.plugins.builtin.datasets import files

    return files.load_image_folder(
        root=root,
        path=path,
        size=size,
        channels=channels,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        split_seed=split_seed,
    )


@hookimpl
def tuneyard_register_datasets(register: Any) -> None:
    # Split seeds seed numpy's generator (no negative seeds) or, for digits, scikit-learn's (below 2**32).
    share, optional_share, seed = Bounds(gt=0, lt=1), Bounds(ge=0, lt=1), Bounds(ge=0)
    official = {"val_fraction": share, "split_seed": seed}
    register(
        "digits",
        digits,
        bounds={"val_fraction": share, "test_fraction": share, "split_seed": Bounds(ge=0, le=2**32 - 1)},
    )
    register(
        "synthetic",
        synthetic,
        bounds={
            "num_samples": Bounds(ge=6),  # at least 3 per class, and at least 2 classes
            "num_classes": Bounds(ge=2),
            "channels": Bounds(ge=1),
            "size": Bounds(ge=1),
            "noise": Bounds(ge=0),
            "seed": seed,
            "val_fraction": share,
            "test_fraction": share,
        },
    )
    register("mnist", mnist, bounds=official)
    register("fashion_mnist", fashion_mnist, bounds=official)
    register("cifar10", cifar10, bounds=official)
    register("cifar100", cifar100, bounds=official)
    register(
        "image_folder",
        image_folder,
        bounds={
            "size": Bounds(ge=1),
            "channels": Bounds(ge=0, le=3),  # 0 (auto), 1 or 3
            "val_fraction": optional_share,
            "test_fraction": optional_share,
            "split_seed": seed,
        },
    )
    tabular_bounds = {"val_fraction": share, "test_fraction": share, "seed": seed}
    register("diabetes", diabetes, task="regression", bounds=tabular_bounds)
    for name, factory in (("breast_cancer", breast_cancer), ("wine", wine), ("iris", iris)):
        register(name, factory, bounds=tabular_bounds)
    register("csv", csv_file, bounds=tabular_bounds)  # its task is its `task` option

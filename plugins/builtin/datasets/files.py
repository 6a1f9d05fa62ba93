"""Helpers of the built-in datasets (not a plugin module): paths inside the data root, seeded
stratified splits, statistics, and loaders for torchvision's on-disk formats and image folders.

Everything is loaded once into float CHW tensors in [0, 1] (TensorDatasets), which the trainer
slices directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from tuneyard.plugins.api import DatasetSplits, resolve_data_path

# ---- paths ----


def confine(root: str, value: str, option: str) -> Path:
    """``value`` resolved inside the data root by `resolve_data_path`, the rule the server's validation
    applies, so a trial refuses exactly what CreateStudy refuses; ValueError naming ``option`` and the
    value as sent, never a resolved location."""
    try:
        return resolve_data_path(root, value)
    except ValueError as exc:
        raise ValueError(f"option {option!r}: {exc}; nothing outside the data root is read") from None


def check_file_inside(root: str, file: Path, option: str) -> None:
    """A file found under an option's folder must not be a symbolic link out of the data root.

    ``file`` lies under a folder `confine` returned; it is checked (and named in the error) by its
    path relative to the data root, which reveals nothing about the server's own layout.
    """
    confine(root, str(file.relative_to(Path(root).resolve())), option)


# ---- splits and statistics ----


def check_fraction(name: str, value: float, *, allow_zero: bool = False) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        raise ValueError(f"{name} must be in {'[0' if allow_zero else '(0'}, 1), got {value}")


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Seeded, stratified split of ``range(len(labels))`` into ``[rest, part_1, ..., part_k]``.

    Part i holds ``round(n * fractions[i])`` indices (at least one when its fraction is > 0), each
    class represented in proportion (systematic sampling of a per-class shuffle); every returned
    index array is sorted. ValueError when nothing would be left for ``rest``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    rng = np.random.default_rng(seed)
    key = np.empty(n, dtype=np.float64)
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        key[members] = (np.arange(len(members)) + rng.random()) / len(members)
    order = np.argsort(key, kind="stable")
    sizes = [max(1, round(n * f)) if f > 0 else 0 for f in fractions]
    if sum(sizes) >= n:
        raise ValueError(f"{n} samples are too few to split off fractions {list(fractions)} and keep a training split")
    parts, start = [], 0
    for size in sizes:
        parts.append(np.sort(order[start : start + size]))
        start += size
    return [np.sort(order[start:]), *parts]


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of an (N, C, H, W) tensor, accumulated in float64.

    A constant channel gets std 1, so normalising never divides by zero.
    """
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].transpose(0, 1).reshape(channels, -1).double()
        total += part.sum(1)
        squares += part.square().sum(1)
    count = max(images.numel() // max(channels, 1), 1)
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def to_float(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) -> contiguous float32 in [0, 1]."""
    tensor = torch.as_tensor(images).contiguous()
    return tensor.to(torch.float32).div_(255.0)


def tensor_dataset(images: torch.Tensor, labels: torch.Tensor | np.ndarray) -> TensorDataset:
    return TensorDataset(images, torch.as_tensor(labels, dtype=torch.int64))


def make_splits(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
) -> DatasetSplits:
    """DatasetSplits of float image tensors, statistics computed on the training split."""
    mean, std = channel_stats(train[0])
    return DatasetSplits(
        train=tensor_dataset(*train),
        val=tensor_dataset(*val),
        test=tensor_dataset(*test),
        num_classes=num_classes,
        input_shape=tuple(int(s) for s in train[0].shape[1:]),
        mean=mean,
        std=std,
    )


# ---- torchvision's formats ----

_MNIST_FILES = tuple(f"{s}-{k}" for s in ("train", "t10k") for k in ("images-idx3-ubyte", "labels-idx1-ubyte"))
_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")

# dataset name -> (torchvision.datasets class name, files that must exist relative to the folder)
TORCHVISION: dict[str, tuple[str, tuple[str, ...]]] = {
    "mnist": ("MNIST", tuple(f"MNIST/raw/{f}" for f in _MNIST_FILES)),
    "fashion_mnist": ("FashionMNIST", tuple(f"FashionMNIST/raw/{f}" for f in _MNIST_FILES)),
    "cifar10": ("CIFAR10", tuple(f"cifar-10-batches-py/{f}" for f in _CIFAR10_FILES)),
    "cifar100": ("CIFAR100", tuple(f"cifar-100-python/{f}" for f in ("train", "test", "meta"))),
}


def _as_nchw_uint8(data: torch.Tensor | np.ndarray) -> torch.Tensor:
    """MNIST keeps (N, H, W) uint8 tensors, CIFAR (N, H, W, C) uint8 arrays: both to (N, C, H, W)."""
    tensor = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data)
    if tensor.dim() == 3:
        return tensor.unsqueeze(1)
    return tensor.permute(0, 3, 1, 2)


def load_torchvision(
    name: str, *, root: str, path: str, download: bool, val_fraction: float, split_seed: int
) -> DatasetSplits:
    """One of TORCHVISION from ``root/path`` in torchvision's layout (fetched only when ``download``)."""
    import torchvision.datasets

    check_fraction("val_fraction", val_fraction)
    class_name, files = TORCHVISION[name]
    folder = confine(root, path, "path")
    if download:
        folder.mkdir(parents=True, exist_ok=True)
    else:
        missing = [folder / f for f in files if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"dataset {name!r}: {missing[0]} not found ({len(missing)} of {len(files)} files missing; "
                f"expected torchvision's {class_name} layout under {folder}). "
                f"Set the dataset option `download: true` to fetch it there."
            )
    for f in files:
        if (folder / f).exists():
            check_file_inside(root, folder / f, "path")
    cls = getattr(torchvision.datasets, class_name)
    if download:
        try:
            cls(str(folder), train=True, download=True)  # fetches (and checks) both splits
        except Exception as exc:
            raise RuntimeError(f"dataset {name!r}: downloading into {folder} failed: {exc}") from exc
    try:
        train_set = cls(str(folder), train=True, download=False)
        test_set = cls(str(folder), train=False, download=False)
    except RuntimeError as exc:
        raise RuntimeError(
            f"dataset {name!r} under {folder}: {exc} (the files are incomplete or not the original ones; "
            f"delete them and set `download: true` to fetch them again)"
        ) from None
    num_classes = len(train_set.classes)
    train_images = _as_nchw_uint8(train_set.data)
    train_labels = torch.as_tensor(np.asarray(train_set.targets), dtype=torch.int64)
    test_images = _as_nchw_uint8(test_set.data)
    test_labels = torch.as_tensor(np.asarray(test_set.targets), dtype=torch.int64)
    del train_set, test_set
    rest, val = stratified_split(train_labels.numpy(), [val_fraction], split_seed)
    rest_t, val_t = torch.from_numpy(rest), torch.from_numpy(val)
    return make_splits(
        (to_float(train_images[rest_t]), train_labels[rest_t]),
        (to_float(train_images[val_t]), train_labels[val_t]),
        (to_float(test_images), test_labels),
        num_classes,
    )


# ---- image folders ----

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def _class_files(folder: Path) -> dict[str, list[Path]]:
    """class name -> sorted image files (searched recursively) of every non-hidden subfolder with images."""
    classes: dict[str, list[Path]] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f
            for f in sub.rglob("*")
            if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".") and f.is_file()
        )
        if files:
            classes[sub.name] = files
    return classes


def _load_images(files: list[Path], size: int, mode: str) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    channels = 1 if mode == "L" else 3
    out = torch.empty((len(files), channels, size, size), dtype=torch.uint8)
    for i, file in enumerate(files):
        try:
            with Image.open(file) as opened:
                image = opened.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
                array = np.asarray(image, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise ValueError(f"cannot read image {file}: {exc}") from None
        out[i] = torch.from_numpy(array.reshape(size, size, channels).copy()).permute(2, 0, 1)
    return out


def _is_grayscale(file: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            return image.mode in _GRAYSCALE_MODES
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"cannot read image {file}: {exc}") from None


def _class_folders(root: str, folder: Path) -> dict[str, dict[str, list[Path]]]:
    """split -> class -> image files: ``train/`` (+ ``val/``, ``test/``) when present, else ``folder`` as train.

    Every split needs images, every class a training image, and no file may lead out of the data root.
    """
    layout = {"train": folder}
    if (folder / "train").is_dir():
        layout = {split: folder / split for split in ("train", "val", "test") if (folder / split).is_dir()}
    found = {split: _class_files(sub) for split, sub in layout.items()}
    for split, per_class in found.items():
        if not per_class:
            raise FileNotFoundError(
                f"dataset 'image_folder': no images in class subfolders of {layout[split]} "
                f"(expected <class>/<image> with one of {', '.join(IMAGE_EXTENSIONS)})"
            )
    for split, per_class in found.items():
        unknown = sorted(set(per_class) - set(found["train"]))
        if unknown:
            raise ValueError(f"dataset 'image_folder': class {unknown[0]!r} in {layout[split]} has no training images")
        for files in per_class.values():
            for file in files:
                check_file_inside(root, file, "path")
    return found


def _labelled(per_class: dict[str, list[Path]], classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """The files of ``per_class`` in class order, with each one's class index."""
    files = [f for c in classes for f in per_class.get(c, [])]
    labels = np.array([i for i, c in enumerate(classes) for _ in per_class.get(c, [])], dtype=np.int64)
    return files, labels


def _image_mode(channels: int, found: dict[str, dict[str, list[Path]]]) -> str:
    """PIL's mode to load in: channels 0 picks grayscale only when every image of every split is."""
    if channels == 0:
        files = (f for per_class in found.values() for class_files in per_class.values() for f in class_files)
        channels = 1 if all(_is_grayscale(f) for f in files) else 3
    return "L" if channels == 1 else "RGB"


def load_image_folder(
    *,
    root: str,
    path: str,
    size: int,
    channels: int,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
) -> DatasetSplits:
    """Class-per-folder images from ``root/path``: ``train/`` (+ ``val/``, ``test/``) or one folder.

    A split without its own folder is carved out of the training images (seeded and stratified).
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if channels not in (0, 1, 3):
        raise ValueError(f"channels must be 0 (auto), 1 or 3, got {channels}")
    check_fraction("val_fraction", val_fraction, allow_zero=True)
    check_fraction("test_fraction", test_fraction, allow_zero=True)
    folder = confine(root, path, "path")
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset 'image_folder': folder {folder} (option 'path' = {path!r}) not found")
    found = _class_folders(root, folder)
    classes = sorted(found["train"])
    mode = _image_mode(channels, found)
    train_files, train_labels = _labelled(found["train"], classes)
    carve = [s for s in ("val", "test") if s not in found]
    fractions = {"val": val_fraction, "test": test_fraction}
    if "val" in carve and val_fraction <= 0:
        raise ValueError(f"val_fraction must be > 0 when {folder} has no val/ folder")
    pieces = stratified_split(train_labels, [fractions[s] for s in carve], split_seed)
    train_images = _load_images(train_files, size, mode)
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split, piece in zip(["train", *carve], pieces, strict=True):
        splits[split] = (to_float(train_images[torch.from_numpy(piece)]), torch.from_numpy(train_labels[piece]))
    for split in ("val", "test"):
        if split in found:
            files, labels = _labelled(found[split], classes)
            splits[split] = (to_float(_load_images(files, size, mode)), torch.from_numpy(labels))
    return make_splits(splits["train"], splits["val"], splits["test"], len(classes))

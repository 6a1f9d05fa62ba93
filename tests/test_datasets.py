"""The built-in datasets: synthetic, torchvision's formats (tiny fake files written here, exactly in
torchvision's on-disk layout, never downloaded) and image folders; paths confined to the data root."""

from __future__ import annotations

import hashlib
import pickle
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image
from torch import nn

from tuneyard.plugins.api import DatasetSplits
from tuneyard.plugins.manager import PluginRegistry


@pytest.fixture(scope="module")
def reg() -> PluginRegistry:
    return PluginRegistry.load(entry_points=False)


def _create(reg: PluginRegistry, name: str, root: Path | str, **options) -> DatasetSplits:
    return reg.create("dataset", name, options, root=str(root))


def _check_splits(splits: DatasetSplits, num_classes: int, shape: tuple[int, ...]) -> None:
    assert (splits.num_classes, tuple(splits.input_shape)) == (num_classes, shape)
    for split in (splits.train, splits.val, splits.test):
        assert isinstance(split, torch.utils.data.TensorDataset)
        images, labels = split.tensors
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert tuple(images.shape[1:]) == shape and images.is_contiguous()
        if len(images):
            assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
            assert 0 <= int(labels.min()) and int(labels.max()) < num_classes
    train = splits.train.tensors[0]
    per_channel = train.transpose(0, 1).reshape(shape[0], -1)
    assert splits.mean == pytest.approx(per_channel.mean(1).tolist(), abs=1e-5)
    assert splits.std == pytest.approx(per_channel.std(1, unbiased=False).tolist(), abs=1e-5)


def _train_step(splits: DatasetSplits) -> None:
    """One real optimisation step on the first batch, normalised like the trainer does."""
    images, labels = splits.train.tensors
    shape = (1, -1, 1, 1)
    x = (images[:16] - torch.tensor(splits.mean).view(shape)) / torch.tensor(splits.std).view(shape)
    model = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(splits.input_shape)), splits.num_classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(x), labels[:16])
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()


def _rows(split: torch.utils.data.TensorDataset) -> Counter:
    images, labels = split.tensors
    return Counter((img.numpy().tobytes(), int(y)) for img, y in zip(images, labels, strict=True))


# ---- synthetic ----


def test_synthetic_is_seeded_sized_and_stratified(reg: PluginRegistry) -> None:
    a = _create(reg, "synthetic", "")
    _check_splits(a, 4, (1, 8, 8))
    assert [len(a.train), len(a.val), len(a.test)] == [358, 77, 77]
    b = _create(reg, "synthetic", "/nonexistent")
    for x, y in zip((a.train, a.val, a.test), (b.train, b.val, b.test), strict=True):
        assert all(torch.equal(s, t) for s, t in zip(x.tensors, y.tensors, strict=True))
    c = _create(reg, "synthetic", "", seed=1)
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    assert not (_rows(a.train) & (_rows(a.val) + _rows(a.test)))  # disjoint
    for split in (a.train, a.val, a.test):
        counts = Counter(split.tensors[1].tolist())
        assert set(counts) == set(range(4)) and max(counts.values()) - min(counts.values()) <= 2
    rgb = _create(reg, "synthetic", "", num_samples=60, num_classes=3, channels=3, size=32, val_fraction=0.2)
    _check_splits(rgb, 3, (3, 32, 32))
    assert [len(rgb.train), len(rgb.val), len(rgb.test)] == [39, 12, 9]
    _train_step(rgb)
    for bad in ({"num_classes": 1}, {"num_samples": 5}, {"noise": -1.0}, {"val_fraction": 0.6, "test_fraction": 0.4}):
        with pytest.raises(ValueError):
            _create(reg, "synthetic", "", **bad)


def test_synthetic_is_learnable(reg: PluginRegistry) -> None:
    splits = _create(reg, "synthetic", "")
    torch.manual_seed(0)

    def features(split):
        return ((split.tensors[0] - splits.mean[0]) / splits.std[0]).flatten(1), split.tensors[1]

    x, y = features(splits.train)
    model = nn.Linear(64, splits.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    xv, yv = features(splits.val)
    accuracy = float((model(xv).argmax(1) == yv).float().mean())
    assert accuracy > 0.7, accuracy  # chance is 0.25


# ---- torchvision's formats ----


def _idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as on yann.lecun.com: big-endian magic (0, 0, type 0x08 = ubyte, ndim), dims, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(folder: Path, subdir: str, n_train: int = 40, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    data = {
        "train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k_labels": np.arange(n_test, dtype=np.uint8) % 10,
    }
    raw = folder / subdir / "raw"
    for split in ("train", "t10k"):
        _idx(raw / f"{split}-images-idx3-ubyte", data[split])
        _idx(raw / f"{split}-labels-idx1-ubyte", data[f"{split}_labels"])
    return data


@pytest.mark.parametrize(("name", "subdir"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_formats(reg: PluginRegistry, tmp_path: Path, name: str, subdir: str) -> None:
    data = _fake_mnist(tmp_path / name, subdir)
    splits = _create(reg, name, tmp_path, val_fraction=0.25)
    _check_splits(splits, 10, (1, 28, 28))
    assert [len(splits.train), len(splits.val), len(splits.test)] == [30, 10, 10]
    assert torch.equal(splits.test.tensors[0], torch.from_numpy(data["t10k"]).float().div(255).unsqueeze(1))
    assert splits.test.tensors[1].tolist() == data["t10k_labels"].tolist()
    whole = Counter((img.astype(np.float32) / 255).reshape(1, 28, 28).tobytes() for img in data["train"])
    assert Counter(k for k, _ in (_rows(splits.train) + _rows(splits.val)).elements()) == whole
    assert set(splits.val.tensors[1].tolist()) == set(range(10))  # stratified
    other = _create(reg, name, tmp_path, val_fraction=0.25, split_seed=3)
    assert not torch.equal(other.val.tensors[0], splits.val.tensors[0])
    # the path option, relative or absolute inside the root
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / name).rename(tmp_path / "elsewhere" / "data")
    moved = _create(reg, name, tmp_path, path=str(tmp_path / "elsewhere" / "data"), val_fraction=0.25)
    assert torch.equal(moved.train.tensors[0], splits.train.tensors[0])
    _train_step(moved)


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _fake_cifar(folder: Path, hundred: bool, per_batch: int = 12) -> dict[str, np.ndarray]:
    """CIFAR's python pickles: {'data': uint8 (n, 3072) rows in CHW order, 'labels' | 'fine_labels': [...]}."""
    rng = np.random.default_rng(1)
    classes = 100 if hundred else 10
    key = "fine_labels" if hundred else "labels"
    names = [("train", "test")] if hundred else [tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)]
    base = folder / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    out: dict[str, np.ndarray] = {}
    for name in names[0]:
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, classes, per_batch)]
        entry = {"batch_label": name, key: labels, "data": data, "filenames": [f"{i}.png" for i in range(per_batch)]}
        if hundred:
            entry["coarse_labels"] = [v // 5 for v in labels]
        _pickle(base / name, entry)
        out[name] = data
        out[f"{name}_labels"] = np.array(labels)
    if hundred:
        meta = {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]}
        _pickle(base / "meta", meta)
    else:
        _pickle(base / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072})
    return out


def _checksummed(cls: type, folder: Path) -> type:
    """torchvision's own class, with the checksums of the fake files instead of the real ones."""

    def md5(name: str) -> str:
        return hashlib.md5((folder / cls.base_folder / name).read_bytes()).hexdigest()

    return type(
        cls.__name__,
        (cls,),
        {
            "train_list": [[n, md5(n)] for n, _ in cls.train_list],
            "test_list": [[n, md5(n)] for n, _ in cls.test_list],
            "meta": {**cls.meta, "md5": md5(cls.meta["filename"])},
        },
    )


@pytest.mark.parametrize(("name", "cls_name"), [("cifar10", "CIFAR10"), ("cifar100", "CIFAR100")])
def test_cifar_formats(
    reg: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, cls_name: str
) -> None:
    hundred = name == "cifar100"
    data = _fake_cifar(tmp_path / name, hundred)
    # the genuine class verifies the real archives' checksums: fake files are refused, clearly
    with pytest.raises(RuntimeError, match="not the original ones"):
        _create(reg, name, tmp_path)
    genuine = getattr(torchvision.datasets, cls_name)
    monkeypatch.setattr(torchvision.datasets, cls_name, _checksummed(genuine, tmp_path / name))
    splits = _create(reg, name, tmp_path, val_fraction=0.2)
    num_classes = 100 if hundred else 10
    _check_splits(splits, num_classes, (3, 32, 32))
    n_train = 12 if hundred else 60
    assert len(splits.train) + len(splits.val) == n_train and len(splits.val) == round(0.2 * n_train)
    assert len(splits.test) == 12
    test_key = "test" if hundred else "test_batch"
    expected = torch.from_numpy(data[test_key]).reshape(12, 3, 32, 32).float() / 255
    assert torch.equal(splits.test.tensors[0], expected)
    assert splits.test.tensors[1].tolist() == data[f"{test_key}_labels"].tolist()
    train_keys = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    rows = np.concatenate([data[k] for k in train_keys]).reshape(-1, 3, 32, 32).astype(np.float32) / 255
    assert Counter(k for k, _ in (_rows(splits.train) + _rows(splits.val)).elements()) == Counter(
        r.tobytes() for r in rows
    )
    _train_step(splits)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mnist", "mnist/MNIST/raw/train-images-idx3-ubyte"),
        ("fashion_mnist", "fashion_mnist/FashionMNIST/raw/train-images-idx3-ubyte"),
        ("cifar10", "cifar10/cifar-10-batches-py/data_batch_1"),
        ("cifar100", "cifar100/cifar-100-python/train"),
    ],
)
def test_missing_files_say_where_and_how_to_fetch(
    reg: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, expected: str
) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", no_network)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", no_network)
    with pytest.raises(FileNotFoundError) as caught:
        _create(reg, name, tmp_path)
    message = str(caught.value)
    assert str(tmp_path / expected) in message and "download: true" in message
    assert not (tmp_path / name).exists()  # nothing created when download is off


def test_download_is_tried_only_when_asked_and_fails_clearly(
    reg: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def offline(url, download_root, *args, **kwargs):
        calls.append(url)
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    with pytest.raises(FileNotFoundError):
        _create(reg, "mnist", tmp_path)
    assert calls == []
    with pytest.raises(RuntimeError, match=r"dataset 'mnist': downloading into .*mnist failed"):
        _create(reg, "mnist", tmp_path, download=True)
    assert calls and (tmp_path / "mnist").is_dir()
    calls.clear()
    _fake_mnist(tmp_path / "mnist", "MNIST")
    assert len(_create(reg, "mnist", tmp_path, download=True).test) == 10  # present: nothing fetched
    assert calls == []


# ---- image folders ----


def _png(path: Path, colour, mode: str = "RGB", size=(10, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def test_image_folder_single_folder_is_split_by_seed(reg: PluginRegistry, tmp_path: Path) -> None:
    colours = {"cat": (255, 0, 0), "dog": (0, 255, 0), "emu": (0, 0, 255)}
    for cls, colour in colours.items():
        for i in range(10):
            _png(tmp_path / "pets" / cls / f"{i}.png", colour)
    (tmp_path / "pets" / "notes.txt").write_text("ignored")
    (tmp_path / "pets" / "cat" / "readme.md").write_text("ignored")
    splits = _create(reg, "image_folder", tmp_path, path="pets", size=8, val_fraction=0.2, test_fraction=0.1)
    _check_splits(splits, 3, (3, 8, 8))
    assert [len(splits.train), len(splits.val), len(splits.test)] == [21, 6, 3]
    for split in (splits.train, splits.val):
        images, labels = split.tensors
        for img, label in zip(images, labels, strict=True):  # label i is the i-th class, sorted
            colour = torch.tensor(list(colours.values())[int(label)], dtype=torch.float32) / 255
            assert torch.allclose(img[:, 4, 4], colour)
    again = _create(reg, "image_folder", tmp_path, path="pets", size=8, val_fraction=0.2, test_fraction=0.1)
    assert torch.equal(again.val.tensors[0], splits.val.tensors[0])
    _train_step(splits)


def test_image_folder_train_val_test_folders(reg: PluginRegistry, tmp_path: Path) -> None:
    for split, count in (("train", 6), ("val", 2), ("test", 3)):
        for cls, grey in (("a", 30), ("b", 220)):
            for i in range(count):
                _png(tmp_path / "set" / split / cls / "sub" / f"{i}.png", grey, mode="L", size=(20, 20))
    splits = _create(reg, "image_folder", tmp_path, path="set", size=12)
    _check_splits(splits, 2, (1, 12, 12))  # all grayscale: one channel
    assert [len(splits.train), len(splits.val), len(splits.test)] == [12, 4, 6]
    assert splits.val.tensors[0][splits.val.tensors[1] == 1].mean() == pytest.approx(220 / 255)
    rgb = _create(reg, "image_folder", tmp_path, path="set", size=4, channels=3)
    _check_splits(rgb, 2, (3, 4, 4))
    # no test/ folder: the test split is carved out of train/ (test_fraction 0: empty)
    for file in (tmp_path / "set" / "test").rglob("*.png"):
        file.unlink()
    with pytest.raises(FileNotFoundError, match="no images"):
        _create(reg, "image_folder", tmp_path, path="set")
    for folder in sorted((tmp_path / "set" / "test").rglob("*"), reverse=True):
        folder.rmdir()
    (tmp_path / "set" / "test").rmdir()
    carved = _create(reg, "image_folder", tmp_path, path="set", size=4, test_fraction=0.25)
    assert [len(carved.train), len(carved.val), len(carved.test)] == [9, 4, 3]
    empty = _create(reg, "image_folder", tmp_path, path="set", size=4, test_fraction=0.0)
    assert [len(empty.train), len(empty.val), len(empty.test)] == [12, 4, 0]
    _png(tmp_path / "set" / "val" / "zebra" / "0.png", 0, mode="L")
    with pytest.raises(ValueError, match="zebra"):
        _create(reg, "image_folder", tmp_path, path="set")


def test_image_folder_errors(reg: PluginRegistry, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        _create(reg, "image_folder", tmp_path, path="absent")
    (tmp_path / "flat").mkdir()
    _png(tmp_path / "flat" / "loose.png", (1, 2, 3))
    with pytest.raises(FileNotFoundError, match="no images in class subfolders"):
        _create(reg, "image_folder", tmp_path, path="flat")
    (tmp_path / "broken" / "x").mkdir(parents=True)
    (tmp_path / "broken" / "x" / "0.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        _create(reg, "image_folder", tmp_path, path="broken")
    with pytest.raises(ValueError):
        _create(reg, "image_folder", tmp_path, path="flat", channels=2)
    with pytest.raises(ValueError, match="option 'path' of dataset 'image_folder' is required"):
        _create(reg, "image_folder", tmp_path)


# ---- the data root ----


@pytest.mark.parametrize("name", ["image_folder", "mnist", "cifar10"])
def test_paths_outside_the_data_root_are_refused(reg: PluginRegistry, tmp_path: Path, name: str) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    for cls in ("a", "b"):
        for i in range(3):
            _png(outside / cls / f"{i}.png", (i, 0, 0))
    _fake_mnist(outside, "MNIST")
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    for path in ("../outside", str(outside), "link", "sub/../../outside"):
        with pytest.raises(ValueError, match=r"option 'path'.*outside the data root"):
            _create(reg, name, root, path=path)
    with pytest.raises(ValueError, match="no data root"):
        _create(reg, name, "", path="x")


def test_a_symlinked_image_pointing_out_is_refused(reg: PluginRegistry, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for cls in ("a", "b"):
        for i in range(3):
            _png(root / "imgs" / cls / f"{i}.png", (i, 0, 0))
    _png(tmp_path / "secret.png", (9, 9, 9))
    (root / "imgs" / "a" / "9.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(ValueError, match="outside the data root"):
        _create(reg, "image_folder", root, path="imgs")
    (root / "imgs" / "a" / "9.png").unlink()
    (root / "imgs" / "a" / "9.png").symlink_to(root / "imgs" / "b" / "0.png")  # inside: fine
    assert len(_create(reg, "image_folder", root, path="imgs", val_fraction=0.2, test_fraction=0.1).train) == 5

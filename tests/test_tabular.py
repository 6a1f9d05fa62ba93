"""The tabular datasets (scikit-learn's bundled tables and `csv`) and the `mlp` model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import datasets as sk_datasets
from torch import nn

from tuneyard.plugins.api import DatasetSplits
from tuneyard.plugins.manager import PluginRegistry

# name -> (task, num_classes, n_features, rows)
BUNDLED = {
    "diabetes": ("regression", 1, 10, 442),
    "breast_cancer": ("classification", 2, 30, 569),
    "wine": ("classification", 3, 13, 178),
    "iris": ("classification", 3, 4, 150),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reg() -> PluginRegistry:
    return PluginRegistry.load(entry_points=False)


def _create(reg: PluginRegistry, name: str, root: Path | str = "", **options: object) -> DatasetSplits:
    return reg.create("dataset", name, options, root=str(root))


def _arrays(splits: DatasetSplits) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(s.tensors[0].numpy(), s.tensors[1].numpy()) for s in (splits.train, splits.val, splits.test)]


def _undo(splits: DatasetSplits, raw: np.ndarray) -> list[np.ndarray]:
    """Each split's features mapped back to raw units by the one per-column affine map that turns the
    union of the splits into the raw table (fitted on the union: the splits together hold every row)."""
    parts = [x.astype(np.float64) for x, _ in _arrays(splits)]
    union = np.concatenate(parts)
    scale = raw.std(0) / union.std(0)
    shift = raw.mean(0) - scale * union.mean(0)
    assert np.allclose(np.sort(union * scale + shift, 0), np.sort(raw, 0), atol=1e-6 * (1 + np.abs(raw).max()))
    return [p * scale + shift for p in parts]


def _check_train_statistics(splits: DatasetSplits, raw: np.ndarray) -> None:
    """Train is mean 0, std 1 per column, and val and test went through train's map, not their own."""
    train, val, test = _undo(splits, raw)
    spread = raw.std(0)
    for part in (train, val, test):  # every row is a raw row (within float32's precision)
        assert np.all((np.abs(part[:, None, :] - raw[None, :, :]) / spread).max(2).min(1) < 1e-4)
    z_train, z_val, z_test = (x for x, _ in _arrays(splits))
    assert z_train.mean(0) == pytest.approx(np.zeros(raw.shape[1]), abs=1e-5)
    assert z_train.std(0) == pytest.approx(np.ones(raw.shape[1]), abs=1e-4)
    mean, std = train.mean(0), train.std(0)
    for z, back in ((z_val, val), (z_test, test)):
        assert np.allclose(z, (back - mean) / std, atol=1e-4)
    assert np.abs(z_val.mean(0)).max() > 0.05  # val is not standardised on its own statistics


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_shapes_types_and_splits(reg: PluginRegistry, name: str) -> None:
    task, num_classes, n_features, rows = BUNDLED[name]
    assert reg.get("dataset", name).task == task
    splits = _create(reg, name)
    assert (splits.task, splits.num_classes, tuple(splits.input_shape)) == (task, num_classes, (n_features,))
    assert splits.mean == () and splits.std == ()
    parts = _arrays(splits)
    assert sum(len(x) for x, _ in parts) == rows
    assert [len(x) for x, _ in parts[1:]] == [round(rows * 0.2)] * 2
    for x, y in parts:
        assert x.dtype == np.float32 and x.shape[1:] == (n_features,) and len(y) == len(x)
        if task == "classification":
            assert y.dtype == np.int64 and y.shape == (len(x),)
            assert set(np.unique(y)) == set(range(num_classes))  # stratified: every class in every split
        else:
            assert y.dtype == np.float32 and y.shape == (len(x), 1)
    raw = getattr(sk_datasets, f"load_{name}")()
    if task == "classification":  # class shares kept within one row per split
        overall = np.bincount(raw.target) / rows
        for _, y in parts:
            assert np.all(np.abs(np.bincount(y, minlength=num_classes) - overall * len(y)) <= 1.0 + 1e-9)
    train = parts[0][0]
    assert train.mean(0) == pytest.approx(np.zeros(n_features), abs=1e-5)
    assert train.std(0) == pytest.approx(np.ones(n_features), abs=1e-4)


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_split_is_deterministic_per_seed(reg: PluginRegistry, name: str) -> None:
    a, b, c = (_arrays(_create(reg, name, seed=s)) for s in (3, 3, 4))
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert not np.array_equal(a[1][0], c[1][0])


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_val_and_test_use_the_train_statistics(reg: PluginRegistry, name: str) -> None:
    raw = getattr(sk_datasets, f"load_{name}")().data.astype(np.float64)
    _check_train_statistics(_create(reg, name, seed=1), raw)


def test_diabetes_target_scaling(reg: PluginRegistry) -> None:
    raw = sk_datasets.load_diabetes().target.astype(np.float64)
    scaled, unscaled = _create(reg, "diabetes"), _create(reg, "diabetes", scale_target=False)
    (_, y_train), (_, y_val), _ = _arrays(scaled)
    assert float(y_train.mean()) == pytest.approx(0.0, abs=1e-5) and float(y_train.std()) == pytest.approx(1, abs=1e-4)
    (_, raw_train), (_, raw_val), _ = _arrays(unscaled)
    assert np.abs(raw_train[:, 0, None] - raw[None, :]).min(1).max() < 1e-3  # raw targets, unscaled
    mean, std = raw_train.astype(np.float64).mean(), raw_train.astype(np.float64).std()
    assert np.allclose(y_val[:, 0], (raw_val[:, 0] - mean) / std, atol=1e-4)


def test_bundled_fractions_are_checked(reg: PluginRegistry) -> None:
    splits = _create(reg, "iris", val_fraction=0.1, test_fraction=0.3)
    assert [len(s) for s in (splits.train, splits.val, splits.test)] == [90, 15, 45]
    with pytest.raises(ValueError, match="training split would be empty"):
        _create(reg, "iris", val_fraction=0.5, test_fraction=0.5)
    entry = reg.get("dataset", "iris")
    for option in ("val_fraction", "test_fraction"):
        bounds = entry.param(option).bounds
        assert bounds is not None and bounds.problem(0) and bounds.problem(1) and not bounds.problem(0.5)


# ---- csv ----


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _table(rows: int, seed: int = 0) -> tuple[str, np.ndarray]:
    """A CSV of two features, a string label, a numeric target and two 0/1 labels, and its features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 2)) * [3.0, 0.5] + [10.0, -2.0]
    names = np.array(["setosa", "virginica", "versicolor"])
    lines = ["height,width,species,size,tall,wide"]
    for i, (h, w) in enumerate(x):
        h, w = float(h), float(w)
        lines.append(f"{h!r},{w!r},{names[i % 3]},{2 * h + w!r},{int(h > 10)},{int(w > -2)}")
    return "\n".join(lines) + "\n", x


def test_csv_classification_with_string_labels(reg: PluginRegistry, tmp_path: Path) -> None:
    text, x = _table(60)
    _write(tmp_path / "tables" / "t.csv", text)
    splits = _create(reg, "csv", tmp_path, path="tables/t.csv", target="species", features=["height", "width"])
    assert (splits.task, splits.num_classes, tuple(splits.input_shape)) == ("classification", 3, (2,))
    parts = _arrays(splits)
    assert [len(y) for _, y in parts] == [36, 12, 12]
    for _, y in parts:  # sorted names: setosa 0, versicolor 1, virginica 2; each split stratified
        assert y.dtype == np.int64 and np.bincount(y).tolist() == [len(y) // 3] * 3
    _check_train_statistics(splits, x)
    # Every column but the target is a feature by default; numeric labels sort as numbers.
    default = _create(reg, "csv", tmp_path, path="tables/t.csv", target="species")
    assert tuple(default.input_shape) == (5,)
    again = _create(reg, "csv", tmp_path, path="tables/t.csv", target="species", features=["height", "width"], seed=0)
    assert np.array_equal(_arrays(again)[1][0], parts[1][0])


def test_csv_numeric_labels_sort_as_numbers(reg: PluginRegistry, tmp_path: Path) -> None:
    values = [9, 10, 100]
    _write(tmp_path / "n.csv", "a,label\n" + "".join(f"{i % 3},{values[i % 3]}\n" for i in range(30)))
    splits = _create(reg, "csv", tmp_path, path="n.csv", target="label")
    for x, y in _arrays(splits):  # the feature a is 0, 1, 2 beside 9, 10, 100: labels must follow it
        order = np.argsort(x[:, 0], kind="stable")
        assert np.array_equal(np.sort(y), y[order])


def test_csv_regression_and_multilabel(reg: PluginRegistry, tmp_path: Path) -> None:
    text, x = _table(50, seed=1)
    _write(tmp_path / "t.csv", text)
    size = 2 * x[:, 0] + x[:, 1]
    common = {"path": "t.csv", "features": ["height", "width"]}
    scaled = _create(reg, "csv", tmp_path, target="size", task="regression", **common)
    raw = _create(reg, "csv", tmp_path, target="size", task="regression", scale_target=False, **common)
    assert (scaled.task, scaled.num_classes) == ("regression", 1)
    (_, y_scaled), (_, y_val), _ = _arrays(scaled)
    (_, y_raw), (_, y_raw_val), _ = _arrays(raw)
    assert y_scaled.dtype == np.float32 and y_scaled.shape == (30, 1)
    assert float(y_scaled.mean()) == pytest.approx(0, abs=1e-5) and float(y_scaled.std()) == pytest.approx(1, abs=1e-4)
    assert np.abs(y_raw[:, 0, None] - size[None, :]).min(1).max() < 1e-4  # raw targets, unscaled
    mean, std = y_raw.astype(np.float64).mean(), y_raw.astype(np.float64).std()
    assert np.allclose(y_val, (y_raw_val - mean) / std, atol=1e-4)
    multi = _create(reg, "csv", tmp_path, target="tall, wide", task="multilabel", **common)
    assert (multi.task, multi.num_classes, tuple(multi.input_shape)) == ("multilabel", 2, (2,))
    (_, ys), _, _ = _arrays(multi)
    assert ys.dtype == np.float32 and ys.shape == (30, 2) and set(np.unique(ys)) == {0.0, 1.0}
    train_raw = _undo(multi, x)[0]
    assert np.array_equal(ys[:, 0] == 1, train_raw[:, 0] > 10) and np.array_equal(ys[:, 1] == 1, train_raw[:, 1] > -2)


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        ("", {}, "the file is empty"),
        ("\n\n", {}, "the file is empty"),
        ("a,y\n", {}, "header row but no data rows"),
        ("a,b\n1,2\n", {}, r"column 'y' \(option 'target'\) is not in the header"),
        ("a,y\n1,2\n3,4\n", {"features": ["a", "z"]}, r"column 'z' \(option 'features'\)"),
        ("a,y\n1,p\n2,q\nx,p\n", {}, r"column 'a', row 4: 'x' is not a finite number"),
        ("a,y\n1,p\n,q\n", {}, r"column 'a', row 3: '' is not a finite number"),
        ("a,y\n1,p\nnan,q\n", {}, r"column 'a', row 3: 'nan'"),
        ("a,y\n1,p\n2\n", {}, "row 3 has 1 fields, the header has 2"),
        ("a,y\n1,p\n2,p\n3,p\n", {}, "single class"),
        ("a,y\n1,2.5\n2,oops\n", {"task": "regression"}, r"column 'y', row 3: 'oops'"),
        ("a,y,z\n1,0,1\n2,2,0\n", {"task": "multilabel", "target": "y,z"}, r"column 'y', row 3: '2' is not 0 or 1"),
        ("a,y\n1,p\n2,q\n", {"features": ["a", "y"]}, "both a feature and a target"),
        ("a,a,y\n1,2,p\n", {}, "column 'a' appears twice"),
        ("a,y\n1,p\n", {"task": "ranking"}, "option 'task' must be one of classification, regression, multilabel"),
        ("a,y\n1,p\n2,q\n", {}, "2 rows are too few.*training split would be empty"),
        ("a,y\n1,p\n2,q\n3,p\n", {"val_fraction": 0.6, "test_fraction": 0.5}, "training split would be empty"),
    ],
)
def test_csv_errors(reg: PluginRegistry, tmp_path: Path, text: str, options: dict, message: str) -> None:
    _write(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError, match=message):
        _create(reg, "csv", tmp_path, **{"path": "bad.csv", "target": "y", **options})


def test_csv_paths_outside_the_data_root_are_refused(reg: PluginRegistry, tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    _write(outside / "t.csv", _table(30)[0])
    root.mkdir()
    (root / "link.csv").symlink_to(outside / "t.csv")
    for path in ("../outside/t.csv", str(outside / "t.csv"), "link.csv"):
        with pytest.raises(ValueError, match=r"option 'path'.*outside the data root"):
            _create(reg, "csv", root, path=path, target="species")
    with pytest.raises(ValueError, match="no data root"):
        _create(reg, "csv", "", path="t.csv", target="species")
    with pytest.raises(FileNotFoundError, match="'missing.csv'"):
        _create(reg, "csv", root, path="missing.csv", target="species")


# ---- mlp ----


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "silu"])
def test_mlp_shapes_and_activations(reg: PluginRegistry, activation: str) -> None:
    kinds = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
    deep = reg.create(
        "model",
        "mlp",
        {"depth": 3, "width": 7, "activation": activation, "dropout": 0.1},
        input_shape=(5,),
        num_classes=3,
    )
    assert deep(torch.randn(4, 5)).shape == (4, 3)
    linears = [m for m in deep.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5, 7), (7, 7), (7, 7), (7, 3)]
    assert sum(isinstance(m, kinds[activation]) for m in deep.modules()) == 3
    assert sum(isinstance(m, nn.Dropout) for m in deep.modules()) == 3
    flat = reg.create("model", "mlp", {"depth": 3}, input_shape=(1, 8, 8), num_classes=10)
    assert flat(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert not any(isinstance(m, nn.Dropout) for m in flat.modules())


def test_mlp_depth_zero_is_linear_and_bad_options_are_refused(reg: PluginRegistry) -> None:
    linear = reg.create("model", "mlp", {"depth": 0}, input_shape=(6,), num_classes=2)
    assert [type(m) for m in linear] == [nn.Flatten, nn.Linear]
    assert linear(torch.randn(3, 6)).shape == (3, 2)
    with pytest.raises(ValueError, match="activation must be one of relu, gelu, tanh, silu, got 'sigmoid'"):
        reg.create("model", "mlp", {"activation": "sigmoid"}, input_shape=(6,), num_classes=2)
    entry = reg.get("model", "mlp")
    assert entry.param("depth").bounds.problem(17) and not entry.param("depth").bounds.problem(0)
    assert entry.param("width").bounds.problem(0) and entry.param("width").bounds.problem(4097)
    assert entry.param("dropout").bounds.problem(1.0) and not entry.param("dropout").bounds.problem(0.0)


def test_mlp_learns_iris(reg: PluginRegistry) -> None:
    """A few hundred steps of Adam on iris reach > 0.9 validation accuracy: the data is learnable."""
    torch.manual_seed(0)
    splits = _create(reg, "iris")
    model = reg.create("model", "mlp", {"depth": 2, "width": 32}, input_shape=splits.input_shape, num_classes=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = splits.train.tensors
    for _ in range(300):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        x_val, y_val = splits.val.tensors
        accuracy = float((model(x_val).argmax(1) == y_val).float().mean())
    assert float(loss.detach()) < 0.2 and accuracy > 0.9

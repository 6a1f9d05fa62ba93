"""Tabular datasets: scikit-learn's bundled `diabetes`, `breast_cancer`, `wine` and `iris`, and `csv`.

Every one returns TensorDatasets of float32 feature vectors (``input_shape == (n_features,)``),
standardised with the training split's per-column mean and std (computed on train only, applied to
all three splits, so val and test see what a deployed model would), and leaves `DatasetSplits.mean`
and `std` empty: there is nothing left for the trainer to normalise. Splits are seeded, and
stratified for classification. Targets follow the task (see `tuneyard.plugins.builtin.tasks`):
int64 labels (N,) for classification, float32 (N, T) for regression (standardised by default, so
its metrics are in standard units), 0/1 float32 (N, L) for multilabel.

The server reads these factories' schemas at start-up, so numpy, scikit-learn and torch are
imported inside the functions, which only workers call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneyard.plugins.api import DataPath, DatasetSplits, resolve_data_path

if TYPE_CHECKING:
    import numpy as np

TASKS = ("classification", "regression", "multilabel")


@dataclass(frozen=True)
class Table:
    """A whole table before splitting: features (N, F) and targets shaped for the task."""

    features: np.ndarray  # float64 (N, F)
    targets: np.ndarray  # int64 (N,) for classification, float64 (N, T) otherwise
    task: str
    num_classes: int  # classes, regression targets or labels


# ---- scikit-learn's bundled tables ----


def _bundled(name: str) -> Table:
    import numpy as np
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    features = np.asarray(bunch.data, dtype=np.float64)
    if name == "diabetes":
        targets = np.asarray(bunch.target, dtype=np.float64).reshape(-1, 1)
        return Table(features, targets, "regression", 1)
    labels = np.asarray(bunch.target, dtype=np.int64)
    return Table(features, labels, "classification", len(bunch.target_names))


def diabetes(
    *, root: str, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0, scale_target: bool = True
) -> DatasetSplits:
    """Diabetes progression (442 patients, 10 features, 1 regression target), bundled with scikit-learn.

    With `scale_target` the target is standardised with the training split's mean and std, so
    mse, mae (and the loss) are in standard units of the target (an mse of 1 is as good as always
    predicting the mean); r2 is the same either way.

    Args:
        val_fraction: share of the rows in the validation split.
        test_fraction: share of the rows in the test split.
        seed: seed of the split (the same seed always gives the same split).
        scale_target: standardise the target with the training split's statistics.
    """
    return build_splits(_bundled("diabetes"), val_fraction, test_fraction, seed, scale_target)


def breast_cancer(*, root: str, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> DatasetSplits:
    """Breast cancer Wisconsin (569 tumours, 30 features, 2 classes), bundled with scikit-learn.

    Args:
        val_fraction: share of the rows in the validation split (stratified).
        test_fraction: share of the rows in the test split (stratified).
        seed: seed of the split (the same seed always gives the same split).
    """
    return build_splits(_bundled("breast_cancer"), val_fraction, test_fraction, seed, False)


def wine(*, root: str, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> DatasetSplits:
    """Wine recognition (178 wines, 13 chemical features, 3 cultivars), bundled with scikit-learn.

    Args:
        val_fraction: share of the rows in the validation split (stratified).
        test_fraction: share of the rows in the test split (stratified).
        seed: seed of the split (the same seed always gives the same split).
    """
    return build_splits(_bundled("wine"), val_fraction, test_fraction, seed, False)


def iris(*, root: str, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> DatasetSplits:
    """Iris flowers (150 flowers, 4 measurements, 3 species), bundled with scikit-learn.

    Args:
        val_fraction: share of the rows in the validation split (stratified).
        test_fraction: share of the rows in the test split (stratified).
        seed: seed of the split (the same seed always gives the same split).
    """
    return build_splits(_bundled("iris"), val_fraction, test_fraction, seed, False)


# ---- csv ----


def csv_file(
    *,
    root: str,
    path: DataPath,
    target: str,
    task: str = "classification",
    features: list[str] | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    scale_target: bool = True,
) -> DatasetSplits:
    """A CSV file with a header row: numeric feature columns and one target column (or several).

    Read with Python's csv module (comma-separated, UTF-8, quoted fields allowed). Every feature
    value must be a finite number. Classification labels may be any text or numbers: their sorted
    distinct values become classes 0..K-1 (numerically sorted when all are numbers). A regression
    target must be numeric; with `scale_target` it is standardised with the training split's
    statistics, so mse and mae are in standard units. Multilabel targets are 0/1 columns.

    Args:
        path: the CSV file inside the data root.
        target: the target column; for task "multilabel", a comma-separated list of 0/1 columns.
        task: "classification", "regression" or "multilabel".
        features: the feature columns; default (none given): every column but the targets.
        val_fraction: share of the rows in the validation split (stratified for classification).
        test_fraction: share of the rows in the test split (stratified for classification).
        seed: seed of the split (the same seed always gives the same split).
        scale_target: standardise regression targets with the training split's statistics.
    """
    if task not in TASKS:
        raise ValueError(f"option 'task' must be one of {', '.join(TASKS)}, got {task!r}")
    try:
        file = resolve_data_path(root, path)
    except ValueError as exc:
        raise ValueError(f"option 'path': {exc}; nothing outside the data root is read") from None
    if not file.is_file():
        raise FileNotFoundError(f"dataset 'csv': file {path!r} (option 'path') not found in the data root")
    table = read_table(file, path, target=target, task=task, features=features)
    return build_splits(table, val_fraction, test_fraction, seed, scale_target)


def read_table(file: Path, name: str, *, target: str, task: str, features: Sequence[str] | None) -> Table:
    """The CSV file as a Table; ValueError naming the column (and row) of anything it cannot use."""
    import numpy as np

    header, rows = _read_rows(file, name)
    targets = [t.strip() for t in target.split(",")] if task == "multilabel" else [target]
    if not all(targets):
        raise ValueError(f"option 'target' names an empty column: {target!r}")
    chosen = list(features) if features else [c for c in header if c not in targets]
    for option, names in (("target", targets), ("features", chosen)):
        for column in names:
            if column not in header:
                raise ValueError(f"{name}: column {column!r} (option {option!r}) is not in the header {header}")
    if overlap := sorted(set(chosen) & set(targets)):
        raise ValueError(f"{name}: column {overlap[0]!r} is both a feature and a target")
    if not chosen:
        raise ValueError(f"{name}: no feature columns are left besides the target")
    matrix = np.stack([_numbers(rows, header.index(c), c, name) for c in chosen], axis=1)
    if task == "classification":
        labels, classes = _class_labels([row[header.index(target)] for _, row in rows])
        if len(classes) < 2:
            raise ValueError(f"{name}: target column {target!r} has a single class {classes[0]!r}")
        return Table(matrix, labels, task, len(classes))
    values = np.stack([_numbers(rows, header.index(c), c, name) for c in targets], axis=1)
    if task == "multilabel":
        for j, column in enumerate(targets):
            bad = np.flatnonzero((values[:, j] != 0) & (values[:, j] != 1))
            if len(bad):
                row_number, row = rows[bad[0]]
                raise ValueError(
                    f"{name}: column {column!r}, row {row_number}: {row[header.index(column)]!r} is not 0 or 1"
                )
    return Table(matrix, values, task, len(targets))


def _read_rows(file: Path, name: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the data rows, each with its row number in the file (the header is row 1)."""
    import csv

    with open(file, newline="", encoding="utf-8-sig") as handle:
        records = list(csv.reader(handle))
    numbered = [(i, r) for i, r in enumerate(records, start=1) if any(cell.strip() for cell in r)]
    if not numbered:
        raise ValueError(f"{name}: the file is empty (a header row and data rows are needed)")
    (_, header), rows = numbered[0], numbered[1:]
    header = [c.strip() for c in header]
    duplicates = sorted({c for c in header if header.count(c) > 1})
    if duplicates:
        raise ValueError(f"{name}: column {duplicates[0]!r} appears twice in the header")
    if not rows:
        raise ValueError(f"{name}: the file has a header row but no data rows")
    for number, row in rows:
        if len(row) != len(header):
            raise ValueError(f"{name}: row {number} has {len(row)} fields, the header has {len(header)}")
    return header, rows


def _numbers(rows: list[tuple[int, list[str]]], index: int, column: str, name: str) -> np.ndarray:
    import numpy as np

    out = np.empty(len(rows), dtype=np.float64)
    for i, (number, row) in enumerate(rows):
        cell = row[index].strip()
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"{name}: column {column!r}, row {number}: {row[index]!r} is not a finite number")
        out[i] = value
    return out


def _class_labels(values: list[str]) -> tuple[np.ndarray, list[str]]:
    """Labels 0..K-1 of the sorted distinct values (sorted as numbers when every value is one)."""
    import numpy as np

    distinct = {v.strip() for v in values}
    try:
        classes = sorted(distinct, key=float)
    except ValueError:
        classes = sorted(distinct)
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v.strip()] for v in values], dtype=np.int64), classes


# ---- splits ----


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    for option, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise ValueError(f"{option} must be in (0, 1), got {value}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must be below 1 (got {val_fraction + test_fraction}): "
            "the training split would be empty"
        )


def split_indices(table: Table, val_fraction: float, test_fraction: float, seed: int) -> list[np.ndarray]:
    """Sorted row indices of train, val and test: seeded, stratified by class for classification.

    Each of val and test holds round(n * fraction) rows, at least one; ValueError when that leaves
    no training rows.
    """
    import numpy as np

    from tuneyard.plugins.builtin.datasets import files

    check_fractions(val_fraction, test_fraction)
    n = len(table.features)
    strata = table.targets if table.task == "classification" else np.zeros(n, dtype=np.int64)
    try:
        return files.stratified_split(strata, [val_fraction, test_fraction], seed)
    except ValueError:
        raise ValueError(
            f"{n} rows are too few for val_fraction {val_fraction} and test_fraction {test_fraction}: "
            "the training split would be empty"
        ) from None


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Every array standardised per column with ``train``'s mean and std (a constant column: std 1)."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[~(std > 1e-12)] = 1.0
    return [(a - mean) / std for a in (train, *others)]


def build_splits(
    table: Table, val_fraction: float, test_fraction: float, seed: int, scale_target: bool
) -> DatasetSplits:
    """DatasetSplits of the table's seeded split, features (and regression targets) standardised on train."""
    import numpy as np
    import torch
    from torch.utils.data import TensorDataset

    parts = split_indices(table, val_fraction, test_fraction, seed)
    features = standardise(*(table.features[p] for p in parts))
    targets: list[Any] = [table.targets[p] for p in parts]
    if table.task == "regression" and scale_target:
        targets = standardise(*targets)
    label_type = np.int64 if table.task == "classification" else np.float32
    datasets = [
        TensorDataset(
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(y, dtype=label_type)),
        )
        for x, y in zip(features, targets, strict=True)
    ]
    return DatasetSplits(
        train=datasets[0],
        val=datasets[1],
        test=datasets[2],
        num_classes=table.num_classes,
        input_shape=(int(table.features.shape[1]),),
        task=table.task,
    )

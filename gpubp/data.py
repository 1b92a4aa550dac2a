"""Data sets for the CLI and the tests: built-in generators, .npz/.csv files, splits, scaling.

The built-in sets come from scikit-learn (the ``data`` extra): ``make_moons``,
``make_circles`` and the bundled 8x8 ``digits`` (no network access).
"""

from __future__ import annotations

import csv
import os

import numpy as np

from .errors import InvalidInputError

BUILTIN = ("moons", "circles", "digits")


def _sklearn_datasets():
    try:
        from sklearn import datasets
    except ImportError:
        raise InvalidInputError(
            "the built-in data sets need scikit-learn: pip install 'gpubp[data]'") from None
    return datasets


def load_builtin(name, n_samples=2000, noise=0.2, seed=0):
    """Return ``(X, y)`` for a built-in data set: float64 features, int64 labels."""
    datasets = _sklearn_datasets()
    if name == "moons":
        X, y = datasets.make_moons(n_samples=n_samples, noise=noise, random_state=seed)
    elif name == "circles":
        X, y = datasets.make_circles(n_samples=n_samples, noise=noise, factor=0.5, random_state=seed)
    elif name == "digits":
        X, y = datasets.load_digits(return_X_y=True)
    else:
        raise InvalidInputError(f"unknown data set {name!r}; built-in names are {list(BUILTIN)}, "
                                f"or give a .npz or .csv file")
    return X.astype(np.float64), y.astype(np.int64)


def load_npz(path):
    """``(X, y)`` from an ``.npz`` holding arrays named X and y (loaded without pickle)."""
    with np.load(path, allow_pickle=False) as archive:
        missing = {"X", "y"} - set(archive.files)
        if missing:
            raise InvalidInputError(f"{path} must hold arrays named X and y; missing {sorted(missing)}")
        return archive["X"], archive["y"]


def load_csv(path, target):
    """``(X, y)`` from a CSV file with a header row; ``target`` names the label column."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise InvalidInputError(f"{path} is empty") from None
        if target is None:
            raise InvalidInputError(f"{path}: name the label column with --target (columns: {header})")
        if target not in header:
            raise InvalidInputError(f"{path}: no column named {target!r} (columns: {header})")
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise InvalidInputError(f"{path}, line {line_no}: {len(row)} values, header has {len(header)}")
            try:
                rows.append([float(v) for v in row])
            except ValueError:
                col = next(i for i, v in enumerate(row) if not _is_float(v))
                raise InvalidInputError(
                    f"{path}, line {line_no}, column {header[col]!r}: {row[col]!r} is not a number") from None
    if not rows:
        raise InvalidInputError(f"{path} has a header but no data rows")
    data = np.array(rows)
    t = header.index(target)
    return np.delete(data, t, axis=1), data[:, t]


def _is_float(value):
    try:
        float(value)
    except ValueError:
        return False
    return True


def load_dataset(name, n_samples=2000, noise=0.2, seed=0, target=None):
    """A built-in name, or a path to a ``.npz``/``.csv`` file -> ``(X, y)``."""
    if name in BUILTIN:
        return load_builtin(name, n_samples, noise, seed)
    if not os.path.exists(name):
        raise InvalidInputError(f"unknown data set {name!r}: not one of {list(BUILTIN)} and no such file")
    if name.endswith(".npz"):
        return load_npz(name)
    if name.endswith(".csv"):
        return load_csv(name, target)
    raise InvalidInputError(f"{name}: data files must end in .npz or .csv")


def train_test_split(X, y, test_size=0.2, seed=0):
    """Seeded random split -> ``X_train, X_test, y_train, y_test``."""
    if not 0 < test_size < 1:
        raise InvalidInputError(f"test_size must lie in (0, 1), got {test_size!r}")
    n = len(X)
    n_test = max(1, int(round(n * test_size)))
    if n_test >= n:
        raise InvalidInputError(f"test_size={test_size} leaves no training samples out of {n}")
    order = np.random.default_rng(seed).permutation(n)
    test, train = order[:n_test], order[n_test:]
    return X[train], X[test], y[train], y[test]


class StandardScaler:
    """``(X - mean) / std`` per feature, fitted on the training set (constant features keep std 1)."""

    def fit(self, X):
        X = np.asarray(X, dtype=np.float64)
        self.mean_ = X.mean(axis=0)
        std = X.std(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0)
        return self

    def transform(self, X):
        return (np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_

    def fit_transform(self, X):
        return self.fit(X).transform(X)

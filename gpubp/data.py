"""Data sets for the CLI and the tests: built-in generators, .npz/.csv files, splits, scaling.

Built-in sets, by name (no network access at run time):

============  ==============  =======  ========  ===========================================
name          task            classes  features  source
============  ==============  =======  ========  ===========================================
moons         classification  2        2         ``sklearn.datasets.make_moons``
circles       classification  2        2         ``sklearn.datasets.make_circles`` (factor 0.5)
digits        classification  10       64        scikit-learn's bundled 8x8 digits (1797 rows)
spirals       classification  3        2         :func:`make_spirals` (NumPy)
xor           classification  2        2         :func:`make_xor` (NumPy)
regression    regression      -        5         ``sklearn.datasets.make_friedman1``
============  ==============  =======  ========  ===========================================

The scikit-learn ones need the ``data`` extra. :func:`dataset_info` and
:func:`task_of` tell callers what a name holds.
"""

from __future__ import annotations

import csv
import math
import mmap
import numbers
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError


@dataclass(frozen=True)
class DatasetInfo:
    """What a built-in data set holds.

    Attributes
    ----------
    name : str
    task : {"classification", "regression"}
    n_classes : int or None
        Number of classes (labels ``0 .. n_classes - 1``); None for regression.
    n_features : int
    description : str
    """

    name: str
    task: str
    n_classes: int | None
    n_features: int
    description: str


_INFO = {
    info.name: info for info in [
        DatasetInfo("moons", "classification", 2, 2, "two interleaving half circles (scikit-learn)"),
        DatasetInfo("circles", "classification", 2, 2, "a small circle inside a large one (scikit-learn)"),
        DatasetInfo("digits", "classification", 10, 64, "8x8 images of handwritten digits, 1797 rows (scikit-learn)"),
        DatasetInfo("spirals", "classification", 3, 2, "three interleaved spiral arms"),
        DatasetInfo("xor", "classification", 2, 2, "four Gaussian blobs at the corners of a square, XOR labels"),
        DatasetInfo("regression", "regression", None, 5, "Friedman #1: y = 10 sin(pi x0 x1) + "
                    "20 (x2 - 0.5)^2 + 10 x3 + 5 x4 + noise, x ~ U[0, 1]^5 (scikit-learn)"),
    ]
}

#: Names :func:`load_builtin` accepts.
BUILTIN = tuple(_INFO)


def dataset_info(name):
    """The :class:`DatasetInfo` of a built-in data set."""
    try:
        return _INFO[name]
    except (KeyError, TypeError):
        raise InvalidInputError(f"unknown data set {name!r}; built-in names are {list(BUILTIN)}") from None


def task_of(name):
    """``"classification"`` or ``"regression"`` for a built-in data set name."""
    return dataset_info(name).task


# ---------------------------------------------------------------- generators
def _check_generator_args(n_samples, noise, seed, min_samples):
    if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < min_samples:
        raise InvalidInputError(f"n_samples must be an integer >= {min_samples}, got {n_samples!r}")
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not (math.isfinite(noise) and noise >= 0):
        raise InvalidInputError(f"noise must be a finite number >= 0, got {noise!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise InvalidInputError(f"seed must be a non-negative integer or None, got {seed!r}")
    return int(n_samples), float(noise)


def _class_sizes(n_samples, n_classes):
    """Split ``n_samples`` into ``n_classes`` near-equal counts (the first ones get the remainder)."""
    return [n_samples // n_classes + (k < n_samples % n_classes) for k in range(n_classes)]


def make_spirals(n_samples=2000, noise=0.2, seed=0, n_classes=3, turns=1.5):
    """Interleaved spiral arms, one per class.

    Arm ``k`` is the curve ``r (cos t, sin t)`` with ``t = 2 pi (turns r + k / n_classes)``
    for radii ``r`` in [0.1, 1] drawn so points spread evenly along the arm.

    Parameters
    ----------
    n_samples : int
        Total points, split near-equally between the arms.
    noise : float
        Standard deviation of the Gaussian jitter of each point's angle, in radians
        (neighbouring arms lie ``2 pi / n_classes`` apart).
    seed : int
    n_classes : int
    turns : float
        Revolutions each arm makes from the centre to the rim.

    Returns
    -------
    X : float64 (n_samples, 2)
    y : int64 (n_samples,), labels ``0 .. n_classes - 1``; rows shuffled
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, numbers.Integral) or n_classes < 2:
        raise InvalidInputError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    if isinstance(turns, bool) or not isinstance(turns, numbers.Real) or not (math.isfinite(turns) and turns > 0):
        raise InvalidInputError(f"turns must be a finite number > 0, got {turns!r}")
    n_samples, noise = _check_generator_args(n_samples, noise, seed, n_classes)
    rng = np.random.default_rng(seed)
    arms, labels = [], []
    for k, size in enumerate(_class_sizes(n_samples, n_classes)):
        radius = np.sqrt(rng.uniform(0.1 ** 2, 1.0, size))  # arc length grows ~ r^2: even spacing
        angle = 2 * np.pi * (turns * radius + k / n_classes) + noise * rng.normal(size=size)
        arms.append(radius[:, None] * np.column_stack([np.cos(angle), np.sin(angle)]))
        labels.append(np.full(size, k, dtype=np.int64))
    X = np.concatenate(arms)
    order = rng.permutation(n_samples)
    return X[order], np.concatenate(labels)[order]


def make_xor(n_samples=2000, noise=0.2, seed=0):
    """Four Gaussian blobs at the corners (+-1, +-1) of a square with XOR labels.

    The label is 1 where exactly one coordinate of the blob's centre is positive
    (corners (1, -1) and (-1, 1)), 0 otherwise: no line separates the classes.

    Parameters
    ----------
    n_samples : int
        Total points, split near-equally between the four blobs.
    noise : float
        Standard deviation of each blob.
    seed : int

    Returns
    -------
    X : float64 (n_samples, 2)
    y : int64 (n_samples,) in {0, 1}; rows shuffled
    """
    n_samples, noise = _check_generator_args(n_samples, noise, seed, 4)
    rng = np.random.default_rng(seed)
    corners = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    corner_of_row = np.repeat(np.arange(4), _class_sizes(n_samples, 4))
    X = corners[corner_of_row] + noise * rng.normal(size=(n_samples, 2))
    y = (corner_of_row >= 2).astype(np.int64)
    order = rng.permutation(n_samples)
    return X[order], y[order]


def _sklearn_datasets():
    try:
        from sklearn import datasets
    except ImportError:
        raise InvalidInputError(
            "the built-in data sets moons, circles, digits and regression need scikit-learn: "
            "pip install 'gpubp[data]'") from None
    return datasets


def load_builtin(name, n_samples=2000, noise=0.2, seed=0):
    """``(X, y)`` for a built-in data set (see :data:`BUILTIN`).

    Parameters
    ----------
    name : str
    n_samples : int
        Ignored by ``digits`` (always 1797 rows).
    noise : float
        Standard deviation of the Gaussian noise (on the features; on the target for
        ``regression``). Ignored by ``digits``.
    seed : int

    Returns
    -------
    X : float64 (n_samples, n_features)
    y : int64 labels for classification, float64 values for regression
    """
    info = dataset_info(name)
    if name == "digits":
        X, y = _sklearn_datasets().load_digits(return_X_y=True)
        return X.astype(np.float64), y.astype(np.int64)
    min_samples = {"spirals": 3, "xor": 4}.get(name, 1)
    n_samples, noise = _check_generator_args(n_samples, noise, seed, min_samples)
    if name == "spirals":
        return make_spirals(n_samples, noise, seed)
    if name == "xor":
        return make_xor(n_samples, noise, seed)
    datasets = _sklearn_datasets()
    if name == "moons":
        X, y = datasets.make_moons(n_samples=n_samples, noise=noise, random_state=seed)
    elif name == "circles":
        X, y = datasets.make_circles(n_samples=n_samples, noise=noise, factor=0.5, random_state=seed)
    else:  # regression
        X, y = datasets.make_friedman1(n_samples=n_samples, n_features=info.n_features, noise=noise,
                                       random_state=seed)
        return X.astype(np.float64), y.astype(np.float64)
    return X.astype(np.float64), y.astype(np.int64)


# --------------------------------------------------------------------- files
def load_npz(path):
    """``(X, y)`` from an ``.npz`` holding arrays named X and y (loaded without pickle)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InvalidInputError(f"{path}: not a readable .npz file ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InvalidInputError(f"{path}: holds a single array, not an .npz archive with arrays X and y")
    with archive:
        missing = {"X", "y"} - set(archive.files)
        if missing:
            raise InvalidInputError(f"{path} must hold arrays named X and y; missing {sorted(missing)} "
                                    f"(it holds {sorted(archive.files)})")
        try:
            X, y = archive["X"], archive["y"]
        except ValueError as exc:  # object arrays need pickle, which stays off
            raise InvalidInputError(f"{path}: cannot read X and y without pickle ({exc})") from None
    if X.ndim != 2:
        raise InvalidInputError(f"{path}: X must be a 2-D (samples, features) array, got shape {X.shape}")
    if y.ndim not in (1, 2) or len(y) != len(X):
        raise InvalidInputError(f"{path}: y must hold one label or row of targets per sample of X "
                                f"({len(X)}), got shape {y.shape}")
    _check_not_empty(path, X)
    return X, y


def _check_not_empty(path, X):
    """InvalidInputError naming ``path`` when the data set ``X`` has no rows or no feature columns."""
    if X.shape[0] == 0 or X.shape[1] == 0:
        what = "no samples" if X.shape[0] == 0 else "no feature columns"
        raise InvalidInputError(f"{path}: the data set is empty: it has {what} (X has shape {X.shape})")


def load_csv(path, target):
    """``(X, y)`` from a CSV file with a header row; ``target`` names the label column.

    Every other column becomes a feature; feature values must be finite
    numbers. The labels may be numbers or text (class names). Blank lines are
    skipped. Errors name the file, the line and the column.

    Returns
    -------
    X : float64 (n_rows, n_columns - 1), the columns of :func:`csv_feature_names` in order
    y : float64 (n_rows,) when every label is a finite number, else str (n_rows,)
    """

    def check_target(header):
        if target is None:
            raise InvalidInputError(f"{path}: name the label column with target= (--target on the command "
                                    f"line); columns: {header}")
        if target not in header:
            hint = " (line 1 looks like data: the file needs a header row)" if all(map(_is_float, header)) else ""
            raise InvalidInputError(f"{path}: no column named {target!r} (columns: {header}){hint}")

    _, X, labels = _read_csv(path, check_target, text_column=target)
    _check_not_empty(path, X)
    try:
        y = np.array([float(label) for label in labels])
        if np.all(np.isfinite(y)):
            return X, y
    except ValueError:
        pass
    return X, np.array(labels, dtype=str)


def csv_feature_names(path, target=None):
    """The column names of a CSV file's header row, without ``target``."""
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        header = [h.strip() for h in next(csv.reader(f), [])]
    return [name for name in header if name != target]


def load_csv_features(path):
    """Feature matrix (float64, one column per header name) from a CSV file with a header row.

    For inputs to ``predict``: every column is a feature. Errors as in :func:`load_csv`; a first line that
    is all numbers is refused (it would be taken for the header and its row lost).
    """

    def check_header(header):
        if all(map(_is_float, header)):
            raise InvalidInputError(f"{path}, line 1 looks like data, not a header row: the file needs a header "
                                    f"naming its columns (else its first row would be dropped)")

    return _read_csv(path, check_header)[1]


def _read_csv(path, check_header=None, text_column=None):
    """``(header, data, texts)`` of a numeric CSV file; ``check_header(header)`` may raise before the rows are
    read. The column ``text_column`` (if any) is left out of ``data`` and returned as ``texts``, as read."""
    try:
        f = open(path, newline="", encoding="utf-8-sig", errors="surrogateescape")
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot open ({exc.strerror})") from None
    with f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise InvalidInputError(f"{path} is empty") from None
        except csv.Error as exc:
            raise InvalidInputError(f"{path}, line 1: cannot parse the header ({exc})") from None
        _check_utf8(path, 1, header)
        duplicates = sorted({h for h in header if header.count(h) > 1})
        if duplicates:
            raise InvalidInputError(f"{path}, line 1: the header names columns {duplicates} more than once")
        if check_header is not None:
            check_header(header)
        rows, texts = [], []
        t = None if text_column is None else header.index(text_column)
        numeric = header if t is None else header[:t] + header[t + 1:]
        try:
            for row in reader:
                line_no = reader.line_num
                if not row:
                    continue
                _check_utf8(path, line_no, row)
                if len(row) != len(header):
                    raise InvalidInputError(
                        f"{path}, line {line_no}: {len(row)} values, header has {len(header)}")
                if t is not None:
                    if not row[t].strip():
                        raise InvalidInputError(f"{path}, line {line_no}, column {text_column!r}: '' is not a number "
                                                f"or a label")
                    label = row[t].strip()
                    if _is_float(label) and not math.isfinite(float(label)):  # "nan", "inf": a missing label
                        raise InvalidInputError(f"{path}, line {line_no}, column {text_column!r}: {label!r} is not "
                                                f"a finite number or a label (a missing label?)")
                    texts.append(label)
                    row = row[:t] + row[t + 1:]
                rows.append(_parse_row(path, line_no, numeric, row))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"{path}, line {reader.line_num}: cannot parse ({exc})") from None
    if not rows:
        raise InvalidInputError(f"{path} has a header but no data rows")
    return header, np.array(rows, dtype=np.float64).reshape(len(rows), len(numeric)), texts


def _check_utf8(path, line_no, fields):
    """Bytes that are not UTF-8 were read as lone surrogates (errors="surrogateescape"): name their line."""
    for text in fields:
        if any("\udc80" <= ch <= "\udcff" for ch in text):
            raise InvalidInputError(f"{path}, line {line_no}: {text.encode('utf-8', 'surrogateescape')!r} is "
                                    f"not valid UTF-8 text")


def _parse_row(path, line_no, header, row):
    values = []
    for name, text in zip(header, row):
        try:
            value = float(text)
        except ValueError:
            raise InvalidInputError(
                f"{path}, line {line_no}, column {name!r}: {text!r} is not a number") from None
        if not math.isfinite(value):
            raise InvalidInputError(
                f"{path}, line {line_no}, column {name!r}: {text!r} is not a finite number")
        values.append(value)
    return values


def _is_float(value):
    try:
        float(value)
    except ValueError:
        return False
    return True


def load_npy(path, target):
    """``(X, y)`` memory-mapped (``np.load(..., mmap_mode="r")``) from a features ``.npy`` file and a
    targets ``.npy`` file ``target``, as :class:`NpyDataset` reads them: nothing is read yet."""
    if target is None or not str(target).endswith(".npy"):
        raise InvalidInputError(f"{path}: name the targets' .npy file with target= (--target on the command line), "
                                f"got {target!r}")
    X, y = NpyDataset(path).X.array, NpyDataset(path, target).y.array  # checked as fit checks them
    return X, y


def load_dataset(name, n_samples=2000, noise=0.2, seed=0, target=None):
    """A built-in name, or a path to a ``.npz``/``.csv`` file -> ``(X, y)``; a ``.npy`` file of features with
    ``target`` the ``.npy`` file of targets -> both memory-mapped (see :func:`load_npy`)."""
    if name in BUILTIN:
        return load_builtin(name, n_samples, noise, seed)
    if not os.path.exists(name):
        raise InvalidInputError(f"unknown data set {name!r}: not one of {list(BUILTIN)} and no such file")
    if name.endswith(".npz"):
        return load_npz(name)
    if name.endswith(".csv"):
        return load_csv(name, target)
    if name.endswith(".npy"):
        return load_npy(name, target)
    raise InvalidInputError(f"{name}: data files must end in .npz, .csv or .npy")


# ------------------------------------------------------ data bigger than memory
#: Bytes of X, as stored, per chunk of an :class:`NpyDataset` given no ``chunk_rows``.
CHUNK_BYTES = 32 << 20


class NpyDataset:
    """Training data that ``fit`` streams from ``.npy`` files chunk by chunk instead of copying it whole.

    ``fit`` streams X (and y) as well when given a path or a memory-mapped array directly; an
    ``NpyDataset`` chooses the chunk size, and may bring its own targets.

    Parameters
    ----------
    X : path of a 2-D ``.npy`` file, or the array ``np.load(path, mmap_mode="r")`` returns
        (any other array, a view of a memory map included, is read by slicing it)
    y : path, memory-mapped or in-memory array of targets (one per row of X), optional
        None: ``fit``'s ``y`` is used.
    chunk_rows : int, optional
        Rows read, validated and moved to the device at a time; default: as many as
        :data:`CHUNK_BYTES` of X hold. ``fit`` rounds it down to a multiple of ``batch_size``
        (at least one batch).

    Whole ``.npy`` files and their memory maps are read with ordinary file reads into a
    reused buffer, so the pages read never stay in the process's memory.
    """

    def __init__(self, X, y=None, chunk_rows=None):
        self.X = _RowSource(X, "X")
        if len(self.X.shape) != 2:
            hint = " (use X.reshape(-1, 1) for a single feature)" if len(self.X.shape) == 1 else ""
            raise InvalidInputError(f"{self.X.where} must be 2-D (n_samples, n_features), got shape "
                                    f"{self.X.shape}{hint}")
        if self.X.shape[0] == 0 or self.X.shape[1] == 0:
            raise InvalidInputError(f"{self.X.where} is empty: it has shape {self.X.shape}")
        self.y = None if y is None else self._targets(y)
        if chunk_rows is None:
            row_bytes = self.X.shape[1] * self.X.dtype.itemsize
            chunk_rows = max(1, CHUNK_BYTES // row_bytes)
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, numbers.Integral) or chunk_rows < 1:
            raise InvalidInputError(f"chunk_rows must be an integer >= 1, got {chunk_rows!r}")
        self.chunk_rows = int(chunk_rows)
        self.start, self.stop = 0, self.X.shape[0]
        self.y_first = 0  # the row of X's file that y's first row belongs to

    @property
    def shape(self):
        return (self.stop - self.start, self.X.shape[1])

    def __len__(self):
        return self.stop - self.start

    def __repr__(self):
        return f"NpyDataset({self.X.where}, rows {self.start} to {self.stop - 1}, chunk_rows={self.chunk_rows})"

    def rows(self, start, stop):
        """The rows ``start`` to ``stop - 1`` of this set, as another NpyDataset (nothing is read)."""
        if not 0 <= start < stop <= len(self):
            raise InvalidInputError(f"rows {start} to {stop - 1} are not rows of a set of {len(self)}")
        part = self._copy()
        part.start, part.stop = self.start + start, self.start + stop
        return part

    def with_targets(self, y):
        """This set with the targets ``y``: a path or an array with a row for every row of X's file, or for
        every row of this set."""
        if self.y is not None:
            raise InvalidInputError(f"{self!r} brings its own targets: pass y=None to fit")
        part = self._copy()
        part.y = self._targets(y, len(self))
        part.y_first = self.start if part.y.shape[0] == len(self) != self.X.shape[0] else 0
        return part

    def _targets(self, y, rows=None):
        y = _RowSource(y, "y")
        if len(y.shape) == 0 or y.shape[0] not in (self.X.shape[0], rows):
            got = "a scalar" if len(y.shape) == 0 else f"{y.shape[0]} rows"
            raise InvalidInputError(f"{self.X.where} has {self.X.shape[0]} rows but {y.where} has {got}")
        return y

    def read(self, start, stop, out=None):
        """``(X rows, y rows)`` ``start`` to ``stop - 1`` of this set as host arrays, as stored (X into
        ``out``, a flat buffer of X's dtype, when given and large enough); y is None without targets."""
        X = self.X.read(self.start + start, self.start + stop, out)
        first = self.start - self.y_first
        y = None if self.y is None else self.y.read(first + start, first + stop)
        return X, y

    def fit_scaler(self):
        """A :class:`StandardScaler` fitted on X, read chunk by chunk (float64 sums, merged per chunk as
        Chan et al.'s parallel variance); NaN or Inf values raise, naming the first such row."""
        from .validation import check_finite_for_dtype

        count, mean, m2 = 0, np.zeros(self.shape[1]), np.zeros(self.shape[1])
        for start in range(0, len(self), self.chunk_rows):
            stop = min(start + self.chunk_rows, len(self))
            X = self.read(start, stop)[0].astype(np.float64)
            check_finite_for_dtype(X, np.float64, self.X.where, first_row=self.start + start)
            chunk_mean = X.mean(axis=0)
            chunk_m2 = ((X - chunk_mean) ** 2).sum(axis=0)
            total = count + X.shape[0]
            delta = chunk_mean - mean
            mean = mean + delta * (X.shape[0] / total)
            m2 = m2 + chunk_m2 + delta ** 2 * (count * X.shape[0] / total)
            count = total
        scaler = StandardScaler()
        std = np.sqrt(m2 / count)
        scaler.mean_, scaler.scale_ = mean, np.where(std > 0, std, 1.0)
        return scaler

    def _copy(self):
        twin = object.__new__(NpyDataset)
        twin.__dict__.update(self.__dict__)
        return twin


def split_tail(X, y, test_size, seed=None):
    """``X_train, X_test, y_train, y_test`` of streamed data: the last ``test_size`` fraction of the rows
    held out, in memory, and the others an :class:`NpyDataset` (nothing read). ``X``: a memory-mapped
    array or an NpyDataset without targets; ``y``: an array of its rows' targets. ``seed`` is unused (the
    signature of :func:`train_test_split`)."""
    dataset = X if isinstance(X, NpyDataset) else NpyDataset(X)
    n = len(dataset)
    n_test = _test_rows(n, len(y), test_size)
    return dataset.rows(0, n - n_test), dataset.read(n - n_test, n)[0], y[:n - n_test], np.asarray(y[n - n_test:])


class _RowSource:
    """Rows of one array of an :class:`NpyDataset`: a ``.npy`` file (or its whole memory map), read with
    file reads, or any other array, read by slicing it."""

    def __init__(self, a, name):
        self.path = self.file = None
        if isinstance(a, (str, os.PathLike)):
            self.path = os.fspath(a)
            try:
                a = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise InvalidInputError(f"{name} file {self.path!r}: no such file") from None
            except (OSError, ValueError) as exc:
                raise InvalidInputError(f"{name} file {self.path!r}: not a readable .npy file ({exc})") from None
            if not isinstance(a, np.ndarray):
                raise InvalidInputError(f"{name} file {self.path!r}: not a .npy file of one array")
        elif not hasattr(a, "shape") or not hasattr(a, "dtype"):
            a = np.asarray(a)
        self.array, self.shape, self.dtype = a, tuple(a.shape), np.dtype(a.dtype)
        if self.dtype.kind not in "biuf":
            raise InvalidInputError(f"{name} must hold numbers, got an array of dtype {self.dtype}")
        if isinstance(a, np.memmap) and isinstance(a.base, mmap.mmap) and a.flags.c_contiguous and a.filename:
            self.file = (a.filename, int(a.offset))  # a whole memory map: its file's bytes, row by row
            self.path = self.path or a.filename
        self.where = name if self.path is None else f"{name} ({self.path!r})"
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def read(self, start, stop, out=None):
        if self.file is None:
            return np.asarray(self.array[start:stop])
        n = stop - start
        count = n * (self.row_bytes // self.dtype.itemsize)
        if out is None or out.size < count:
            out = np.empty(count, self.dtype)
        rows = out[:count]
        view = memoryview(rows.view(np.uint8))
        path, offset = self.file
        try:  # in fit's reader thread too, whose errors fit raises in the calling thread
            with open(path, "rb", buffering=0) as f:
                f.seek(offset + start * self.row_bytes)
                done = 0
                while done < view.nbytes:
                    got = f.readinto(view[done:])
                    if not got:
                        raise InvalidInputError(f"{self.where}: the file ends before row {stop - 1} (truncated?)")
                    done += got
        except OSError as exc:  # the file deleted, moved or unreadable since it was opened
            raise InvalidInputError(f"{self.where}: cannot read rows {start} to {stop - 1} "
                                    f"({exc.strerror or exc})") from None
        return rows.reshape((n,) + self.shape[1:])


# ---------------------------------------------------------- split and scale
def _test_rows(n, n_targets, test_size):
    """How many of ``n`` rows a split of ``test_size`` holds out (at least one, never all); InvalidInputError
    for a test_size outside (0, 1) or targets of another length."""
    if not 0 < test_size < 1:
        raise InvalidInputError(f"test_size must lie in (0, 1), got {test_size!r}")
    if n_targets != n:
        raise InvalidInputError(f"X has {n} samples but y has {n_targets}")
    n_test = max(1, int(round(n * test_size)))
    if n_test >= n:
        raise InvalidInputError(f"test_size={test_size} leaves no training samples out of {n}")
    return n_test


def train_test_split(X, y, test_size=0.2, seed=0):
    """Seeded random split -> ``X_train, X_test, y_train, y_test``."""
    n = len(X)
    n_test = _test_rows(n, len(y), test_size)
    order = np.random.default_rng(seed).permutation(n)
    test, train = order[:n_test], order[n_test:]
    return X[train], X[test], y[train], y[test]


class StandardScaler:
    """``(X - mean) / std`` per feature, fitted on the training set (constant features keep std 1).

    Works on (n_samples, n_features) matrices and on 1-D target vectors. A fitted
    scaler round-trips through :meth:`to_dict` / :meth:`from_dict` (plain lists,
    JSON-able), e.g. to store it in a model file's metadata.

    Attributes
    ----------
    mean_ : float64 array (n_features,), or a 0-d array when fitted on a 1-D vector
    scale_ : float64 array, same shape, every entry > 0
    """

    def fit(self, X):
        X = self._as_array(X, "X")
        if X.ndim not in (1, 2) or X.shape[0] == 0:
            raise InvalidInputError(f"StandardScaler.fit needs a non-empty 1-D or 2-D array, got shape {X.shape}")
        if not np.all(np.isfinite(X)):
            raise InvalidInputError("StandardScaler.fit: X holds NaN or Inf values")
        self.mean_ = X.mean(axis=0)
        std = X.std(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0)
        return self

    def transform(self, X):
        return (self._check_fitted(X, "transform") - self.mean_) / self.scale_

    def fit_transform(self, X):
        return self.fit(X).transform(X)

    def inverse_transform(self, X):
        """Undo :meth:`transform`: ``X * std + mean``."""
        return self._check_fitted(X, "inverse_transform") * self.scale_ + self.mean_

    def to_dict(self):
        """``{"mean": [...], "scale": [...]}`` as plain Python floats (JSON-able)."""
        self._require_fitted("to_dict")
        return {"mean": self.mean_.tolist(), "scale": self.scale_.tolist()}

    @classmethod
    def from_dict(cls, state):
        """A fitted scaler from the output of :meth:`to_dict`."""
        if not isinstance(state, dict) or set(state) != {"mean", "scale"}:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise InvalidInputError(f"StandardScaler.from_dict needs a dict with keys 'mean' and 'scale', got {got}")
        arrays = {}
        for key in ("mean", "scale"):
            try:
                arrays[key] = np.array(state[key], dtype=np.float64)
            except (TypeError, ValueError):
                raise InvalidInputError(f"StandardScaler.from_dict: {key!r} must be a list of numbers, "
                                        f"got {state[key]!r}") from None
            if arrays[key].ndim > 1 or not np.all(np.isfinite(arrays[key])):
                raise InvalidInputError(f"StandardScaler.from_dict: {key!r} must be a finite number or a "
                                        f"flat list of them, got {state[key]!r}")
        if arrays["mean"].shape != arrays["scale"].shape:
            raise InvalidInputError(f"StandardScaler.from_dict: 'mean' has {arrays['mean'].size} entries "
                                    f"but 'scale' has {arrays['scale'].size}")
        if np.any(arrays["scale"] <= 0):
            raise InvalidInputError("StandardScaler.from_dict: every 'scale' entry must be > 0")
        scaler = cls()
        scaler.mean_, scaler.scale_ = arrays["mean"], arrays["scale"]
        return scaler

    def __repr__(self):
        if not hasattr(self, "mean_"):
            return "StandardScaler(unfitted)"
        return f"StandardScaler(n_features={self.mean_.size})"

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _as_array(X, name):
        try:
            return np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidInputError(f"StandardScaler: {name} must be an array of numbers") from None

    def _require_fitted(self, method):
        if not hasattr(self, "mean_"):
            raise InvalidInputError(f"StandardScaler.{method}: the scaler is not fitted; call fit(X) first")

    def _check_fitted(self, X, method):
        self._require_fitted(method)
        X = self._as_array(X, "X")
        n_features = self.mean_.shape[0] if self.mean_.ndim else None
        if n_features is not None and (X.ndim != 2 or X.shape[1] != n_features):
            raise InvalidInputError(f"StandardScaler.{method}: X must have shape (n, {n_features}), got {X.shape}")
        if n_features is None and X.ndim != 1:
            raise InvalidInputError(f"StandardScaler.{method}: the scaler was fitted on a 1-D vector, "
                                    f"got shape {X.shape}")
        return X

"""Input checks shared by the model, the trainer and the CLI.

Each check raises an error that names the argument and says what was expected.
"""

from __future__ import annotations

import numbers
import re

import numpy as np

from .errors import InvalidInputError, InvalidTypeError
from .kernels import host


def _is_device_array(backend, a):
    return backend.name != "cpu" and backend.owns(a)


def as_host_array(a, name):
    """``np.asarray(a)``, raising an error that names ``name`` when NumPy cannot make an array
    (ragged nested lists, objects whose ``__array__`` fails)."""
    try:
        return np.asarray(a)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInputError(f"{name} cannot be converted to a numeric array: {exc}") from None


def check_finite_for_dtype(a, dtype, name, n_rows=None, first_row=0):
    """Raise unless every value of the host array ``a`` is finite and stays finite once cast to ``dtype``.

    Float values beyond ``dtype``'s largest finite value (e.g. 1e39 with float32) would silently
    become Inf in the cast (with a NumPy overflow warning), so they are rejected here, naming
    how many rows hold them. ``n_rows`` groups the values by leading axis (default ``a.shape[0]``);
    ``first_row`` is the number the messages give the first row (a chunk of a file names its rows in the file).
    """
    if a.dtype.kind != "f" or a.size == 0:
        return
    dtype = np.dtype(dtype)
    rows = a.reshape(a.shape[0] if n_rows is None else n_rows, -1) if a.ndim else a.reshape(1, 1)
    n = rows.shape[0]
    bad = ~np.isfinite(rows).all(axis=1)
    n_bad = int(np.count_nonzero(bad))
    if n_bad:
        raise InvalidInputError(
            f"{name} holds NaN or Inf values in {n_bad} of {n} rows (first: row {first_row + int(np.argmax(bad))})")
    if dtype.kind == "f" and np.finfo(a.dtype).max > np.finfo(dtype).max:
        limit = np.finfo(dtype).max
        big = (np.abs(rows) > limit).any(axis=1)
        n_big = int(np.count_nonzero(big))
        if n_big:
            raise InvalidInputError(
                f"{name} holds values too large for {dtype.name} (|value| > {float(limit):.4g}, they would "
                f"become Inf) in {n_big} of {n} rows (first: row {first_row + int(np.argmax(big))})")


def check_feature_matrix(backend, X, n_features, name="X"):
    """Check the type and shape of ``X`` (host or device array); returns it as an array, values unchecked."""
    on_device = _is_device_array(backend, X)
    if not on_device:
        if hasattr(X, "__cuda_array_interface__") and backend.name == "cpu":
            raise InvalidTypeError(f"{name} is a GPU array but the model runs on the CPU backend")
        X = as_host_array(X, name)
    if X.dtype.kind not in "biuf":
        raise InvalidTypeError(f"{name} must hold numbers, got an array of dtype {X.dtype}")
    if X.ndim != 2:
        hint = " (use X.reshape(-1, 1) for a single feature)" if X.ndim == 1 else ""
        raise InvalidInputError(f"{name} must be 2-D (n_samples, n_features), got shape {X.shape}{hint}")
    if X.shape[0] == 0:
        raise InvalidInputError(f"{name} is empty: it has 0 samples")
    if n_features is not None and X.shape[1] != n_features:
        raise InvalidInputError(
            f"{name} has {X.shape[1]} features but the model expects {n_features}"
        )
    return X


def load_features(backend, X, dtype, name="X", scaler=None, out=None):
    """Check the values of ``X`` (from :func:`check_feature_matrix`) and return them on the device as
    a C-contiguous ``dtype`` array, standardised by ``scaler`` when given, written into ``out`` when given.

    Host float arrays are checked, cast, standardised and copied in one pass
    (``gpubp.kernels.host``); other inputs take NumPy's (or CuPy's) passes.
    """
    dtype = np.dtype(dtype)
    if not _is_device_array(backend, X) and X.dtype in host.FAST_DTYPES:
        staging = backend.host_view(out)
        if staging is None or not staging.flags.c_contiguous:
            staging = np.empty(X.shape, dtype)
        write_features(X, staging, name, scaler)
        return backend.upload(staging, out)
    if not _is_device_array(backend, X):
        check_finite_for_dtype(X, dtype, name)
    X = backend.asarray(X, dtype=dtype)
    xp = backend.xp
    bad_rows = int(xp.count_nonzero(~xp.isfinite(X).all(axis=1)))
    if bad_rows:
        raise InvalidInputError(f"{name} holds NaN or Inf values in {bad_rows} of {X.shape[0]} rows")
    if scaler is not None:
        X = (X - backend.asarray(scaler.mean_, dtype)) / backend.asarray(scaler.scale_, dtype)
    return X if out is None else backend.upload(X, out)


def write_features(X, out, name="X", scaler=None, first_row=0):
    """Check the host rows ``X`` (any numeric dtype) and write them into the C-contiguous host array ``out``
    (same shape) cast to its dtype and standardised by ``scaler`` when given; errors as :func:`load_features`,
    with rows numbered from ``first_row``. Float32/float64 rows take one compiled pass
    (``gpubp.kernels.host``), others NumPy's passes."""
    dtype = out.dtype
    scaling = () if scaler is None else (scaler.mean_.astype(dtype), scaler.scale_.astype(dtype))
    if X.dtype in host.FAST_DTYPES:
        bad_rows = host.copy_rows_checked(X, out, *scaling)
    else:
        check_finite_for_dtype(X, dtype, name, first_row=first_row)
        np.copyto(out, X, casting="unsafe")
        if scaling:
            out -= scaling[0]
            out /= scaling[1]
        bad_rows = int(np.count_nonzero(~np.isfinite(out).all(axis=1)))
    if bad_rows:
        check_finite_for_dtype(X, dtype, name, first_row=first_row)  # raises, naming the rows, if the values are bad
        raise InvalidInputError(
            f"{name} standardised by the model's scaler holds NaN or Inf values in {bad_rows} of "
            f"{X.shape[0]} rows (a scale of 0 in {dtype.name}, or values far outside the scaler's range)")


def as_target_array(backend, loss, y, n_samples, n_outputs, dtype, name="y"):
    """Validate ``y`` for ``loss`` and return it on the device in the loss kernel's layout."""
    y = backend.to_host(y) if _is_device_array(backend, y) else as_host_array(y, name)
    return backend.asarray(host_targets(loss, y, n_samples, n_outputs, dtype, name))


def host_targets(loss, y, n_samples, n_outputs, dtype, name="y", first_row=0):
    """:func:`as_target_array` on a host array, returning the targets on the host; rows numbered from
    ``first_row`` in the messages."""
    y = as_host_array(y, name)
    if y.dtype.kind not in "biuf":
        raise InvalidTypeError(f"{name} must hold numbers, got an array of dtype {y.dtype}")
    if y.ndim == 0 or y.shape[0] != n_samples:
        got = "a scalar" if y.ndim == 0 else f"{y.shape[0]} samples"
        name_x = name[:-1] + "X" if name.endswith(" y") else "X"
        raise InvalidInputError(f"{name_x} has {n_samples} samples but {name} has {got}")
    check_finite_for_dtype(y, dtype, name, n_samples, first_row)
    try:
        targets = loss.prepare_targets(y, n_outputs, dtype)
    except InvalidInputError as exc:
        # the loss names its argument "y" (or not at all): say which array it was
        message = str(exc)
        if name != "y" or not re.search(r"(?<![\w\[])y(?!\w)", message):
            raise InvalidInputError(f"{name}: {message}") from None
        raise
    return targets


def check_positive_int(name, value):
    """Return ``value`` as an int, raising unless it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_bool(name, value):
    """Return ``value`` as a bool, raising unless it is True or False (a NumPy bool too).

    Strings, numbers and None are refused rather than read as truthy: ``shuffle="no"`` would be True.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidTypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_number(name, value, minimum=None, strict=False, maximum=None):
    """Return ``value`` as a float, raising unless it is a finite real number (not a bool) within bounds.

    ``minimum`` is excluded when ``strict``, included otherwise; ``maximum`` is included.
    A value that is no real number raises InvalidTypeError; NaN, Inf or out of bounds, InvalidInputError.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InvalidTypeError(f"{name} must be a finite number, got {value!r}")
    try:
        number = float(value)
    except (OverflowError, TypeError, ValueError):  # an int beyond float's range
        number = float("inf")
    if not np.isfinite(number):
        raise InvalidInputError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and (number <= minimum if strict else number < minimum):
        raise InvalidInputError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    if maximum is not None and number > maximum:
        raise InvalidInputError(f"{name} must be <= {maximum:g}, got {value!r}")
    return number


def as_list(name, value, is_single, expected):
    """``value`` as a new list: None gives ``[]``, a single item (``is_single(value)``) a one-element list,
    any other iterable but a string, bytes or dict its items; otherwise InvalidTypeError "``name`` must be
    ``expected``"."""
    if value is None:
        return []
    if is_single(value):
        return [value]
    if not isinstance(value, (str, bytes, dict)):
        try:
            return list(value)
        except TypeError:  # not iterable, or a 0-d array
            pass
    raise InvalidTypeError(f"{name} must be {expected}, got {type(value).__name__}")

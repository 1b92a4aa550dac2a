"""Input checks shared by the model, the trainer and the CLI.

Each check raises an error that names the argument and says what was expected.
"""

from __future__ import annotations

import numbers

import numpy as np

from .errors import InvalidInputError, InvalidTypeError


def _is_device_array(backend, a):
    return backend.name != "cpu" and backend.owns(a)


def as_feature_matrix(backend, X, n_features, dtype, name="X"):
    """Validate ``X`` and return it as a C-contiguous (n, n_features) ``dtype`` array on the device."""
    if not _is_device_array(backend, X):
        if hasattr(X, "__cuda_array_interface__") and backend.name == "cpu":
            raise InvalidTypeError(f"{name} is a GPU array but the model runs on the CPU backend")
        X = np.asarray(X)
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
    X = backend.asarray(X, dtype=dtype)
    xp = backend.xp
    bad_rows = int(xp.count_nonzero(~xp.isfinite(X).all(axis=1)))
    if bad_rows:
        raise InvalidInputError(f"{name} holds NaN or Inf values in {bad_rows} of {X.shape[0]} rows")
    return X


def as_target_array(backend, loss, y, n_samples, n_outputs, dtype, name="y"):
    """Validate ``y`` for ``loss`` and return it on the device in the loss kernel's layout."""
    y = backend.to_host(y) if _is_device_array(backend, y) else np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise InvalidTypeError(f"{name} must hold numbers, got an array of dtype {y.dtype}")
    if y.ndim == 0 or y.shape[0] != n_samples:
        got = "a scalar" if y.ndim == 0 else f"{y.shape[0]} samples"
        raise InvalidInputError(f"X has {n_samples} samples but {name} has {got}")
    if y.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(y.reshape(n_samples, -1)).all(axis=1)))
        if bad:
            raise InvalidInputError(f"{name} holds NaN or Inf values in {bad} of {n_samples} rows")
    return backend.asarray(loss.prepare_targets(y, n_outputs, dtype))


def check_positive_int(name, value):
    """Return ``value`` as an int, raising unless it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)

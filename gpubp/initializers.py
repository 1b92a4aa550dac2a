"""Weight initialisers.

Each initialiser draws a ``(fan_in, fan_out)`` float64 matrix on the host from
a NumPy ``Generator``; the model then casts it and copies it to the device, so
the same seed gives the same initial weights on every backend.
"""

from __future__ import annotations

import inspect

import numpy as np

from .errors import InvalidInputError, InvalidTypeError


def glorot_uniform(rng, fan_in, fan_out):
    """U(-a, a), a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010)."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def glorot_normal(rng, fan_in, fan_out):
    """N(0, 2 / (fan_in + fan_out))."""
    return rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), size=(fan_in, fan_out))


def he_normal(rng, fan_in, fan_out):
    """N(0, 2 / fan_in) (He et al., 2015), the usual choice before ReLU."""
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))


def he_uniform(rng, fan_in, fan_out):
    """U(-a, a), a = sqrt(6 / fan_in)."""
    limit = np.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def lecun_normal(rng, fan_in, fan_out):
    """N(0, 1 / fan_in)."""
    return rng.normal(0.0, np.sqrt(1.0 / fan_in), size=(fan_in, fan_out))


def normal(rng, fan_in, fan_out):
    """N(0, 0.01^2), the small-random-numbers textbook initialisation."""
    return rng.normal(0.0, 0.01, size=(fan_in, fan_out))


INITIALIZERS = {
    "glorot": glorot_uniform,
    "glorot_uniform": glorot_uniform,
    "xavier": glorot_uniform,
    "glorot_normal": glorot_normal,
    "he": he_normal,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "lecun": lecun_normal,
    "lecun_normal": lecun_normal,
    "normal": normal,
}


def get_initializer(name):
    """Look up an initialiser by name (a callable ``(rng, fan_in, fan_out)`` passes through).

    A callable that cannot take those three positional arguments raises InvalidTypeError;
    what a custom initialiser returns is checked by the layer that calls it.
    """
    if callable(name):
        try:
            signature = inspect.signature(name)
        except (TypeError, ValueError):  # some built-ins have none: let the call tell
            return name
        try:
            signature.bind(None, 1, 1)
        except TypeError:
            raise InvalidTypeError(
                f"init must be the name of an initialiser or a callable (rng, fan_in, fan_out) -> array of shape "
                f"(fan_in, fan_out), but {getattr(name, '__name__', name)!r} has the signature {signature}"
            ) from None
        return name
    try:
        return INITIALIZERS[name]
    except (KeyError, TypeError):
        raise InvalidInputError(
            f"unknown init {name!r}; valid names are {sorted(INITIALIZERS)}"
        ) from None

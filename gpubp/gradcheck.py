"""Finite-difference gradient check in float64."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from numpy.typing import ArrayLike

from .errors import InvalidInputError, InvalidTypeError, NotCompiledError
from .layers import layer_from_config
from .model import Sequential
from .validation import check_number, check_positive_int


#: Gradient magnitude below which errors are measured in absolute terms.
SCALE_FLOOR = 1e-3


@dataclass
class GradcheckResult:
    """Per-parameter comparison of backprop and central-difference gradients.

    ``errors[name] = (max_abs_error, relative_error)`` for each of ``W1, b1, ...``
    where ``relative_error = max|analytic - numeric| / max(|analytic|, |numeric|, floor)``
    over the array: a norm-wise measure that is not fooled by tiny entries, with
    ``floor`` (1e-3) so that an array whose gradients are all near zero is
    judged by the absolute error that finite differences can resolve.
    """

    errors: dict = field(default_factory=dict)
    tolerance: float = 1e-6

    @property
    def max_relative_error(self):
        return max((rel for _, rel in self.errors.values()), default=0.0)

    @property
    def ok(self):
        return self.max_relative_error <= self.tolerance

    def __bool__(self):
        return self.ok

    def __str__(self):
        rows = [f"{name}: max abs {a:.3e}, relative {r:.3e}" for name, (a, r) in self.errors.items()]
        return f"gradcheck {'passed' if self.ok else 'FAILED'} (tolerance {self.tolerance:g})\n" + "\n".join(rows)


def _float64_clone(model):
    clone = Sequential([layer_from_config(layer.get_config()) for layer in model.layers],
                       input_dim=model.input_dim, backend="cpu", dtype="float64", seed=0)
    clone.set_weights(model.get_weights())
    clone.compile(loss=model.loss, optimizer="sgd")
    return clone


def _check_arguments(model, eps, tolerance, max_entries, seed):
    """Validated ``(eps, tolerance, max_entries, seed)``; raises naming the argument that is wrong."""
    if not isinstance(model, Sequential):
        raise InvalidTypeError(f"model must be a gpubp.Sequential, got {type(model).__name__}")
    model.require_compiled()
    if not model.built:
        raise NotCompiledError("the model has no weights yet: build it (input_dim=...) or fit it first")
    # a step beyond 1 measures no derivative, and overflows the loss for large ones
    eps = check_number("eps", eps, minimum=0.0, strict=True, maximum=1.0)
    tolerance = check_number("tolerance", tolerance, minimum=0.0)
    if max_entries is not None:
        max_entries = check_positive_int("max_entries", max_entries)
    if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral)
                             or seed < 0):
        raise InvalidInputError(f"seed must be a non-negative integer or None, got {seed!r}")
    return eps, tolerance, max_entries, None if seed is None else int(seed)


def gradcheck(model: Sequential, X: ArrayLike, y: ArrayLike, eps: float = 1e-6, tolerance: float = 1e-6,
              max_entries: int | None = None, seed: int = 0) -> GradcheckResult:
    """Compare every parameter's backprop gradient with central differences, in float64.

    Parameters
    ----------
    model : compiled Sequential (any backend/dtype; a float64 CPU copy is checked)
    X, y : a small batch
    eps : float in (0, 1]
        Finite-difference step: ``(L(p + eps) - L(p - eps)) / (2 eps)``.
    tolerance : float >= 0
        Largest relative error that passes.
    max_entries : int >= 1, optional
        Check at most this many randomly chosen entries of each parameter array.
    seed : int >= 0 or None
        Seeds the choice of entries when ``max_entries`` is given.

    Returns
    -------
    GradcheckResult (truthy when every parameter passes)

    Raises InvalidTypeError or InvalidInputError naming the argument when one is
    invalid, and NotCompiledError for a model that is not compiled or has no weights yet.
    """
    eps, tolerance, max_entries, seed = _check_arguments(model, eps, tolerance, max_entries, seed)
    clone = _float64_clone(model)
    X, y, _ = clone.prepare(X, y)
    plan = clone.batch_plan(X.shape[0], y)
    plan.load(X, y)
    grads, _ = clone.compute_gradients(plan)
    analytic = grads.copy()

    def loss_at():
        return float(clone.test_step(plan)[0])

    rng = np.random.default_rng(seed)
    result = GradcheckResult(tolerance=tolerance)
    flat = clone.params
    for i, (start, stop) in enumerate(clone.param_ranges):
        indices = np.arange(start, stop)
        if max_entries is not None and indices.size > max_entries:
            indices = rng.choice(indices, size=max_entries, replace=False)
        numeric = np.empty(indices.size)
        for j, k in enumerate(indices):
            original = flat[k]
            flat[k] = original + eps
            plus = loss_at()
            flat[k] = original - eps
            minus = loss_at()
            flat[k] = original
            numeric[j] = (plus - minus) / (2 * eps)
        diff = np.abs(analytic[indices] - numeric)
        scale = max(np.abs(analytic[indices]).max(), np.abs(numeric).max(), SCALE_FLOOR)
        name = ("W" if i % 2 == 0 else "b") + str(i // 2 + 1)
        result.errors[name] = (float(diff.max()), float(diff.max() / scale))
    return result

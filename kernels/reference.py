"""Plain array-module implementations of every kernel in :mod:`gpubp.kernels.contract`.

Written once with ``xp`` (NumPy or CuPy, taken from the arrays), one readable
expression per formula, for the contract tests to compare each device's fused
kernels against. They allocate temporaries and read ``status`` on the host, so
they are references, not a backend.
"""

from __future__ import annotations

import numpy as np

from .contract import (ACTIVATIONS, STATUS_GRADIENT, STATUS_UPDATE, unknown_activation)

__all__ = [
    "bias_activation_", "activation_backward_", "sigmoid_", "softmax_", "softmax_cross_entropy",
    "binary_cross_entropy", "mse", "check_finite_", "restore_if_diverged_", "clip_by_value_", "clip_by_norm_",
    "all_reduce_mean_", "sgd_update_",
    "adam_update_", "rmsprop_update_", "weight_gradient_", "linear_", "input_gradient_", "bias_gradient_",
    "gather_rows_", "store_at_", "copy_",
]


def _xp(a):
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def _activation(z, activation):
    xp = _xp(z)
    if activation == "linear":
        return z
    if activation == "sigmoid":
        return 1 / (1 + xp.exp(-z))
    if activation == "tanh":
        return xp.tanh(z)
    if activation == "relu":
        return xp.where(z < 0, 0, z)
    raise unknown_activation(activation)


def bias_activation_(z, b, activation):
    z[...] = _activation(z + b, activation)


def activation_backward_(dy, y, activation):
    if activation not in ACTIVATIONS:
        raise unknown_activation(activation)
    if activation == "relu":  # a select, as in PyTorch's threshold_backward: 0 where y <= 0, even for NaN dy
        y[...] = _xp(y).where(y > 0, dy, 0)
        return
    derivative = {"linear": lambda: 1, "sigmoid": lambda: y * (1 - y), "tanh": lambda: 1 - y * y}[activation]()
    y[...] = dy * derivative


def sigmoid_(x):
    x[...] = _activation(x, "sigmoid")


def softmax_(x):
    e = _xp(x).exp(x - x.max(axis=1, keepdims=True))
    x[...] = e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy(logits, labels, grad, loss):
    xp = _xp(logits)
    B, K = logits.shape
    valid = (labels >= 0) & (labels < K)
    safe = xp.where(valid, labels, 0)
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_sum = xp.log(xp.exp(shifted).sum(axis=1))
    rows = log_sum - shifted[xp.arange(B), safe]
    loss[0] = rows.mean() if bool(valid.all()) else np.nan
    probabilities = xp.exp(shifted - log_sum[:, None])
    probabilities[xp.arange(B), safe] -= 1
    grad[...] = probabilities / B


def binary_cross_entropy(logits, targets, grad, loss):
    xp = _xp(logits)
    z, t = logits.astype(np.float64), targets.astype(np.float64)
    loss[0] = (xp.maximum(z, 0) - z * t + xp.log1p(xp.exp(-xp.abs(z)))).mean()
    grad[...] = (1 / (1 + xp.exp(-z)) - t) / z.size


def mse(outputs, targets, grad, loss):
    diff = outputs.astype(np.float64) - targets
    loss[0] = (diff * diff).sum() / (2 * outputs.shape[0])
    grad[...] = diff / outputs.shape[0]


def check_finite_(values, status, code, clock):
    if int(status[0]) == 0 and not bool(_xp(values).isfinite(values).all()):
        status[0], status[1] = code, int(clock[0])


def restore_if_diverged_(p, backup, status):
    if int(status[0]) != 0:
        p[...] = backup


def clip_by_value_(g, limit):
    g[...] = _xp(g).clip(g, -limit, limit)


def clip_by_norm_(g, max_norm):
    norm = float(_xp(g).sqrt((g.astype(np.float64) ** 2).sum()))
    if norm > max_norm:
        g *= g.dtype.type(max_norm / norm)


def all_reduce_mean_(g, weight, status, communicator):
    g[...] = float("nan") if int(status[0]) != 0 else g * g.dtype.type(float(weight[0]))
    communicator.allreduce_sum_(g)


def _decay(p, weight_decay, n_decayed):
    wd = _xp(p).zeros_like(p)
    wd[:n_decayed] = weight_decay
    return wd


def _guarded_write(status, step, g, pairs):
    """Write each ``(array, new)`` pair unless status is set or g or a new value is not finite."""
    xp = _xp(g)
    if int(status[0]) != 0:
        return
    if not bool(xp.isfinite(g).all()):
        status[0], status[1] = STATUS_GRADIENT, step
    elif not all(bool(xp.isfinite(new).all()) for _, new in pairs):
        status[0], status[1] = STATUS_UPDATE, step
    else:
        for array, new in pairs:
            array[...] = new


def sgd_update_(p, g, v, hyper, momentum, nesterov, weight_decay, n_decayed, status, clock):
    T, lr, step = p.dtype.type, float(hyper[0]), int(clock[0])
    d = g + _decay(p, T(weight_decay), n_decayed) * p
    if momentum == 0:
        _guarded_write(status, step, g, [(p, p - T(lr) * d)])
        return
    velocity = T(momentum) * v + d
    direction = d + T(momentum) * velocity if nesterov else velocity
    _guarded_write(status, step, g, [(p, p - T(lr) * direction), (v, velocity)])


def adam_update_(p, g, m, v, hyper, beta1, beta2, eps, weight_decay, n_decayed, status, clock):
    T, step = p.dtype.type, int(clock[0])
    step_size, bias_correction2_sqrt = float(hyper[0]), float(hyper[1])
    d = g + _decay(p, T(weight_decay), n_decayed) * p
    first = T(beta1) * m + T(1 - beta1) * d
    second = T(beta2) * v + T(1 - beta2) * d * d
    new_p = p - T(step_size) * first / (_xp(p).sqrt(second) * T(1 / bias_correction2_sqrt) + T(eps))
    _guarded_write(status, step, g, [(p, new_p), (m, first), (v, second)])


def rmsprop_update_(p, g, v, hyper, rho, eps, weight_decay, n_decayed, status, clock):
    T, lr, step = p.dtype.type, float(hyper[0]), int(clock[0])
    d = g + _decay(p, T(weight_decay), n_decayed) * p
    second = T(rho) * v + T(1 - rho) * d * d
    new_p = p - T(lr) * d / (_xp(p).sqrt(second) + T(eps))
    _guarded_write(status, step, g, [(p, new_p), (v, second)])


def weight_gradient_(x, delta, out, scale=None):
    alpha, beta = (1.0, 0.0) if scale is None else (float(scale[0]), float(scale[1]))
    product = alpha * (x.T @ delta)
    out[...] = product if beta == 0 else product + beta * out  # BLAS: beta = 0 never reads out


def linear_(x, W, out):
    out[...] = x @ W


def input_gradient_(delta, W, out):
    out[...] = delta @ W.T


def bias_gradient_(delta, out):
    out[...] = delta.sum(axis=0)


def gather_rows_(source, rows, cursor, out):
    out[...] = source[rows[int(cursor[0]):int(cursor[0]) + len(out)]]


def store_at_(value, out, cursor):
    out[int(cursor[1])] = value[0]


def copy_(source, out):
    out[...] = source


#: Mantissa bits a float32 GEMM operand keeps at each precision of ``contract.MATMUL_PRECISIONS``.
MANTISSA_BITS = {"highest": 23, "high": 10, "medium": 7}


def round_to_precision(a, precision):
    """A float32 copy of ``a`` rounded to the mantissa of ``precision`` (TF32: 10 bits, bf16: 7),
    to nearest, ties to even; NaN and Inf pass through."""
    a = np.array(a, dtype=np.float32, copy=True)
    drop = 23 - MANTISSA_BITS[precision]
    if drop == 0:
        return a
    bits = a.view(np.uint32)
    finite = np.isfinite(a)
    half = np.uint32((1 << (drop - 1)) - 1)
    rounded = (bits + half + ((bits >> np.uint32(drop)) & np.uint32(1))) & ~np.uint32((1 << drop) - 1)
    bits[finite] = rounded[finite]
    return a

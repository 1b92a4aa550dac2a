"""Plain array-module implementations of every kernel in :mod:`gpubp.kernels.contract`.

Written once with ``xp`` (NumPy or CuPy, taken from the arrays), one readable
expression per formula, for the contract tests to compare each device's fused
kernels against. They allocate temporaries and read ``status`` on the host, so
they are references, not a backend.
"""

from __future__ import annotations

import math

import numpy as np

from .contract import (ACTIVATIONS, NEEDS_PRE_ACTIVATION, STATUS_GRADIENT, STATUS_UPDATE, WEIGHTED_LOSSES,
                       activation_alpha, missing_pre_activation, unknown_activation, unknown_weighted_loss)
from .philox import dropout_threshold, philox4x32

__all__ = [
    "bias_activation_", "activation_backward_", "sigmoid_", "softmax_", "softmax_cross_entropy",
    "binary_cross_entropy", "mse", "huber", "mae", "weighted_loss", "dropout_", "check_finite_", "restore_if_diverged_",
    "clip_by_value_", "clip_by_norm_",
    "all_reduce_mean_", "sgd_update_",
    "adam_update_", "rmsprop_update_", "weight_gradient_", "linear_", "input_gradient_", "bias_gradient_",
    "gather_rows_", "store_at_", "copy_",
]


def _xp(a):
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def _erf(x):
    """erf of an array (CuPy's or SciPy's, or the math module's elementwise)."""
    if _xp(x) is not np:
        from cupyx.scipy.special import erf

        return erf(x)
    try:
        from scipy.special import erf
    except ImportError:
        return np.vectorize(math.erf, otypes=[np.float64])(x)
    return erf(x)


def _activation(z, activation, alpha=None):
    xp = _xp(z)
    alpha = activation_alpha(activation, alpha)
    if activation == "linear":
        return z
    if activation == "sigmoid":
        return 1 / (1 + xp.exp(-z))
    if activation == "tanh":
        return xp.tanh(z)
    if activation == "relu":
        return xp.where(z < 0, 0, z)
    if activation == "leaky_relu":
        return xp.where(z > 0, z, alpha * z)
    if activation == "elu":
        return xp.where(z > 0, z, alpha * xp.expm1(xp.minimum(z, 0)))
    if activation == "gelu":  # PyTorch's approximate="tanh"
        return 0.5 * z * (1 + xp.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))
    if activation == "gelu_exact":
        return 0.5 * z * (1 + _erf(z / math.sqrt(2)))
    if activation == "softplus":
        return xp.logaddexp(0, z)
    if activation == "silu":
        return z / (1 + xp.exp(-z))
    raise unknown_activation(activation)


def _derivative_from_pre_activation(z, activation):
    """f'(z) of the activations of NEEDS_PRE_ACTIVATION."""
    xp = _xp(z)
    if activation == "gelu":
        t = xp.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3))
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * z * z)
    if activation == "gelu_exact":
        return 0.5 * (1 + _erf(z / math.sqrt(2))) + z * xp.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    s = 1 / (1 + xp.exp(-z))  # silu
    return s * (1 + z * (1 - s))


def bias_activation_(z, b, activation, alpha=None, pre=None):
    if pre is not None and activation in NEEDS_PRE_ACTIVATION:
        pre[...] = z + b
    z[...] = _activation(z + b, activation, alpha)


def activation_backward_(dy, y, activation, alpha=None, pre=None):
    if activation not in ACTIVATIONS:
        raise unknown_activation(activation)
    if activation in NEEDS_PRE_ACTIVATION:
        if pre is None:
            raise missing_pre_activation(activation)
        y[...] = dy * _derivative_from_pre_activation(pre, activation)
        return
    if activation == "relu":  # a select, as in PyTorch's threshold_backward: 0 where y <= 0, even for NaN dy
        y[...] = _xp(y).where(y > 0, dy, 0)
        return
    xp, alpha = _xp(y), activation_alpha(activation, alpha)
    derivative = {"linear": lambda: 1, "sigmoid": lambda: y * (1 - y), "tanh": lambda: 1 - y * y,
                  "leaky_relu": lambda: xp.where(y > 0, 1, alpha), "elu": lambda: xp.where(y > 0, 1, y + alpha),
                  "softplus": lambda: -xp.expm1(-y)}[activation]()
    y[...] = dy * derivative


def sigmoid_(x):
    x[...] = _activation(x, "sigmoid")


def softmax_(x):
    e = _xp(x).exp(x - x.max(axis=1, keepdims=True))
    x[...] = e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy(logits, labels, grad, loss, label_smoothing):
    xp = _xp(logits)
    B, K = logits.shape
    valid = (labels >= 0) & (labels < K)
    safe = xp.where(valid, labels, 0)
    target = xp.full((B, K), label_smoothing / K)  # the smoothed one-hot q
    target[xp.arange(B), safe] += 1 - label_smoothing
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - xp.log(xp.exp(shifted).sum(axis=1))[:, None]
    rows = -(target * log_probabilities).sum(axis=1)
    loss[0] = rows.mean() if bool(valid.all()) else np.nan
    grad[...] = (xp.exp(log_probabilities) - target) / B


def binary_cross_entropy(logits, targets, grad, loss):
    xp = _xp(logits)
    z, t = logits.astype(np.float64), targets.astype(np.float64)
    loss[0] = (xp.maximum(z, 0) - z * t + xp.log1p(xp.exp(-xp.abs(z)))).mean()
    grad[...] = (1 / (1 + xp.exp(-z)) - t) / z.size


def mse(outputs, targets, grad, loss):
    diff = outputs.astype(np.float64) - targets
    loss[0] = (diff * diff).sum() / (2 * outputs.shape[0])
    grad[...] = diff / outputs.shape[0]


def huber(outputs, targets, grad, loss, delta):
    xp = _xp(outputs)
    r = outputs.astype(np.float64) - targets
    loss[0] = xp.where(xp.abs(r) <= delta, r * r / 2, delta * (xp.abs(r) - delta / 2)).mean()
    grad[...] = xp.clip(r, -delta, delta) / r.size


def mae(outputs, targets, grad, loss):
    xp = _xp(outputs)
    r = outputs.astype(np.float64) - targets
    loss[0] = xp.abs(r).mean()
    grad[...] = xp.sign(r) / r.size


def weighted_loss(loss_name, outputs, targets, weights, grad, loss, parameter):
    """Row by row: each row as a batch of one (its loss l_b, its gradient B times row b's), weighted."""
    if loss_name not in WEIGHTED_LOSSES:
        raise unknown_weighted_loss(loss_name)
    kernel = globals()[loss_name]
    xp = _xp(outputs)
    B = outputs.shape[0]
    total = 0.0
    for b in range(B):
        row_loss, row_grad = xp.zeros(1), xp.zeros((1,) + grad.shape[1:], np.float64)
        extra = (parameter,) if loss_name in ("softmax_cross_entropy", "huber") else ()
        kernel(outputs[b:b + 1].astype(np.float64), targets[b:b + 1], row_grad, row_loss, *extra)
        total += float(weights[b]) * float(row_loss[0])
        grad[b] = weights[b] * row_grad[0] / B
    loss[0] = total / B


def dropout_mask(shape, rate, seed, step, layer, first_row=0):
    """The dropout keep mask (bool, ``shape``) of the contract: Philox4x32-10 of (flat index in the whole
    batch, step) keyed by (seed, layer), its first word compared with floor(rate 2^32); the array's first row
    is row ``first_row`` of the batch. A NumPy array on the host."""
    index = np.arange(int(np.prod(shape)), dtype=np.uint64) + np.uint64(first_row * shape[-1])
    low, shift = np.uint64(0xFFFFFFFF), np.uint64(32)
    step, seed, layer = np.uint64(step), np.uint64(seed), np.uint64(layer)
    word = philox4x32(index & low, index >> shift, np.full_like(index, step & low),
                      np.full_like(index, step >> shift), seed, layer)[0]
    return (word >= dropout_threshold(rate)).reshape(shape)


def dropout_(x, out, rate, seed, clock, layer):
    keep = dropout_mask(x.shape, rate, int(seed[0]), int(clock[0]), layer, int(seed[1]))
    out[...] = x * _xp(x).asarray(keep.astype(x.dtype) / (1 - rate))


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

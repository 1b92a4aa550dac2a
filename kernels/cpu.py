"""Fused, in-place CPU kernels (numba) for MLP training.

Every kernel takes C-contiguous float32 or float64 arrays, makes one pass over
memory, writes in place and allocates nothing. float32 kernels use a
vectorizable polynomial exp (see ``fastmath.fast_exp``); float64 kernels use
``math.exp`` and are accurate to float64 precision. Python scalars are cast to
the array dtype inside the kernels.

Each kernel body is compiled twice: serial, and with ``parallel=True``
(``prange`` over rows or elements). The wrappers pick the parallel version
when the array holds at least ``PARALLEL_THRESHOLD`` elements (off unless set,
see below).
"""

import math
import os
import threading
import types as _pytypes

import numba
import numpy as np
from numba import prange

from . import blas, philox, scalar_math
from .contract import (ACTIVATION_ALPHA, NEEDS_PRE_ACTIVATION, STATUS_GRADIENT, STATUS_UPDATE, WEIGHTED_LOSSES,
                       activation_alpha, check_matmul_precision, missing_pre_activation, unknown_activation,
                       unknown_weighted_loss)
from .fastmath import as_dtype_of, fast_exp, fast_tanh

__all__ = [
    "PARALLEL_THRESHOLD",
    "bias_activation_",
    "activation_backward_",
    "softmax_cross_entropy",
    "softmax_",
    "sigmoid_",
    "binary_cross_entropy",
    "mse",
    "huber",
    "mae",
    "weighted_loss",
    "dropout_",
    "check_finite_",
    "restore_if_diverged_",
    "clip_by_value_",
    "clip_by_norm_",
    "all_reduce_mean_",
    "sgd_update_",
    "adam_update_",
    "rmsprop_update_",
    "weight_gradient_",
    "linear_",
    "input_gradient_",
    "bias_gradient_",
    "gather_rows_",
    "store_at_",
    "copy_",
    "scratch_bytes",
    "set_matmul_precision",
    "matmul_precision",
]

#: Arrays with at least this many elements use the multithreaded kernels.
#: Off by default: inside a training step each kernel sits between two BLAS
#: GEMMs, and the OpenMP workers that numba leaves spinning after a parallel
#: region fight OpenBLAS's threads for the cores (measured on a 2-core CPU: a
#: 512x1024 GEMM + bias/ReLU took 12.0 ms with the parallel kernel, 5.6 ms with
#: the serial one). Set ``GPUBP_PARALLEL_THRESHOLD`` (e.g. 131072) to turn them
#: on for kernel-bound work, or with ``OMP_WAIT_POLICY=passive``.
PARALLEL_THRESHOLD = int(os.environ.get("GPUBP_PARALLEL_THRESHOLD", 1 << 62))

# Fast-math flags that keep IEEE NaN/Inf semantics (no "nnan"/"ninf"), so a
# diverging run still produces NaN.
_FASTMATH_FLAGS = {"nsz", "arcp", "contract", "afn", "reassoc"}
_JIT_OPTIONS = dict(
    cache=True,
    nogil=True,
    fastmath=_FASTMATH_FLAGS,
    error_model="numpy",
    boundscheck=False,
)


def _serial_and_parallel(body):
    """Compile ``body`` as a serial and as a ``parallel=True`` njit function.

    numba's on-disk cache keys entries by qualified name and signature but not
    by jit options, so the parallel copy gets its own ``__qualname__``.
    """
    serial = numba.njit(**_JIT_OPTIONS)(body)
    clone = _pytypes.FunctionType(
        body.__code__, body.__globals__, body.__name__ + "_parallel",
        body.__defaults__, body.__closure__,
    )
    clone.__qualname__ = body.__qualname__ + "_parallel"
    clone.__module__ = body.__module__
    clone.__doc__ = body.__doc__
    parallel = numba.njit(parallel=True, **_JIT_OPTIONS)(clone)
    return serial, parallel


@numba.njit(inline="always")
def _sigmoid(x):
    """1 / (1 + exp(-x)) without overflow: uses e = exp(-|x|) <= 1."""
    one = as_dtype_of(1.0, x)
    e = fast_exp(-abs(x))
    r = one / (one + e)
    return r if x >= 0 else e * r


# --------------------------------------------------------------------------
# Fused bias + activation (forward)
# --------------------------------------------------------------------------

def _bias_linear(z, b):
    """z (B, n) += b (n,)."""
    batch, width = z.shape
    for i in prange(batch):
        for j in range(width):
            z[i, j] += b[j]


def _bias_sigmoid(z, b):
    """z (B, n) = sigmoid(z + b)."""
    batch, width = z.shape
    for i in prange(batch):
        for j in range(width):
            z[i, j] = _sigmoid(z[i, j] + b[j])


def _bias_tanh(z, b):
    """z (B, n) = tanh(z + b)."""
    batch, width = z.shape
    for i in prange(batch):
        for j in range(width):
            z[i, j] = fast_tanh(z[i, j] + b[j])


def _bias_relu(z, b):
    """z (B, n) = max(z + b, 0); NaN stays NaN."""
    batch, width = z.shape
    zero = as_dtype_of(0.0, z)
    for i in prange(batch):
        for j in range(width):
            x = z[i, j] + b[j]
            z[i, j] = zero if x < zero else x


_leaky_relu_value = numba.njit(inline="always")(scalar_math.leaky_relu)
_elu_value = numba.njit(inline="always")(scalar_math.elu)
_softplus_value = numba.njit(inline="always")(scalar_math.softplus)
_gelu_gate_input_value = numba.njit(inline="always")(scalar_math.gelu_gate_input)
_gated_value = numba.njit(inline="always")(scalar_math.gated)
_gelu_exact_value = numba.njit(inline="always")(scalar_math.gelu_exact)


def _bias_leaky_relu(z, b, alpha):
    """z (B, n) = leaky_relu(z + b) with negative slope alpha."""
    batch, width = z.shape
    slope, zero = as_dtype_of(alpha, z), as_dtype_of(0.0, z)
    for i in prange(batch):
        for j in range(width):
            z[i, j] = _leaky_relu_value(z[i, j] + b[j], slope, zero)


def _bias_elu(z, b, alpha):
    """z (B, n) = elu(z + b) with alpha."""
    batch, width = z.shape
    alpha, zero = as_dtype_of(alpha, z), as_dtype_of(0.0, z)
    for i in prange(batch):
        for j in range(width):
            z[i, j] = _elu_value(z[i, j] + b[j], alpha, zero)


def _bias_softplus(z, b):
    """z (B, n) = log(1 + exp(z + b))."""
    batch, width = z.shape
    zero = as_dtype_of(0.0, z)
    for i in prange(batch):
        for j in range(width):
            z[i, j] = _softplus_value(z[i, j] + b[j], zero)


# The bodies of the activations that need their pre-activation write it into ``pre`` in the same pass
# (``pre`` may be z itself: then z takes z + b, then f(z + b)).

def _bias_silu(z, b, pre):
    """pre = z + b; z (B, n) = pre sigmoid(pre)."""
    batch, width = z.shape
    for i in prange(batch):
        for j in range(width):
            x = z[i, j] + b[j]
            pre[i, j] = x
            z[i, j] = _gated_value(x, _sigmoid(x))


def _bias_gelu(z, b, pre):
    """pre = z + b; z (B, n) = the tanh-approximated GELU of pre, as pre sigmoid(u(pre))."""
    batch, width = z.shape
    gate_a, gate_b = as_dtype_of(scalar_math.GELU_GATE_A, z), as_dtype_of(scalar_math.GELU_GATE_B, z)
    for i in prange(batch):
        for j in range(width):
            x = z[i, j] + b[j]
            pre[i, j] = x
            z[i, j] = _gated_value(x, _sigmoid(_gelu_gate_input_value(x, gate_a, gate_b)))


def _bias_gelu_exact(z, b, pre):
    """pre = z + b; z (B, n) = pre Phi(pre) (erf GELU)."""
    batch, width = z.shape
    half, minus_sqrt_half = as_dtype_of(0.5, z), as_dtype_of(scalar_math.MINUS_SQRT_HALF, z)
    for i in prange(batch):
        for j in range(width):
            x = z[i, j] + b[j]
            pre[i, j] = x
            z[i, j] = _gelu_exact_value(x, half, minus_sqrt_half)


_BIAS_ACTIVATION_KERNELS = {
    "linear": _serial_and_parallel(_bias_linear),
    "sigmoid": _serial_and_parallel(_bias_sigmoid),
    "tanh": _serial_and_parallel(_bias_tanh),
    "relu": _serial_and_parallel(_bias_relu),
    "leaky_relu": _serial_and_parallel(_bias_leaky_relu),
    "elu": _serial_and_parallel(_bias_elu),
    "gelu": _serial_and_parallel(_bias_gelu),
    "gelu_exact": _serial_and_parallel(_bias_gelu_exact),
    "softplus": _serial_and_parallel(_bias_softplus),
    "silu": _serial_and_parallel(_bias_silu),
}


def _extra_args(activation, alpha, pre, out):
    """The arguments an activation's kernel body takes after its two arrays: the alpha of an
    ``ACTIVATION_ALPHA`` activation, the pre-activation array of a ``NEEDS_PRE_ACTIVATION`` one
    (``out`` when ``pre`` is None), nothing for the others."""
    if activation in ACTIVATION_ALPHA:
        return (activation_alpha(activation, alpha),)
    if activation in NEEDS_PRE_ACTIVATION:
        return (out if pre is None else pre,)
    return ()


def bias_activation_(z, b, activation, alpha=None, pre=None):
    """In place z[:] = f(z + b); z (B, n), b (n,), same float dtype.

    ``alpha``: leaky_relu's negative slope or elu's alpha (None: the default); for gelu, gelu_exact and
    silu, ``pre`` (B, n), unless None, receives z + b, which their backward needs.
    """
    try:
        serial, parallel = _BIAS_ACTIVATION_KERNELS[activation]
    except KeyError:
        raise unknown_activation(activation) from None
    (parallel if z.size >= PARALLEL_THRESHOLD else serial)(z, b, *_extra_args(activation, alpha, pre, z))


# --------------------------------------------------------------------------
# Activation backward (derivative expressed with the forward output y, or with the
# pre-activation z for the activations that are not invertible)
# --------------------------------------------------------------------------

_sigmoid_backward_value = numba.njit(inline="always")(scalar_math.sigmoid_backward)
_tanh_backward_value = numba.njit(inline="always")(scalar_math.tanh_backward)
_relu_backward_value = numba.njit(inline="always")(scalar_math.relu_backward)

# Each body reads dy and writes y: two distinct arrays (a third ``out`` parameter
# that aliases an input defeats LLVM's vectorizer: relu went 10x slower).

def _sigmoid_backward(dy, y):
    """y = dy * y * (1 - y); any shape, flattened."""
    flat_dy, flat_y = dy.reshape(dy.size), y.reshape(y.size)
    one = as_dtype_of(1.0, y)
    for i in prange(flat_y.size):
        flat_y[i] = _sigmoid_backward_value(flat_dy[i], flat_y[i], one)


def _tanh_backward(dy, y):
    """y = dy * (1 - y * y); any shape, flattened."""
    flat_dy, flat_y = dy.reshape(dy.size), y.reshape(y.size)
    one = as_dtype_of(1.0, y)
    for i in prange(flat_y.size):
        flat_y[i] = _tanh_backward_value(flat_dy[i], flat_y[i], one)


def _relu_backward(dy, y):
    """y = dy if y > 0 else 0; any shape, flattened."""
    flat_dy, flat_y = dy.reshape(dy.size), y.reshape(y.size)
    zero = as_dtype_of(0.0, y)
    for i in prange(flat_y.size):
        flat_y[i] = _relu_backward_value(flat_dy[i], flat_y[i], zero)


_leaky_relu_backward_value = numba.njit(inline="always")(scalar_math.leaky_relu_backward)
_elu_backward_value = numba.njit(inline="always")(scalar_math.elu_backward)
_softplus_backward_value = numba.njit(inline="always")(scalar_math.softplus_backward)
_gated_backward_value = numba.njit(inline="always")(scalar_math.gated_backward)
_sigmoid_pair_value = numba.njit(inline="always")(scalar_math.sigmoid_pair)
_gelu_exact_backward_value = numba.njit(inline="always")(scalar_math.gelu_exact_backward)


def _leaky_relu_backward(dy, y, alpha):
    """y = dy if y > 0 else dy alpha; any shape, flattened."""
    flat_dy, flat_y = dy.reshape(dy.size), y.reshape(y.size)
    slope, zero = as_dtype_of(alpha, y), as_dtype_of(0.0, y)
    for i in prange(flat_y.size):
        flat_y[i] = _leaky_relu_backward_value(flat_dy[i], flat_y[i], slope, zero)


def _elu_backward(dy, y, alpha):
    """y = dy if y > 0 else dy (y + alpha); any shape, flattened."""
    flat_dy, flat_y = dy.reshape(dy.size), y.reshape(y.size)
    alpha, zero = as_dtype_of(alpha, y), as_dtype_of(0.0, y)
    for i in prange(flat_y.size):
        flat_y[i] = _elu_backward_value(flat_dy[i], flat_y[i], alpha, zero)


def _softplus_backward(dy, y):
    """y = dy (1 - exp(-y)); any shape, flattened."""
    flat_dy, flat_y = dy.reshape(dy.size), y.reshape(y.size)
    for i in prange(flat_y.size):
        flat_y[i] = _softplus_backward_value(flat_dy[i], flat_y[i])


def _silu_backward(dy, y, pre):
    """y = dy s (1 + z (1 - s)), z = pre, s = sigmoid(z); any shape, flattened."""
    flat_dy, flat_y, flat_z = dy.reshape(dy.size), y.reshape(y.size), pre.reshape(pre.size)
    one, zero = as_dtype_of(1.0, y), as_dtype_of(0.0, y)
    for i in prange(flat_y.size):
        x = flat_z[i]
        s, s_complement = _sigmoid_pair_value(x, fast_exp(-abs(x)), one, zero)
        flat_y[i] = _gated_backward_value(flat_dy[i], x, s, s_complement, one, one)


def _gelu_backward(dy, y, pre):
    """y = dy s (1 + z (1 - s) (a + 3 b z^2)), z = pre, s = sigmoid(z (a + b z^2)); any shape, flattened."""
    flat_dy, flat_y, flat_z = dy.reshape(dy.size), y.reshape(y.size), pre.reshape(pre.size)
    one, zero = as_dtype_of(1.0, y), as_dtype_of(0.0, y)
    gate_a, gate_b = as_dtype_of(scalar_math.GELU_GATE_A, y), as_dtype_of(scalar_math.GELU_GATE_B, y)
    gate_3b = as_dtype_of(3.0 * scalar_math.GELU_GATE_B, y)
    for i in prange(flat_y.size):
        x = flat_z[i]
        u = _gelu_gate_input_value(x, gate_a, gate_b)
        s, s_complement = _sigmoid_pair_value(u, fast_exp(-abs(u)), one, zero)
        flat_y[i] = _gated_backward_value(flat_dy[i], x, s, s_complement, gate_a + gate_3b * x * x, one)


def _gelu_exact_backward(dy, y, pre):
    """y = dy (Phi(z) + z phi(z)), z = pre; any shape, flattened."""
    flat_dy, flat_y, flat_z = dy.reshape(dy.size), y.reshape(y.size), pre.reshape(pre.size)
    half, minus_sqrt_half = as_dtype_of(0.5, y), as_dtype_of(scalar_math.MINUS_SQRT_HALF, y)
    inv_sqrt_2pi = as_dtype_of(scalar_math.INV_SQRT_2PI, y)
    for i in prange(flat_y.size):
        flat_y[i] = _gelu_exact_backward_value(flat_dy[i], flat_z[i], half, minus_sqrt_half, inv_sqrt_2pi)


_ACTIVATION_BACKWARD_KERNELS = {
    "sigmoid": _serial_and_parallel(_sigmoid_backward),
    "tanh": _serial_and_parallel(_tanh_backward),
    "relu": _serial_and_parallel(_relu_backward),
    "leaky_relu": _serial_and_parallel(_leaky_relu_backward),
    "elu": _serial_and_parallel(_elu_backward),
    "gelu": _serial_and_parallel(_gelu_backward),
    "gelu_exact": _serial_and_parallel(_gelu_exact_backward),
    "softplus": _serial_and_parallel(_softplus_backward),
    "silu": _serial_and_parallel(_silu_backward),
}


def activation_backward_(dy, y, activation, alpha=None, pre=None):
    """In place ``y = dy * f'(z)``, with f' written in terms of the forward output y.

    sigmoid: y (1 - y); tanh: 1 - y^2; relu: [y > 0]; linear: 1 (y = dy); leaky_relu: 1 or alpha;
    elu: 1 or y + alpha; softplus: 1 - exp(-y). gelu, gelu_exact and silu read f' from their
    pre-activation ``pre`` = z (required) instead. dy, y (and pre) have the same shape and float dtype.
    The training step writes dL/dz over the activation it no longer needs.
    """
    if activation == "linear":
        np.copyto(y, dy)
        return
    try:
        serial, parallel = _ACTIVATION_BACKWARD_KERNELS[activation]
    except KeyError:
        raise unknown_activation(activation) from None
    if pre is None and activation in NEEDS_PRE_ACTIVATION:
        raise missing_pre_activation(activation)
    (parallel if y.size >= PARALLEL_THRESHOLD else serial)(dy, y, *_extra_args(activation, alpha, pre, y))


# --------------------------------------------------------------------------
# Elementwise sigmoid, row softmax
# --------------------------------------------------------------------------

def _sigmoid_inplace(x):
    """x = 1 / (1 + exp(-x)); any shape, flattened."""
    flat = x.reshape(x.size)
    for i in prange(flat.size):
        flat[i] = _sigmoid(flat[i])


_SIGMOID_KERNELS = _serial_and_parallel(_sigmoid_inplace)


def sigmoid_(x):
    """In place logistic function of a contiguous float array."""
    serial, parallel = _SIGMOID_KERNELS
    (parallel if x.size >= PARALLEL_THRESHOLD else serial)(x)


def _softmax_rows(x):
    """x (B, K): each row = exp(row - max(row)) / sum(exp(row - max(row)))."""
    batch, width = x.shape
    one = as_dtype_of(1.0, x)
    for i in prange(batch):
        row_max = x[i, 0]
        for j in range(1, width):
            v = x[i, j]
            row_max = v if v > row_max else row_max
        total = as_dtype_of(0.0, x)
        for j in range(width):
            e = fast_exp(x[i, j] - row_max)
            x[i, j] = e
            total += e
        inv_total = one / total
        for j in range(width):
            x[i, j] *= inv_total


_SOFTMAX_KERNELS = _serial_and_parallel(_softmax_rows)


def softmax_(x):
    """In place, numerically stable softmax of each row of x (B, K)."""
    serial, parallel = _SOFTMAX_KERNELS
    (parallel if x.size >= PARALLEL_THRESHOLD else serial)(x)


# --------------------------------------------------------------------------
# Losses (write the mean loss into a 1-element float64 array, the gradient in place)
# --------------------------------------------------------------------------

@numba.njit(**_JIT_OPTIONS)
def _cross_entropy_row(logits, label, grad, i, inv_batch, hit, off, smoothing):
    """Row i: grad = (softmax(logits[i]) - q) * inv_batch, q the one-hot of label smoothed by eps:
    ``hit = (1 - eps) / B`` and ``off = eps / (K B)`` in the logits' dtype, ``smoothing = eps`` (float64).

    Returns the row loss in two float64 parts, ``(s, margin)`` with
    ``s = sum_j exp(z_j - m)`` and m = max_j z_j: the loss is log(s) + margin,
    ``margin = (1 - eps) (m - z_label) + eps (m - mean_j z_j)`` (``m - z_label`` when eps = 0).
    The caller takes one log per block of rows (of the product of their s, each
    in [1, K]), since a scalar libm log per row costs as much as the rest of
    the row. A separate (LLVM-inlined) function: numba's parfor reduction
    analysis rejects the inner max loop when it sits directly in the prange body.
    """
    width = logits.shape[1]
    row_max = logits[i, 0]
    for j in range(1, width):
        v = logits[i, j]
        row_max = v if v > row_max else row_max
    total = as_dtype_of(0.0, logits)
    for j in range(width):
        e = fast_exp(logits[i, j] - row_max)
        grad[i, j] = e
        total += e
    scale = inv_batch / total
    for j in range(width):
        grad[i, j] = grad[i, j] * scale - off
    grad[i, label] -= hit
    margin = np.float64(row_max) - np.float64(logits[i, label])
    if smoothing != 0.0:
        row_sum = 0.0
        for j in range(width):
            row_sum += np.float64(logits[i, j])
        margin = (1.0 - smoothing) * margin + smoothing * (np.float64(row_max) - row_sum / width)
    return np.float64(total), margin


#: Rows whose softmax denominators (each in [1, K]) are multiplied before one
#: log: K**32 stays finite in float64 for any K below 10**9.
_LOG_BLOCK = 32


def _softmax_cross_entropy(logits, labels, grad, loss, smoothing):
    """Mean cross-entropy of softmax(logits) and its gradient, with label smoothing eps = ``smoothing``.

    logits, grad (B, K); labels (B,) integers; loss (1,) float64.
    grad = (softmax(logits) - q) / B, q = (1 - eps) onehot(labels) + eps / K; loss[0] = mean of row losses,
    NaN when a label lies outside [0, K) (its row is then never read out of bounds).
    """
    batch, width = logits.shape
    inv_batch = as_dtype_of(1.0 / batch, logits)
    hit = as_dtype_of((1.0 - smoothing) / batch, logits)
    off = as_dtype_of(smoothing / (width * batch), logits)
    total_loss = 0.0
    bad_labels = 0
    for block in prange((batch + _LOG_BLOCK - 1) // _LOG_BLOCK):
        product = 1.0
        margins = 0.0
        for i in range(block * _LOG_BLOCK, min(batch, (block + 1) * _LOG_BLOCK)):
            label = labels[i]
            label_ok = label >= 0 and label < width
            bad_labels += 0 if label_ok else 1
            row_total, margin = _cross_entropy_row(logits, label if label_ok else 0, grad, i, inv_batch, hit, off,
                                                   smoothing)
            product *= row_total
            margins += margin
        total_loss += math.log(product) + margins
    loss[0] = np.nan if bad_labels else total_loss / batch


_SOFTMAX_CROSS_ENTROPY_KERNELS = _serial_and_parallel(_softmax_cross_entropy)


def softmax_cross_entropy(logits, labels, grad, loss, label_smoothing):
    """Mean softmax cross-entropy into ``loss[0]``; its gradient into ``grad``.

    logits, grad: (B, K) float32/float64; labels: (B,) int64; loss: (1,) float64; label_smoothing eps in
    [0, 1): the target is q = (1 - eps) onehot(labels) + eps / K. grad = (softmax(logits) - q) / B.
    logits are not modified. A label outside [0, K) makes the loss NaN.
    """
    serial, parallel = _SOFTMAX_CROSS_ENTROPY_KERNELS
    (parallel if logits.size >= PARALLEL_THRESHOLD else serial)(logits, labels, grad, loss,
                                                                float(label_smoothing))


def _binary_cross_entropy(logits, targets, grad, loss):
    """Mean BCE-with-logits over all B*K entries and its gradient.

    loss = mean(max(z, 0) - z t + log1p(exp(-|z|))); grad = (sigmoid(z) - t) / (B K).
    """
    flat_logits = logits.reshape(logits.size)
    flat_targets = targets.reshape(targets.size)
    flat_grad = grad.reshape(grad.size)
    count = flat_logits.size
    inv_count = as_dtype_of(1.0 / count, logits)
    one = as_dtype_of(1.0, logits)
    zero = as_dtype_of(0.0, logits)
    total = 0.0
    for i in prange(count):
        z = flat_logits[i]
        t = flat_targets[i]
        e = fast_exp(-abs(z))
        r = one / (one + e)
        s = r if z >= zero else e * r
        flat_grad[i] = (s - t) * inv_count
        positive_part = z if z > zero else zero
        total += np.float64(positive_part - z * t) + math.log1p(np.float64(e))
    loss[0] = total / count


_BINARY_CROSS_ENTROPY_KERNELS = _serial_and_parallel(_binary_cross_entropy)


def binary_cross_entropy(logits, targets, grad, loss):
    """Mean BCE-with-logits into ``loss[0]``; its gradient into ``grad``.

    logits, targets, grad: (B, K), same float dtype, targets in [0, 1]; loss: (1,) float64.
    """
    serial, parallel = _BINARY_CROSS_ENTROPY_KERNELS
    (parallel if logits.size >= PARALLEL_THRESHOLD else serial)(logits, targets, grad, loss)


def _mse(outputs, targets, grad, loss):
    """loss = sum((o - t)^2) / (2 B); grad = (o - t) / B; B = outputs.shape[0]."""
    batch = outputs.shape[0]
    flat_outputs = outputs.reshape(outputs.size)
    flat_targets = targets.reshape(targets.size)
    flat_grad = grad.reshape(grad.size)
    inv_batch = as_dtype_of(1.0 / batch, outputs)
    total = 0.0
    for i in prange(flat_outputs.size):
        diff = flat_outputs[i] - flat_targets[i]
        flat_grad[i] = diff * inv_batch
        total += np.float64(diff) * np.float64(diff)
    loss[0] = total / (2.0 * batch)


_MSE_KERNELS = _serial_and_parallel(_mse)


def mse(outputs, targets, grad, loss):
    """Half mean squared error per sample into ``loss[0]``; its gradient into ``grad``.

    outputs, targets, grad: (B, K) same float dtype; loss: (1,) float64.
    loss = sum((o - t)^2) / (2 B), grad = (o - t) / B.
    """
    serial, parallel = _MSE_KERNELS
    (parallel if outputs.size >= PARALLEL_THRESHOLD else serial)(outputs, targets, grad, loss)


@numba.njit(inline="always")
def _sign_value(v, magnitude, zero):
    """``magnitude`` times the sign of v: 0 where v == 0, NaN where v is NaN."""
    return magnitude if v > zero else (-magnitude if v < zero else (zero if v == zero else v))


def _huber(outputs, targets, grad, loss, delta):
    """r = o - t; loss = mean(r^2 / 2 if |r| <= delta else delta (|r| - delta / 2)); grad = clip(r) / (B K)."""
    flat_outputs = outputs.reshape(outputs.size)
    flat_targets = targets.reshape(targets.size)
    flat_grad = grad.reshape(grad.size)
    count = flat_outputs.size
    inv_count = as_dtype_of(1.0 / count, outputs)
    limit = as_dtype_of(delta, outputs)
    total = 0.0
    for i in prange(count):
        diff = flat_outputs[i] - flat_targets[i]
        flat_grad[i] = _clip_value(diff, limit) * inv_count
        r = abs(np.float64(diff))
        total += 0.5 * r * r if r <= delta else delta * (r - 0.5 * delta)
    loss[0] = total / count


_HUBER_KERNELS = _serial_and_parallel(_huber)


def huber(outputs, targets, grad, loss, delta):
    """Mean Huber loss (PyTorch's HuberLoss) into ``loss[0]``; its gradient into ``grad``.

    outputs, targets, grad: (B, K) same float dtype; loss: (1,) float64; delta > 0.
    r = o - t; loss = mean over the B K elements of r^2 / 2 (|r| <= delta) or delta (|r| - delta / 2);
    grad = clip(r, -delta, delta) / (B K).
    """
    serial, parallel = _HUBER_KERNELS
    (parallel if outputs.size >= PARALLEL_THRESHOLD else serial)(outputs, targets, grad, loss, float(delta))


def _mae(outputs, targets, grad, loss):
    """loss = mean |o - t|; grad = sign(o - t) / (B K), 0 where o == t, NaN where o - t is NaN."""
    flat_outputs = outputs.reshape(outputs.size)
    flat_targets = targets.reshape(targets.size)
    flat_grad = grad.reshape(grad.size)
    count = flat_outputs.size
    inv_count = as_dtype_of(1.0 / count, outputs)
    zero = as_dtype_of(0.0, outputs)
    total = 0.0
    for i in prange(count):
        diff = flat_outputs[i] - flat_targets[i]
        flat_grad[i] = _sign_value(diff, inv_count, zero)
        total += abs(np.float64(diff))
    loss[0] = total / count


_MAE_KERNELS = _serial_and_parallel(_mae)


def mae(outputs, targets, grad, loss):
    """Mean absolute error (PyTorch's L1Loss) into ``loss[0]``; its gradient into ``grad``.

    outputs, targets, grad: (B, K) same float dtype; loss: (1,) float64.
    loss = mean over the B K elements of |o - t|; grad = sign(o - t) / (B K), 0 where o == t.
    """
    serial, parallel = _MAE_KERNELS
    (parallel if outputs.size >= PARALLEL_THRESHOLD else serial)(outputs, targets, grad, loss)


_weighted_label_row = numba.njit(inline="always")(scalar_math.weighted_label_row)
_weighted_value_row = numba.njit(inline="always")(scalar_math.weighted_value_row)


def _weighted_label_loss(logits, labels, weights, grad, loss, smoothing):
    """loss[0] = sum_b w_b l_b / B and grad[b] = w_b (softmax(z_b) - q_b) / B (see weighted_loss)."""
    batch = logits.shape[0]
    total = 0.0
    for r in prange(batch):
        total += weights[r] * _weighted_label_row(logits, labels, grad, r, weights[r] / batch, smoothing)
    loss[0] = total / batch


def _weighted_value_loss(kind, outputs, targets, weights, grad, loss, grad_scale, delta):
    """loss[0] = grad_scale sum_b w_b (row b's sum of terms) and grad[b] = grad_scale w_b g_b (see weighted_loss)."""
    total = 0.0
    for r in prange(outputs.shape[0]):
        total += weights[r] * _weighted_value_row(kind, outputs, targets, grad, r, weights[r] * grad_scale, delta)
    loss[0] = total * grad_scale


_WEIGHTED_LABEL_KERNELS = _serial_and_parallel(_weighted_label_loss)
_WEIGHTED_VALUE_KERNELS = _serial_and_parallel(_weighted_value_loss)


def weighted_loss(loss_name, outputs, targets, weights, grad, loss, parameter):
    """The loss kernel ``loss_name`` with row b weighted by ``weights[b]`` ((B,) float64): loss[0] = sum_b w_b l_b / B,
    grad[b] = w_b times row b of the unweighted gradient; in float64, one row per iteration."""
    if loss_name not in WEIGHTED_LOSSES:
        raise unknown_weighted_loss(loss_name)
    parallel = outputs.size >= PARALLEL_THRESHOLD
    if loss_name == "softmax_cross_entropy":
        kernel = _WEIGHTED_LABEL_KERNELS[parallel]
        kernel(outputs, targets, weights, grad, loss, float(parameter))
        return
    B, K = outputs.shape
    grad_scale = 1.0 / B if loss_name == "mse" else 1.0 / (B * K)
    _WEIGHTED_VALUE_KERNELS[parallel](scalar_math.VALUE_LOSSES[loss_name], outputs, targets, weights, grad, loss,
                                       grad_scale, float(parameter))


# --------------------------------------------------------------------------
# Dropout (a counter-based mask: Philox4x32-10 of the element's index and the step)
# --------------------------------------------------------------------------

_philox = numba.njit(inline="always")(philox.philox4x32)


def _dropout(x, out, threshold, scale, seed, clock, layer, width):
    """out = x * (scale if word(i) >= threshold else 0); word(i) the first Philox word of (i + seed[1] width,
    step), key (seed[0], layer); any shape, flattened; out may be x."""
    flat_x, flat_out = x.reshape(x.size), out.reshape(out.size)
    low, shift = philox.LOW32, philox.SHIFT32
    key, step, layer = np.uint64(seed[0]), np.uint64(clock[0]), np.uint64(layer)
    first = np.uint64(seed[1]) * np.uint64(width)
    step_low, step_high = step & low, step >> shift
    zero = as_dtype_of(0.0, x)
    for i in prange(flat_x.size):
        index = np.uint64(i) + first
        word = _philox(index & low, index >> shift, step_low, step_high, key, layer)[0]
        flat_out[i] = flat_x[i] * (scale if word >= threshold else zero)


_DROPOUT_KERNELS = _serial_and_parallel(_dropout)


def dropout_(x, out, rate, seed, clock, layer):
    """Inverted dropout: ``out = x * m / (1 - rate)``, m the keep mask of (seed[0], clock[0], layer, flat
    index in the whole batch, whose first row seed[1] is) (see ``contract.KERNELS["dropout_"]``); x, out same
    shape and float dtype (out may be x)."""
    scale = x.dtype.type(1.0 / (1.0 - rate))
    serial, parallel = _DROPOUT_KERNELS
    (parallel if x.size >= PARALLEL_THRESHOLD else serial)(x, out, philox.dropout_threshold(rate), scale, seed,
                                                           clock, np.int64(layer), np.int64(x.shape[-1]))


# --------------------------------------------------------------------------
# The divergence status and gradient hooks
# --------------------------------------------------------------------------

@numba.njit(**_JIT_OPTIONS)
def _check_finite(values, status, code, clock):
    if status[0] != 0:
        return
    flat = values.reshape(values.size)
    zero = as_dtype_of(0.0, values)
    probe = zero
    for i in range(flat.size):
        probe += flat[i] * zero  # stays 0 while every value is finite
    if probe != 0:
        status[0] = code
        status[1] = clock[0]


def check_finite_(values, status, code, clock):
    """Record ``(code, clock[0])`` in ``status`` when ``values`` holds NaN/Inf and status is clear.

    values: any float array; status: the (4,) int64 record ``[code, step, scratch, scratch]``, code 0 while
    clear; clock: the (1,) int64 optimizer step.
    """
    _check_finite(values, status, code, clock)


@numba.njit(**_JIT_OPTIONS)
def _restore_if_diverged(p, backup, status):
    if status[0] != 0:
        for i in range(p.size):
            p[i] = backup[i]


def restore_if_diverged_(p, backup, status):
    """``p[:] = backup`` when status records a failure; else nothing. p, backup: flat, same shape and dtype."""
    _restore_if_diverged(p, backup, status)


_clip_value = numba.njit(inline="always")(scalar_math.clip)


@numba.njit(**_JIT_OPTIONS)
def _clip_by_value(g, limit):
    limit = as_dtype_of(limit, g)
    for i in range(g.size):
        g[i] = _clip_value(g[i], limit)


def clip_by_value_(g, limit):
    """In place: every entry of the flat gradient g clipped to [-limit, limit]; NaN stays NaN."""
    _clip_by_value(g, limit)


@numba.njit(**_JIT_OPTIONS)
def _clip_by_norm(g, max_norm):
    total = 0.0
    for i in range(g.size):
        total += np.float64(g[i]) * np.float64(g[i])
    norm = math.sqrt(total)
    if norm > max_norm:  # false for a NaN norm: the update's check then sees the NaN
        scale = as_dtype_of(max_norm / norm, g)
        for i in range(g.size):
            g[i] *= scale


def clip_by_norm_(g, max_norm):
    """In place: rescale the flat gradient g so that its L2 norm (summed in float64) is at most max_norm."""
    _clip_by_norm(g, max_norm)


def all_reduce_mean_(g, weight, status, communicator):
    """In place: ``g = sum over ranks of weight[0] g`` (weight: this rank's (1,) float64 share), or NaN
    everywhere from a rank whose status records a failure; the sum is ``communicator.allreduce_sum_``."""
    if status[0] != 0:
        g.fill(np.nan)
    else:
        np.multiply(g, g.dtype.type(weight[0]), out=g)
    communicator.allreduce_sum_(g)


# --------------------------------------------------------------------------
# Guarded optimizer updates (flat 1-D parameter / gradient / state arrays)
#
# Each update runs in two passes: the first computes every new value and only
# checks that it and the gradient are finite; the second, reached only when
# the whole update is finite and ``status`` is clear, recomputes and writes
# them. A step that would write NaN/Inf leaves every array as it was and
# records why in ``status``. ``x * 0`` stays 0 exactly while x is finite, so the
# checks are plain vectorized sums (the fast-math flags keep NaN/Inf semantics).
# --------------------------------------------------------------------------

@numba.njit(inline="always")
def _record(status, probe_g, probe_new, step):
    """Set status from the first pass's probes; True when the update may be written."""
    if probe_g != 0:
        status[0] = STATUS_GRADIENT
    elif probe_new != 0:
        status[0] = STATUS_UPDATE
    else:
        return True
    status[1] = step
    return False


def _sgd_plain(p, g, hyper, weight_decay, n_decayed, status, clock):
    """d = g + wd p (wd on the first n_decayed entries); p -= lr d, lr = hyper[0]."""
    if status[0] != 0:
        return
    step = clock[0]
    lr = as_dtype_of(hyper[0], p)
    weight_decay = as_dtype_of(weight_decay, p)
    zero = as_dtype_of(0.0, p)
    probe_g = zero
    probe_new = zero
    for i in prange(p.size):
        wd = weight_decay if i < n_decayed else zero
        probe_g += g[i] * zero
        probe_new += _sgd_step(p[i], g[i], wd, lr) * zero
    if _record(status, probe_g, probe_new, step):
        for i in prange(p.size):
            wd = weight_decay if i < n_decayed else zero
            p[i] = _sgd_step(p[i], g[i], wd, lr)


_sgd_step = numba.njit(inline="always")(scalar_math.sgd_step)
_momentum_step = numba.njit(inline="always")(scalar_math.momentum_step)


def _sgd_momentum(p, g, v, hyper, momentum, nesterov, weight_decay, n_decayed, status, clock):
    """d = g + wd p; v = mu v + d; p -= lr * (d + mu v if nesterov else v), lr = hyper[0]."""
    if status[0] != 0:
        return
    step = clock[0]
    lr = as_dtype_of(hyper[0], p)
    momentum = as_dtype_of(momentum, p)
    weight_decay = as_dtype_of(weight_decay, p)
    zero = as_dtype_of(0.0, p)
    probe_g = zero
    probe_new = zero
    probe_v = zero
    for i in prange(p.size):
        wd = weight_decay if i < n_decayed else zero
        new_p, new_v = _momentum_step(p[i], g[i], v[i], wd, lr, momentum, nesterov)
        probe_g += g[i] * zero
        probe_new += new_p * zero
        probe_v += new_v * zero
    if _record(status, probe_g, probe_new + probe_v, step):
        for i in prange(p.size):
            wd = weight_decay if i < n_decayed else zero
            p[i], v[i] = _momentum_step(p[i], g[i], v[i], wd, lr, momentum, nesterov)


_SGD_PLAIN_KERNELS = _serial_and_parallel(_sgd_plain)
_SGD_MOMENTUM_KERNELS = _serial_and_parallel(_sgd_momentum)


def sgd_update_(p, g, v, hyper, momentum, nesterov, weight_decay, n_decayed, status, clock):
    """One guarded SGD step (PyTorch convention) on flat 1-D arrays p, g, v; lr = hyper[0].

    d = g + wd p (wd on the first ``n_decayed`` entries, 0 on the rest); with
    momentum > 0: v = mu v + d, step = d + mu v (nesterov) or v; without:
    step = d (v unused, may be None). p -= lr * step. Nothing is written when
    status is set or any gradient or new value is NaN/Inf (see the section comment).
    """
    large = p.size >= PARALLEL_THRESHOLD
    if momentum == 0.0:
        serial, parallel = _SGD_PLAIN_KERNELS
        (parallel if large else serial)(p, g, hyper, weight_decay, n_decayed, status, clock)
    else:
        serial, parallel = _SGD_MOMENTUM_KERNELS
        (parallel if large else serial)(p, g, v, hyper, momentum, bool(nesterov), weight_decay, n_decayed,
                                        status, clock)


_adam_step = numba.njit(inline="always")(scalar_math.adam_step)


def _adam(p, g, m, v, hyper, beta1, beta2, eps, weight_decay, n_decayed, status, clock):
    """d = g + wd p; m = b1 m + (1-b1) d; v = b2 v + (1-b2) d^2;
    p -= step_size * m / (sqrt(v) / bias_correction2_sqrt + eps), [step_size, bias_correction2_sqrt] = hyper."""
    if status[0] != 0:
        return
    step = clock[0]
    step_size = hyper[0]
    bias_correction2_sqrt = hyper[1]
    # 1 - beta and 1 / bc2 are formed in float64 before the cast: in float32,
    # 1 - float32(0.999) would be off by 5e-5 relative.
    one_minus_beta1 = as_dtype_of(1.0 - beta1, p)
    one_minus_beta2 = as_dtype_of(1.0 - beta2, p)
    inv_bc2_sqrt = as_dtype_of(1.0 / bias_correction2_sqrt, p)
    step_size = as_dtype_of(step_size, p)
    beta1 = as_dtype_of(beta1, p)
    beta2 = as_dtype_of(beta2, p)
    eps = as_dtype_of(eps, p)
    weight_decay = as_dtype_of(weight_decay, p)
    zero = as_dtype_of(0.0, p)
    probe_g = zero
    probe_p = zero
    probe_m = zero
    probe_v = zero
    for i in prange(p.size):
        wd = weight_decay if i < n_decayed else zero
        new_p, new_m, new_v = _adam_step(p[i], g[i], m[i], v[i], wd, step_size, inv_bc2_sqrt, beta1, beta2,
                                         one_minus_beta1, one_minus_beta2, eps)
        probe_g += g[i] * zero
        probe_p += new_p * zero
        probe_m += new_m * zero
        probe_v += new_v * zero
    if _record(status, probe_g, probe_p + probe_m + probe_v, step):
        for i in prange(p.size):
            wd = weight_decay if i < n_decayed else zero
            p[i], m[i], v[i] = _adam_step(p[i], g[i], m[i], v[i], wd, step_size, inv_bc2_sqrt, beta1, beta2,
                                          one_minus_beta1, one_minus_beta2, eps)


_ADAM_KERNELS = _serial_and_parallel(_adam)


def adam_update_(p, g, m, v, hyper, beta1, beta2, eps, weight_decay, n_decayed, status, clock):
    """One guarded Adam step on flat 1-D arrays p, g, m, v (torch.optim.Adam arithmetic).

    ``hyper`` holds [step_size, bias_correction2_sqrt] = [lr / (1 - b1^t),
    sqrt(1 - b2^t)]; wd applies to the first ``n_decayed`` entries. Nothing is
    written when status is set or any gradient or new value is NaN/Inf.
    """
    serial, parallel = _ADAM_KERNELS
    (parallel if p.size >= PARALLEL_THRESHOLD else serial)(
        p, g, m, v, hyper, beta1, beta2, eps, weight_decay, n_decayed, status, clock)


_rmsprop_step = numba.njit(inline="always")(scalar_math.rmsprop_step)


def _rmsprop(p, g, v, hyper, rho, eps, weight_decay, n_decayed, status, clock):
    """d = g + wd p; v = rho v + (1 - rho) d^2; p -= lr d / (sqrt(v) + eps), lr = hyper[0]."""
    if status[0] != 0:
        return
    step = clock[0]
    one_minus_rho = as_dtype_of(1.0 - rho, p)
    lr = as_dtype_of(hyper[0], p)
    rho = as_dtype_of(rho, p)
    eps = as_dtype_of(eps, p)
    weight_decay = as_dtype_of(weight_decay, p)
    zero = as_dtype_of(0.0, p)
    probe_g = zero
    probe_p = zero
    probe_v = zero
    for i in prange(p.size):
        wd = weight_decay if i < n_decayed else zero
        new_p, new_v = _rmsprop_step(p[i], g[i], v[i], wd, lr, rho, one_minus_rho, eps)
        probe_g += g[i] * zero
        probe_p += new_p * zero
        probe_v += new_v * zero
    if _record(status, probe_g, probe_p + probe_v, step):
        for i in prange(p.size):
            wd = weight_decay if i < n_decayed else zero
            p[i], v[i] = _rmsprop_step(p[i], g[i], v[i], wd, lr, rho, one_minus_rho, eps)


_RMSPROP_KERNELS = _serial_and_parallel(_rmsprop)


def rmsprop_update_(p, g, v, hyper, rho, eps, weight_decay, n_decayed, status, clock):
    """One guarded RMSprop step (torch.optim.RMSprop, no momentum, not centered) on flat 1-D arrays p, g, v;
    lr = hyper[0]."""
    serial, parallel = _RMSPROP_KERNELS
    (parallel if p.size >= PARALLEL_THRESHOLD else serial)(
        p, g, v, hyper, rho, eps, weight_decay, n_decayed, status, clock)


# --------------------------------------------------------------------------
# Weight-gradient GEMM
# --------------------------------------------------------------------------

def weight_gradient_(x, delta, out, scale=None):
    """``out = alpha * x^T @ delta + beta * out``; x (B, fan_in), delta (B, fan_out), out (fan_in, fan_out).

    ``[alpha, beta] = scale`` (read on the host: free on the CPU), or 1 and 0
    when scale is None. With ``out`` the weights, ``alpha = -lr`` and ``beta = 1 - lr * wd`` this is
    a whole plain-SGD update of W in one BLAS call. Calls the CBLAS of ``gpubp.kernels.blas`` directly
    when there is one (about 1 us of call overhead, no temporary); otherwise ``matmul`` (plus, for
    alpha != 1 or beta != 0, a temporary).
    """
    alpha, beta = (1.0, 0.0) if scale is None else (float(scale[0]), float(scale[1]))
    if blas.gemm_at_b_(x, delta, out, alpha, beta):
        return
    if alpha == 1.0 and beta == 0.0:
        np.matmul(x.T, delta, out=out)
        return
    product = np.matmul(x.T, delta)
    out *= out.dtype.type(beta)
    product *= product.dtype.type(alpha)
    out += product


def scratch_bytes(batch_sizes, n_outputs, n_params):
    """Memory the CPU kernels allocate for steps of these shapes: none (they work in the arrays given)."""
    return 0


def set_matmul_precision(precision):
    """Accepts every precision of the contract; the CPU's BLAS has no reduced-precision mode, so its
    GEMMs stay "highest" (see :func:`matmul_precision`)."""
    check_matmul_precision(precision)


def matmul_precision():
    """The precision of this device's float32 GEMMs: always ``"highest"`` on the CPU."""
    return "highest"


def linear_(x, W, out):
    """``out = x @ W``; x (B, fan_in), W (fan_in, fan_out), out (B, fan_out) (oneMKL's CBLAS when it serves
    every GEMM, see ``gpubp.kernels.blas``; else ``matmul``)."""
    if blas.SERVES_ALL_GEMMS and blas.gemm_(x, W, out):
        return
    np.matmul(x, W, out=out)


def gather_rows_(source, rows, cursor, out):
    """``out[i] = source[rows[cursor[0] + i]]``; rows int64 in range (NumPy's ``take``, which checks them)."""
    start = cursor[0]
    np.take(source, rows[start:start + out.shape[0]], axis=0, out=out)


def store_at_(value, out, cursor):
    """``out[cursor[1]] = value[0]``."""
    out[cursor[1]] = value[0]


def copy_(source, out):
    """``out[...] = source`` (same shape and dtype)."""
    np.copyto(out, source)


# --------------------------------------------------------------------------
# Bias gradient
# --------------------------------------------------------------------------

@numba.njit(**_JIT_OPTIONS)
def _column_sums(a, out):
    batch, width = a.shape
    out[:] = 0
    full = batch - batch % 8
    # eight rows per pass over out: an eighth of the stores, and a small sum tree
    for i in range(0, full, 8):
        for j in range(width):
            out[j] += (((a[i, j] + a[i + 1, j]) + (a[i + 2, j] + a[i + 3, j]))
                       + ((a[i + 4, j] + a[i + 5, j]) + (a[i + 6, j] + a[i + 7, j])))
    for i in range(full, batch):
        for j in range(width):
            out[j] += a[i, j]


def bias_gradient_(delta, out):
    """``out = sum_b delta[b]``: the bias gradient, delta (B, n) -> out (n,).

    Serial only: it reads delta once at memory speed (5x to 13x faster than
    ``numpy.sum(axis=0)`` for (8192, 64) and (8192, 10) float32 on a 2-core
    AMD EPYC) and sits between two GEMMs, where threads would fight OpenBLAS's.
    """
    _column_sums(delta, out)


# --------------------------------------------------------------------------
# Input-gradient GEMM
# --------------------------------------------------------------------------

_per_thread = threading.local()  # transposed-product buffers, one set per thread


def transposed_input_gradient_is_faster(batch, fan_in, fan_out):
    """Whether ``(W delta^T)^T`` beats ``delta W^T`` for this shape.

    OpenBLAS splits a GEMM with only a few dozen rows poorly between its
    threads; the same product computed as ``W delta^T`` (a (fan_in, B) result)
    and transposed back runs 1.2x to 2x faster for small batches and wide
    layers (measured with OpenBLAS 0.3.31's SkylakeX kernels on a 2-core AMD
    EPYC, where the two cross near 128 rows).
    """
    narrow = min(fan_in, fan_out)
    return (batch <= 32 and narrow >= 256) or (batch <= 64 and narrow >= 512)


def input_gradient_(delta, W, out):
    """``out = delta @ W^T``; delta (B, fan_out), W (fan_in, fan_out), out (B, fan_in).

    For small batches of wide layers the product is taken in the transposed
    layout, into a buffer cached per shape and thread (allocated on first use
    only, at most 64 x fan_in values), and copied back transposed.
    """
    if blas.SERVES_ALL_GEMMS and blas.gemm_(delta, W, out, trans_b=True):
        return
    batch, fan_in = out.shape
    if not transposed_input_gradient_is_faster(batch, fan_in, W.shape[1]):
        np.matmul(delta, W.T, out=out)
        return
    buffers = getattr(_per_thread, "buffers", None)
    if buffers is None:
        buffers = _per_thread.buffers = {}
    key = (fan_in, batch, out.dtype)
    product = buffers.get(key)
    if product is None:
        product = buffers[key] = np.empty((fan_in, batch), out.dtype)
    np.matmul(W, delta.T, out=product)
    np.copyto(out, product.T)

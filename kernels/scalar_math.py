"""Scalar formulas shared by the CPU (``numba.njit``) and GPU (``numba.cuda.jit``) kernels.

Each function is plain Python on scalars, written once; ``gpubp.kernels.cpu``
compiles it with ``numba.njit(inline="always")`` and ``gpubp.kernels.cuda``
with ``numba.cuda.jit(device=True, inline=True)`` (Numba's CUDA simulator runs
it as Python). No literals appear in them: the caller passes constants such as
``one`` already cast to the array dtype, so float32 kernels stay float32. The row functions of the
weighted losses at the end are the exception: they compute in float64 and store into the gradient.
"""

from math import erfc, exp, expm1, log, log1p, pi, sqrt

import numpy as np

#: The constants of the GELUs, for the callers to cast: ``a`` and ``b`` of :func:`gelu_gate_input` (the
#: tanh approximation's sqrt(2/pi) (x + 0.044715 x^3), doubled), and -1/sqrt(2), 1/sqrt(2 pi) of the exact form.
GELU_GATE_A = 2.0 * sqrt(2.0 / pi)
GELU_GATE_B = 0.044715 * GELU_GATE_A
MINUS_SQRT_HALF = -sqrt(0.5)
INV_SQRT_2PI = 1.0 / sqrt(2.0 * pi)


def sigmoid_backward(dy, y, one):
    """dL/dz of the logistic function, from its output y: dy * y (1 - y)."""
    return dy * (y * (one - y))


def tanh_backward(dy, y, one):
    """dL/dz of tanh, from its output y: dy * (1 - y^2)."""
    return dy * (one - y * y)


def relu_backward(dy, y, zero):
    """dL/dz of ReLU, from its output y: dy where y > 0, else 0 (a select: 0 even for a NaN dy)."""
    return dy if y > zero else zero


def leaky_relu(x, slope, zero):
    """x if x > 0 else slope x (PyTorch's LeakyReLU); NaN stays NaN."""
    return x if x > zero else x * slope


def leaky_relu_backward(dy, y, slope, zero):
    """dL/dz of leaky ReLU, from its output y (slope > 0: y > 0 exactly where z > 0): dy or dy slope."""
    return dy if y > zero else dy * slope


def elu(x, alpha, zero):
    """x if x > 0 else alpha (exp(x) - 1) (PyTorch's ELU); NaN stays NaN."""
    return x if x > zero else alpha * expm1(x)


def elu_backward(dy, y, alpha, zero):
    """dL/dz of ELU, from its output y (alpha > 0): dy if y > 0, else dy alpha exp(z) = dy (y + alpha)."""
    return dy if y > zero else dy * (y + alpha)


def softplus(x, zero):
    """log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|)); NaN stays NaN."""
    return (x if x > zero else zero) + log1p(exp(-abs(x)))


def softplus_backward(dy, y):
    """dL/dz of softplus, from its output y: dy sigmoid(z) = dy (1 - exp(-y)), as -expm1(-y) (exact for small y)."""
    return dy * -expm1(-y)


def gelu_gate_input(x, a, b):
    """u = x (a + b x^2), with a = 2 sqrt(2/pi) and b = 0.044715 a: the tanh-approximated GELU is
    0.5 x (1 + tanh(u / 2)) = x sigmoid(u), and its derivative uses du/dx = a + 3 b x^2."""
    return x * (a + b * x * x)


def gated(x, s):
    """x s: SiLU with s = sigmoid(x), the tanh-approximated GELU with s = sigmoid(gelu_gate_input(x))."""
    return x * s


def sigmoid_pair(u, e, one, zero):
    """(sigmoid(u), 1 - sigmoid(u)) from e = exp(-|u|), both to full relative accuracy (1 - s formed as a
    difference would lose it where s is near 1)."""
    r = one / (one + e)
    return (r, e * r) if u >= zero else (e * r, r)


def gated_backward(dy, x, s, s_complement, du_dx, one):
    """dL/dz of x sigmoid(u(x)) from z = x, s = sigmoid(u) and s_complement = 1 - s: dy s (1 + x (1 - s) du/dx)
    (SiLU: du/dx = 1; tanh-approximated GELU: a + 3 b x^2, see :func:`gelu_gate_input`)."""
    return dy * (s * (one + x * s_complement * du_dx))


def gelu_exact(x, half, minus_sqrt_half):
    """x Phi(x) = x erfc(-x / sqrt(2)) / 2 (PyTorch's exact GELU; erfc keeps accuracy for x < 0)."""
    return half * x * erfc(minus_sqrt_half * x)


def gelu_exact_backward(dy, x, half, minus_sqrt_half, inv_sqrt_2pi):
    """dL/dz of the exact GELU from z = x: dy (Phi(x) + x phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)."""
    return dy * (half * erfc(minus_sqrt_half * x) + x * inv_sqrt_2pi * exp(-half * x * x))


def clip(v, limit):
    """v clipped to [-limit, limit]; NaN stays NaN."""
    return limit if v > limit else (-limit if v < -limit else v)


def sgd_step(p, g, wd, lr):
    """Plain SGD: the new parameter p - lr (g + wd p)."""
    return p - lr * (g + wd * p)


def momentum_step(p, g, v, wd, lr, momentum, nesterov):
    """SGD with (Nesterov) momentum, PyTorch convention: returns (new p, new v)."""
    d = g + wd * p
    velocity = momentum * v + d
    return p - lr * (d + momentum * velocity if nesterov else velocity), velocity


def adam_step(p, g, m, v, wd, step_size, inv_bc2_sqrt, beta1, beta2, one_minus_beta1, one_minus_beta2, eps):
    """Adam (torch.optim.Adam arithmetic): returns (new p, new m, new v)."""
    d = g + wd * p
    first = beta1 * m + one_minus_beta1 * d
    second = beta2 * v + one_minus_beta2 * d * d
    return p - step_size * first / (sqrt(second) * inv_bc2_sqrt + eps), first, second


def rmsprop_step(p, g, v, wd, lr, rho, one_minus_rho, eps):
    """RMSprop (no momentum, not centered): returns (new p, new v)."""
    d = g + wd * p
    mean_square = rho * v + one_minus_rho * d * d
    return p - lr * d / (sqrt(mean_square) + eps), mean_square


def weighted_label_row(logits, labels, grad, r, scale, smoothing):
    """Row r of a weighted softmax cross-entropy: ``grad[r] = scale (softmax(z_r) - q_r)``, q the one-hot of
    ``labels[r]`` smoothed by eps = ``smoothing`` ((1 - eps) onehot + eps / K); returns the row's loss
    ``-sum_k q_k log softmax(z_r)_k`` in float64, NaN for a label outside [0, K) (then only column 0 is
    taken as the label, never read out of bounds). ``scale`` (float64) is the row's weight over B."""
    width = logits.shape[1]
    label = labels[r]
    valid = label >= 0 and label < width
    safe = label if valid else 0
    row_max = np.float64(logits[r, 0])
    for k in range(1, width):
        row_max = max(row_max, np.float64(logits[r, k]))
    total = np.float64(0)
    row_sum = np.float64(0)
    for k in range(width):
        total += exp(np.float64(logits[r, k]) - row_max)
        row_sum += np.float64(logits[r, k])
    off = smoothing / width
    for k in range(width):
        p = exp(np.float64(logits[r, k]) - row_max) / total
        q = off + (1 - smoothing if k == safe else 0)
        grad[r, k] = scale * (p - q)
    margin = (1 - smoothing) * (row_max - np.float64(logits[r, safe])) + smoothing * (row_max - row_sum / width)
    return log(total) + margin if valid else np.float64(np.nan)


#: The losses :func:`weighted_value_row` computes, by number.
VALUE_LOSSES = {"binary_cross_entropy": 0, "mse": 1, "huber": 2, "mae": 3}


def weighted_value_row(kind, outputs, targets, grad, r, scale, delta):
    """Row r of a weighted element-wise loss (``kind`` of :data:`VALUE_LOSSES`): ``grad[r, k] = scale g_k``
    with g the unweighted per-element derivative (sigmoid(z) - t, o - t, clip(o - t, -delta, delta),
    sign(o - t)); returns the sum over the row of the loss terms in float64 (max(z, 0) - z t +
    log(1 + exp(-|z|)), (o - t)^2 / 2, the Huber term, |o - t|)."""
    acc = np.float64(0)
    for k in range(outputs.shape[1]):
        o, t = np.float64(outputs[r, k]), np.float64(targets[r, k])
        d = o - t
        if kind == 0:
            e = exp(-abs(o))
            s = 1 / (1 + e) if o >= 0 else e / (1 + e)
            g = s - t
            term = max(o, 0) - o * t + log1p(e)
        elif kind == 1:
            g = d
            term = d * d / 2
        elif kind == 2:
            g = min(max(d, -delta), delta) if d == d else d
            term = d * d / 2 if abs(d) <= delta else delta * (abs(d) - delta / 2)
        else:
            g = np.float64(1) if d > 0 else (np.float64(-1) if d < 0 else (np.float64(0) if d == 0 else d))
            term = abs(d)
        grad[r, k] = scale * g
        acc += term
    return acc

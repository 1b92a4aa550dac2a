"""Scalar formulas shared by the CPU (``numba.njit``) and GPU (``numba.cuda.jit``) kernels.

Each function is plain Python on scalars, written once; ``gpubp.kernels.cpu``
compiles it with ``numba.njit(inline="always")`` and ``gpubp.kernels.cuda``
with ``numba.cuda.jit(device=True, inline=True)`` (Numba's CUDA simulator runs
it as Python). No literals appear in them: the caller passes constants such as
``one`` already cast to the array dtype, so float32 kernels stay float32.
"""

from math import sqrt


def sigmoid_backward(dy, y, one):
    """dL/dz of the logistic function, from its output y: dy * y (1 - y)."""
    return dy * (y * (one - y))


def tanh_backward(dy, y, one):
    """dL/dz of tanh, from its output y: dy * (1 - y^2)."""
    return dy * (one - y * y)


def relu_backward(dy, y, zero):
    """dL/dz of ReLU, from its output y: dy where y > 0, else 0 (a select: 0 even for a NaN dy)."""
    return dy if y > zero else zero


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

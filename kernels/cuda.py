"""Fused, in-place CUDA kernels for CuPy arrays.

The same functions, with the same signatures, as ``gpubp.kernels.cpu``:
elementwise work is a CuPy ``ElementwiseKernel`` (one launch, one pass, the
math written as a line of C where it is used, Chainer style); row-wise softmax
work is a ``RawKernel`` with one thread per row. Losses are returned as 0-d
device arrays so the training step never waits for the host; scratch buffers
for per-row or per-element losses are cached per shape, so steady-state steps
allocate nothing beyond CuPy's pooled scalar results.
"""

import cupy as cp
import numpy as np

ACTIVATIONS = ("linear", "sigmoid", "tanh", "relu")

# --------------------------------------------------------------------------- activations
_ACTIVATION_FORWARD = {
    "linear": "z = t;",
    "sigmoid": "z = (T)1 / ((T)1 + exp(-t));",  # exp(-t) = inf for t << 0 gives exactly 0, never NaN
    "tanh": "z = tanh(t);",
    "relu": "z = t < (T)0 ? (T)0 : t;",  # NaN stays NaN
}
# out = d * f'(z), f' written with the forward output y ("OUT" is d or y, the array written)
_ACTIVATION_BACKWARD = {
    "sigmoid": "OUT = d * (y * ((T)1 - y));",
    "tanh": "OUT = d * ((T)1 - y * y);",
    "relu": "OUT = y > (T)0 ? d : (T)0;",
}
_bias_activation = {
    name: cp.ElementwiseKernel("raw T b, int64 n", "T z", "T t = z + b[i % n]; " + body,
                               f"gpubp_bias_{name}")
    for name, body in _ACTIVATION_FORWARD.items()
}
# two in-place forms, so that no kernel reads and writes one array through two parameters
_activation_backward_into_delta = {
    name: cp.ElementwiseKernel("T y", "T d", body.replace("OUT", "d"), f"gpubp_{name}_backward")
    for name, body in _ACTIVATION_BACKWARD.items()
}
_activation_backward_into_y = {
    name: cp.ElementwiseKernel("T d", "T y", body.replace("OUT", "y"), f"gpubp_{name}_backward_over_y")
    for name, body in _ACTIVATION_BACKWARD.items()
}
_sigmoid = cp.ElementwiseKernel("", "T x", "x = (T)1 / ((T)1 + exp(-x));", "gpubp_sigmoid_inplace")


def bias_activation_(z, b, activation):
    """In place: ``z = f(z + b)``; z (B, n), b (n,)."""
    _bias_activation[activation](b, z.shape[1], z)
    return z


def activation_backward_(delta, y, activation, out=None):
    """``out = delta * f'(z)`` written with the output y; out defaults to delta and may be y."""
    if out is None:
        out = delta
    if activation == "linear":
        if out is not delta:
            cp.copyto(out, delta)
        return out
    if out is y:
        _activation_backward_into_y[activation](delta, y)
        return y
    if out is not delta:
        cp.copyto(out, delta)
    _activation_backward_into_delta[activation](y, out)
    return out


def sigmoid_(x):
    """In place logistic function."""
    _sigmoid(x)
    return x


# --------------------------------------------------------------------------- row-wise softmax
_SOFTMAX_SOURCE = r"""
template <typename T>
__device__ T row_max(const T* z, int K) {
    T m = z[0];
    for (int k = 1; k < K; ++k) m = z[k] > m ? z[k] : m;
    return m;
}

template <typename T>
__global__ void softmax_xent(const T* logits, const long long* labels, T* grad, double* row_loss,
                             long long B, int K) {
    long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= B) return;
    const T* z = logits + r * K;
    T* g = grad + r * K;
    T m = row_max(z, K);
    T s = 0;
    for (int k = 0; k < K; ++k) { T e = exp(z[k] - m); g[k] = e; s += e; }
    T scale = (T)1 / (s * (T)B);
    for (int k = 0; k < K; ++k) g[k] *= scale;
    long long t = labels[r];
    g[t] -= (T)1 / (T)B;
    row_loss[r] = log((double)s) - (double)(z[t] - m);
}

template <typename T>
__global__ void softmax_inplace(T* x, long long B, int K) {
    long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= B) return;
    T* z = x + r * K;
    T m = row_max(z, K);
    T s = 0;
    for (int k = 0; k < K; ++k) { T e = exp(z[k] - m); z[k] = e; s += e; }
    T inv = (T)1 / s;
    for (int k = 0; k < K; ++k) z[k] *= inv;
}
"""
_softmax_module = cp.RawModule(
    code=_SOFTMAX_SOURCE, options=("-std=c++14",),
    name_expressions=[f"{fn}<{t}>" for fn in ("softmax_xent", "softmax_inplace") for t in ("float", "double")],
)
_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_THREADS = 128
_scratch_cache = {}


def _scratch(shape, dtype):
    """A cached device buffer of ``shape``/``dtype`` (allocated on first use only)."""
    key = (cp.cuda.Device().id, tuple(shape), np.dtype(dtype))
    buf = _scratch_cache.get(key)
    if buf is None:
        buf = _scratch_cache[key] = cp.empty(shape, dtype=dtype)
    return buf


def _launch(name, dtype, rows, args):
    kernel = _softmax_module.get_function(f"{name}<{_CTYPE[np.dtype(dtype)]}>")
    kernel(((rows + _THREADS - 1) // _THREADS,), (_THREADS,), args)


def softmax_cross_entropy(logits, labels, grad):
    """Mean softmax cross-entropy of logits (B, K) against int64 labels (B,); writes
    ``grad = (softmax - onehot) / B``; returns the loss as a 0-d float64 device array."""
    B, K = logits.shape
    row_loss = _scratch((B,), np.float64)
    _launch("softmax_xent", logits.dtype, B, (logits, labels.astype(np.int64, copy=False), grad, row_loss,
                                              np.int64(B), np.int32(K)))
    return row_loss.mean()


def softmax_(x):
    """In place, numerically stable row softmax of (B, K)."""
    B, K = x.shape
    _launch("softmax_inplace", x.dtype, B, (x, np.int64(B), np.int32(K)))
    return x


# --------------------------------------------------------------------------- elementwise losses
_bce = cp.ElementwiseKernel(
    "T z, T t, T inv_n", "T g, float64 l",
    "T e = exp(-fabs(z)); T s = z >= (T)0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e);"
    "g = (s - t) * inv_n; l = (double)(z > (T)0 ? z : (T)0) - (double)z * (double)t + log1p((double)e);",
    "gpubp_bce")
_mse = cp.ElementwiseKernel(
    "T o, T t, T inv_b", "T g, float64 l",
    "T d = o - t; g = d * inv_b; l = (double)d * (double)d;",
    "gpubp_mse")


def binary_cross_entropy(logits, targets, grad):
    """Mean stable BCE-with-logits over all B*K elements; ``grad = (sigmoid(z) - t) / (B K)``."""
    losses = _scratch(logits.shape, np.float64)
    _bce(logits, targets, logits.dtype.type(1.0 / logits.size), grad, losses)
    return losses.mean()


def mse(outputs, targets, grad):
    """``1/(2B) sum (o - t)^2``; ``grad = (o - t) / B``."""
    B = outputs.shape[0]
    losses = _scratch(outputs.shape, np.float64)
    _mse(outputs, targets, outputs.dtype.type(1.0 / B), grad, losses)
    return losses.sum() / (2.0 * B)


# --------------------------------------------------------------------------- optimizer updates
_sgd_plain = cp.ElementwiseKernel("T g, T lr, T wd", "T p", "p -= lr * (g + wd * p);", "gpubp_sgd")
_sgd_momentum = cp.ElementwiseKernel(
    "T g, T lr, T mu, T wd, bool nesterov", "T p, T v",
    "T d = g + wd * p; v = mu * v + d; p -= lr * (nesterov ? d + mu * v : v);",
    "gpubp_sgd_momentum")
_adam = cp.ElementwiseKernel(
    "T g, T step_size, T bc2_sqrt, T b1, T b2, T eps, T wd", "T p, T m, T v",
    "T d = g + wd * p; m = b1 * m + ((T)1 - b1) * d; v = b2 * v + ((T)1 - b2) * d * d;"
    "p -= step_size * m / (sqrt(v) / bc2_sqrt + eps);",
    "gpubp_adam")
_rmsprop = cp.ElementwiseKernel(
    "T g, T lr, T rho, T eps, T wd", "T p, T v",
    "T d = g + wd * p; v = rho * v + ((T)1 - rho) * d * d; p -= lr * d / (sqrt(v) + eps);",
    "gpubp_rmsprop")


def sgd_update_(p, g, v, lr, momentum, nesterov, weight_decay):
    """SGD with optional (Nesterov) momentum, PyTorch convention, in place on p and v."""
    T = p.dtype.type
    if momentum == 0:
        _sgd_plain(g, T(lr), T(weight_decay), p)
    else:
        _sgd_momentum(g, T(lr), T(momentum), T(weight_decay), bool(nesterov), p, v)


def adam_update_(p, g, m, v, step_size, bias_correction2_sqrt, beta1, beta2, eps, weight_decay):
    """Adam, ``torch.optim.Adam`` arithmetic, in place on p, m and v."""
    T = p.dtype.type
    _adam(g, T(step_size), T(bias_correction2_sqrt), T(beta1), T(beta2), T(eps), T(weight_decay), p, m, v)


def rmsprop_update_(p, g, v, lr, rho, eps, weight_decay):
    """RMSprop, in place on p and v."""
    T = p.dtype.type
    _rmsprop(g, T(lr), T(rho), T(eps), T(weight_decay), p, v)


# --------------------------------------------------------------------------- weight-gradient GEMM
def weight_gradient_(x, delta, out, alpha=1.0, beta=0.0):
    """``out = alpha * x^T @ delta + beta * out`` in one cuBLAS call (fused SGD when out is W)."""
    from cupy import cublas

    return cublas.gemm("T", "N", x, delta, out=out, alpha=alpha, beta=beta)


def input_gradient_(delta, W, out):
    """``out = delta @ W^T``; delta (B, fan_out), W (fan_in, fan_out), out (B, fan_in)."""
    return cp.matmul(delta, W.T, out=out)


def bias_gradient_(delta, out):
    """``out = sum_b delta[b]``: the bias gradient, delta (B, n) -> out (n,)."""
    return cp.sum(delta, axis=0, out=out)

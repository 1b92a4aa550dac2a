"""Fused, in-place CUDA kernels for CuPy arrays: the :mod:`gpubp.kernels.contract` on a GPU.

The same functions, with the same arguments, as ``gpubp.kernels.cpu``.
Elementwise work is a CuPy ``ElementwiseKernel`` (one launch, one pass, the
math written as a line of C where it is used, Chainer style); row-wise softmax
work and the guarded optimizer updates are templates of one ``RawModule``.
Nothing here reads a device value on the host: losses land in a (1,) device
array and divergence in the device ``status`` record. Scratch buffers are
cached per shape, so steady-state steps allocate nothing.
"""

import cupy as cp
import numpy as np

from .contract import STATUS_GRADIENT, STATUS_UPDATE, unknown_activation

__all__ = [
    "bias_activation_", "activation_backward_", "sigmoid_", "softmax_", "softmax_cross_entropy",
    "binary_cross_entropy", "mse", "check_finite_", "restore_if_diverged_", "clip_by_value_", "clip_by_norm_", "sgd_update_",
    "adam_update_", "rmsprop_update_", "weight_gradient_", "input_gradient_", "bias_gradient_",
]

# --------------------------------------------------------------------------- activations
_ACTIVATION_FORWARD = {
    "linear": "z = t;",
    "sigmoid": "z = (T)1 / ((T)1 + exp(-t));",  # exp(-t) = inf for t << 0 gives exactly 0, never NaN
    "tanh": "z = tanh(t);",
    "relu": "z = t < (T)0 ? (T)0 : t;",  # NaN stays NaN
}
# y = dy * f'(z), f' written with the forward output y
_ACTIVATION_BACKWARD = {
    "linear": "y = d;",
    "sigmoid": "y = d * (y * ((T)1 - y));",
    "tanh": "y = d * ((T)1 - y * y);",
    "relu": "y = y > (T)0 ? d : (T)0;",
}
_bias_activation = {
    name: cp.ElementwiseKernel("raw T b, int64 n", "T z", "T t = z + b[i % n]; " + body, f"gpubp_bias_{name}")
    for name, body in _ACTIVATION_FORWARD.items()
}
_activation_backward = {
    name: cp.ElementwiseKernel("T d", "T y", body, f"gpubp_{name}_backward")
    for name, body in _ACTIVATION_BACKWARD.items()
}
_sigmoid = cp.ElementwiseKernel("", "T x", "x = (T)1 / ((T)1 + exp(-x));", "gpubp_sigmoid_inplace")


def _lookup(kernels, activation):
    try:
        return kernels[activation]
    except KeyError:
        raise unknown_activation(activation) from None


def bias_activation_(z, b, activation):
    """In place: ``z = f(z + b)``; z (B, n), b (n,)."""
    _lookup(_bias_activation, activation)(b, z.shape[1], z)


def activation_backward_(dy, y, activation):
    """In place: ``y = dy * f'(z)`` written with the output y."""
    _lookup(_activation_backward, activation)(dy, y)


def sigmoid_(x):
    """In place logistic function."""
    _sigmoid(x)


# --------------------------------------------------------------------------- raw kernels
_SOURCE = r"""
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
    bool valid = t >= 0 && t < K;
    long long safe = valid ? t : 0;
    g[safe] -= (T)1 / (T)B;
    row_loss[r] = valid ? log((double)s) - (double)(z[safe] - m) : nan("");
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

template <typename T>
__global__ void check_finite(const T* values, long long n, long long* status, long long code, long long step) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || status[0] != 0) return;
    if (!isfinite(values[i])) {
        if (atomicCAS((unsigned long long*)&status[0], 0ULL, (unsigned long long)code) == 0ULL) status[1] = step;
    }
}

// The guarded updates run as two launches over the flat buffers: "check" computes
// every new value and stamps step + 1 into status[2] (gradient) or status[3] (new
// value) where one is not finite; "apply" recomputes and writes only when status
// is clear and neither stamp holds this step, and its thread 0 records a failure.
#define GUARD_CHECK(NEW_FINITE)                                                       \
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;                   \
    if (i >= n || status[0] != 0) return;                                              \
    if (!isfinite(g[i])) status[2] = step + 1;                                         \
    else if (!(NEW_FINITE)) status[3] = step + 1;

#define GUARD_APPLY_BEGIN                                                              \
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;                   \
    bool bad = status[2] == step + 1 || status[3] == step + 1;                         \
    if (i == 0 && status[0] == 0 && bad) {                                             \
        status[0] = status[2] == step + 1 ? GRADIENT : UPDATE; status[1] = step; }     \
    if (i >= n || bad || status[0] != 0) return;

template <typename T>
__device__ void adam_values(T p, T g, T m, T v, T wd, T step_size, T bc2_sqrt, T b1, T b2, T eps,
                            T* new_p, T* new_m, T* new_v) {
    T d = g + wd * p;
    *new_m = b1 * m + ((T)1 - b1) * d;
    *new_v = b2 * v + ((T)1 - b2) * d * d;
    *new_p = p - step_size * *new_m / (sqrt(*new_v) / bc2_sqrt + eps);
}

template <typename T>
__global__ void adam_check(const T* p, const T* g, const T* m, const T* v, T step_size, T bc2_sqrt, T b1, T b2,
                           T eps, T weight_decay, long long n_decayed, long long n, long long* status,
                           long long step) {
    T np_, nm, nv;
    T wd = (long long)blockIdx.x * blockDim.x + threadIdx.x < n_decayed ? weight_decay : (T)0;
    long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (j < n) adam_values(p[j], g[j], m[j], v[j], wd, step_size, bc2_sqrt, b1, b2, eps, &np_, &nm, &nv);
    GUARD_CHECK(isfinite(np_) && isfinite(nm) && isfinite(nv))
}

template <typename T>
__global__ void adam_apply(T* p, const T* g, T* m, T* v, T step_size, T bc2_sqrt, T b1, T b2, T eps,
                           T weight_decay, long long n_decayed, long long n, long long* status,
                           long long step) {
    GUARD_APPLY_BEGIN
    T wd = i < n_decayed ? weight_decay : (T)0;
    adam_values(p[i], g[i], m[i], v[i], wd, step_size, bc2_sqrt, b1, b2, eps, &p[i], &m[i], &v[i]);
}

template <typename T>
__device__ void rmsprop_values(T p, T g, T v, T wd, T lr, T rho, T eps, T* new_p, T* new_v) {
    T d = g + wd * p;
    *new_v = rho * v + ((T)1 - rho) * d * d;
    *new_p = p - lr * d / (sqrt(*new_v) + eps);
}

template <typename T>
__global__ void rmsprop_check(const T* p, const T* g, const T* v, T lr, T rho, T eps, T weight_decay,
                              long long n_decayed, long long n, long long* status,
                              long long step) {
    T np_, nv;
    long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (j < n) rmsprop_values(p[j], g[j], v[j], j < n_decayed ? weight_decay : (T)0, lr, rho, eps, &np_, &nv);
    GUARD_CHECK(isfinite(np_) && isfinite(nv))
}

template <typename T>
__global__ void rmsprop_apply(T* p, const T* g, T* v, T lr, T rho, T eps, T weight_decay, long long n_decayed,
                              long long n, long long* status, long long step) {
    GUARD_APPLY_BEGIN
    rmsprop_values(p[i], g[i], v[i], i < n_decayed ? weight_decay : (T)0, lr, rho, eps, &p[i], &v[i]);
}

template <typename T>
__device__ void sgd_values(T p, T g, T v, T wd, T lr, T mu, bool nesterov, T* new_p, T* new_v) {
    T d = g + wd * p;
    if (mu == (T)0) { *new_p = p - lr * d; *new_v = v; return; }
    T velocity = mu * v + d;
    *new_v = velocity;
    *new_p = p - lr * (nesterov ? d + mu * velocity : velocity);
}

template <typename T>
__global__ void sgd_check(const T* p, const T* g, const T* v, T lr, T mu, bool nesterov, T weight_decay,
                          long long n_decayed, long long n, long long* status, long long step) {
    T np_, nv;
    long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (j < n) sgd_values(p[j], g[j], v[j], j < n_decayed ? weight_decay : (T)0, lr, mu, nesterov,
                          &np_, &nv);
    GUARD_CHECK(isfinite(np_) && isfinite(nv))
}

template <typename T>
__global__ void sgd_apply(T* p, const T* g, T* v, T lr, T mu, bool nesterov, T weight_decay, long long n_decayed,
                          long long n, long long* status, long long step) {
    GUARD_APPLY_BEGIN
    T nv;
    sgd_values(p[i], g[i], v[i], i < n_decayed ? weight_decay : (T)0, lr, mu, nesterov, &p[i], &nv);
    if (mu != (T)0) v[i] = nv;
}
"""
_TEMPLATES = ("softmax_xent", "softmax_inplace", "check_finite", "adam_check", "adam_apply", "rmsprop_check",
              "rmsprop_apply", "sgd_check", "sgd_apply")
_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_module = cp.RawModule(
    code=f"#define GRADIENT {STATUS_GRADIENT}LL\n#define UPDATE {STATUS_UPDATE}LL\n" + _SOURCE,
    options=("-std=c++14",),
    name_expressions=[f"{fn}<{t}>" for fn in _TEMPLATES for t in _CTYPE.values()],
)
_THREADS = 256
_functions = {}
_scratch_cache = {}


def _scratch(shape, dtype):
    """A cached device buffer of ``shape``/``dtype`` (allocated on first use only)."""
    key = (cp.cuda.Device().id, tuple(shape), np.dtype(dtype))
    buf = _scratch_cache.get(key)
    if buf is None:
        buf = _scratch_cache[key] = cp.empty(shape, dtype=dtype)
    return buf


def _launch(name, dtype, n, args):
    key = (name, np.dtype(dtype))
    kernel = _functions.get(key)
    if kernel is None:
        kernel = _functions[key] = _module.get_function(f"{name}<{_CTYPE[np.dtype(dtype)]}>")
    kernel(((max(n, 1) + _THREADS - 1) // _THREADS,), (_THREADS,), args)


def softmax_cross_entropy(logits, labels, grad, loss):
    """Mean softmax cross-entropy into ``loss[0]``; ``grad = (softmax - onehot) / B``; bad labels give NaN."""
    B, K = logits.shape
    row_loss = _scratch((B,), np.float64)
    _launch("softmax_xent", logits.dtype, B, (logits, labels, grad, row_loss, np.int64(B), np.int32(K)))
    cp.mean(row_loss, out=loss.reshape(()))


def softmax_(x):
    """In place, numerically stable row softmax of (B, K)."""
    B, K = x.shape
    _launch("softmax_inplace", x.dtype, B, (x, np.int64(B), np.int32(K)))


# --------------------------------------------------------------------------- elementwise losses
_bce = cp.ElementwiseKernel(
    "T z, T t, T inv_n", "T g, float64 l",
    "T e = exp(-fabs(z)); T s = z >= (T)0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e);"
    "g = (s - t) * inv_n; l = (double)(z > (T)0 ? z : (T)0) - (double)z * (double)t + log1p((double)e);",
    "gpubp_bce")
_mse = cp.ElementwiseKernel(
    "T o, T t, T inv_b", "T g, float64 l",
    "T d = o - t; g = d * inv_b; l = (double)d * (double)d * 0.5 * (double)inv_b;",
    "gpubp_mse")


def binary_cross_entropy(logits, targets, grad, loss):
    """Mean stable BCE-with-logits into ``loss[0]``; ``grad = (sigmoid(z) - t) / (B K)``."""
    losses = _scratch(logits.shape, np.float64)
    _bce(logits, targets, logits.dtype.type(1.0 / logits.size), grad, losses)
    cp.mean(losses, out=loss.reshape(()))


def mse(outputs, targets, grad, loss):
    """``loss[0] = 1/(2B) sum (o - t)^2``; ``grad = (o - t) / B``."""
    losses = _scratch(outputs.shape, np.float64)
    _mse(outputs, targets, outputs.dtype.type(1.0 / outputs.shape[0]), grad, losses)
    cp.sum(losses, out=loss.reshape(()))


# --------------------------------------------------------------------------- status and gradient hooks
def check_finite_(values, status, code, step):
    """Record ``[code, step]`` in status when values hold NaN/Inf and status is clear."""
    _launch("check_finite", values.dtype, values.size, (values, np.int64(values.size), status, np.int64(code),
                                                        np.int64(step)))


_restore = cp.ElementwiseKernel("T backup, raw int64 status", "T p", "if (status[0] != 0) p = backup;",
                                "gpubp_restore_if_diverged")


def restore_if_diverged_(p, backup, status):
    """``p = backup`` when status records a failure (read on the device, per element)."""
    _restore(backup, status, p)


def clip_by_value_(g, limit):
    """In place: g clipped to [-limit, limit]."""
    cp.clip(g, -limit, limit, out=g)


_scale_to_norm = cp.ElementwiseKernel(
    "raw float64 sum_sq, float64 max_norm", "T g",
    "double norm = sqrt(sum_sq[0]); if (norm > max_norm) g = (T)((double)g * (max_norm / norm));",
    "gpubp_scale_to_norm")
_sum_of_squares = cp.ReductionKernel("T x", "float64 s", "(double)x * (double)x", "a + b", "s = a", "0",
                                     "gpubp_sum_of_squares")


def clip_by_norm_(g, max_norm):
    """In place: ``g *= max_norm / ||g||`` when the norm (summed in float64 on the device) exceeds max_norm."""
    sum_sq = _scratch((), np.float64)
    _sum_of_squares(g, out=sum_sq)
    _scale_to_norm(sum_sq, float(max_norm), g)


# --------------------------------------------------------------------------- guarded optimizer updates
def _guarded(name, p, arrays, scalars, n_decayed, status, step):
    T = p.dtype.type
    tail = (np.int64(n_decayed), np.int64(p.size), status, np.int64(step))
    scalars = tuple(s if isinstance(s, (bool, np.bool_)) else T(s) for s in scalars)
    _launch(name + "_check", p.dtype, p.size, arrays + scalars + tail)
    _launch(name + "_apply", p.dtype, p.size, arrays + scalars + tail)


def sgd_update_(p, g, v, lr, momentum, nesterov, weight_decay, n_decayed, status, step):
    """Guarded SGD with optional (Nesterov) momentum, PyTorch convention, in place on p and v."""
    velocity = v if momentum else g  # read but never written without momentum
    _guarded("sgd", p, (p, g, velocity), (lr, momentum, bool(nesterov), weight_decay), n_decayed, status, step)


def adam_update_(p, g, m, v, step_size, bias_correction2_sqrt, beta1, beta2, eps, weight_decay, n_decayed,
                 status, step):
    """Guarded Adam, ``torch.optim.Adam`` arithmetic, in place on p, m and v."""
    _guarded("adam", p, (p, g, m, v), (step_size, bias_correction2_sqrt, beta1, beta2, eps, weight_decay),
             n_decayed, status, step)


def rmsprop_update_(p, g, v, lr, rho, eps, weight_decay, n_decayed, status, step):
    """Guarded RMSprop, in place on p and v."""
    _guarded("rmsprop", p, (p, g, v), (lr, rho, eps, weight_decay), n_decayed, status, step)


# --------------------------------------------------------------------------- GEMMs and the bias gradient
def weight_gradient_(x, delta, out, alpha=1.0, beta=0.0):
    """``out = alpha * x^T @ delta + beta * out`` in one cuBLAS call (plain SGD when out is W)."""
    if alpha == 1.0 and beta == 0.0:
        cp.matmul(x.T, delta, out=out)
        return
    from cupy import cublas

    cublas.gemm("T", "N", x, delta, out=out, alpha=alpha, beta=beta)


def input_gradient_(delta, W, out):
    """``out = delta @ W^T``; delta (B, fan_out), W (fan_in, fan_out), out (B, fan_in)."""
    cp.matmul(delta, W.T, out=out)


def bias_gradient_(delta, out):
    """``out = sum_b delta[b]``: the bias gradient, delta (B, n) -> out (n,)."""
    cp.sum(delta, axis=0, out=out)

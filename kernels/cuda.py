"""Fused, in-place CUDA kernels written with ``numba.cuda``: the :mod:`gpubp.kernels.contract` on a GPU.

The same functions, with the same arguments, as ``gpubp.kernels.cpu``. Every
kernel is Python compiled by ``numba.cuda``, so Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) runs the very same code on the CPU in CI, with
NumPy arrays, real thread and block indexing, shared memory and bounds
checks. The optimizer and activation-derivative formulas are the ones the CPU
kernels compile (``gpubp.kernels.scalar_math``).

Where the arrays live and how GEMMs run is the runtime's business: on a GPU
``gpubp.kernels.cuda_device`` (CuPy arrays, cuBLAS on the step's stream,
CUDA graphs), under the simulator ``gpubp.kernels.cuda_simulated`` (NumPy).

Design rules, each visible below:

* nothing is read back to the host: losses are reduced on the device in a
  fixed order (deterministic, no atomics) into the (1,) float64 ``loss``;
  the divergence record is written on the device;
* per-step values come from device memory (``clock``, ``hyper``, ``scale``),
  so a captured step replays with current values;
* every loop is grid-strided, so any launch shape is correct (the simulator
  uses small blocks, a GPU large ones), and scratch buffers are made once per
  shape by the runtime, so a steady-state step allocates nothing;
* float32 kernels do float32 arithmetic (float64 only where documented: loss
  sums and the gradient norm), checked on the PTX by the test suite.
"""

import math

import numpy as np
from numba import cuda
from numba.core import config as numba_config

from . import philox, scalar_math
from .contract import (NEEDS_PRE_ACTIVATION, STATUS_GRADIENT, STATUS_UPDATE, WEIGHTED_LOSSES, activation_alpha,
                       check_matmul_precision, missing_pre_activation, unknown_activation, unknown_weighted_loss)

if numba_config.ENABLE_CUDASIM:
    from . import cuda_simulated as runtime
else:
    from . import cuda_device as runtime

__all__ = [
    "bias_activation_", "activation_backward_", "sigmoid_", "softmax_", "softmax_cross_entropy",
    "binary_cross_entropy", "mse", "huber", "mae", "weighted_loss", "dropout_", "check_finite_", "restore_if_diverged_",
    "clip_by_value_", "clip_by_norm_",
    "all_reduce_mean_", "sgd_update_", "adam_update_", "rmsprop_update_", "weight_gradient_", "linear_", "input_gradient_",
    "bias_gradient_", "gather_rows_", "store_at_", "copy_", "scratch_bytes", "set_matmul_precision", "matmul_precision",
]

#: Threads per block, and threads per row for row-wise kernels (one warp per row).
THREADS = runtime.THREADS
ROW_THREADS = runtime.ROW_THREADS
#: The bias gradient's (columns, row slices) block: a warp's width of columns, THREADS threads in all; and the
#: fewest rows each of its threads sums per chunk of rows (see :func:`bias_gradient_`).
COLUMN_BLOCK = (ROW_THREADS, THREADS // ROW_THREADS)
ROWS_PER_THREAD = 8


def _device(fn):
    return cuda.jit(device=True, inline=True)(fn)


_sigmoid_backward = _device(scalar_math.sigmoid_backward)
_tanh_backward = _device(scalar_math.tanh_backward)
_relu_backward = _device(scalar_math.relu_backward)
_leaky_relu = _device(scalar_math.leaky_relu)
_leaky_relu_backward = _device(scalar_math.leaky_relu_backward)
_elu = _device(scalar_math.elu)
_elu_backward = _device(scalar_math.elu_backward)
_softplus = _device(scalar_math.softplus)
_softplus_backward = _device(scalar_math.softplus_backward)
_gelu_gate_input = _device(scalar_math.gelu_gate_input)
_gated = _device(scalar_math.gated)
_gated_backward = _device(scalar_math.gated_backward)
_sigmoid_pair = _device(scalar_math.sigmoid_pair)
_gelu_exact = _device(scalar_math.gelu_exact)
_gelu_exact_backward = _device(scalar_math.gelu_exact_backward)
_clip = _device(scalar_math.clip)
_sgd_step = _device(scalar_math.sgd_step)
_momentum_step = _device(scalar_math.momentum_step)
_adam_step = _device(scalar_math.adam_step)
_rmsprop_step = _device(scalar_math.rmsprop_step)
_philox = _device(philox.philox4x32)
_LOW32, _SHIFT32 = philox.LOW32, philox.SHIFT32


@cuda.jit(device=True, inline=True)
def _log_or_nan(x):
    """log(x) with the GPU's IEEE results where Python's math.log raises (the simulator): -inf at 0, NaN below."""
    if x > 0.0:
        return math.log(x)
    return -math.inf if x == 0.0 else math.nan


def _blocks(n, threads=None):
    threads = threads or THREADS
    return max(1, min(runtime.MAX_BLOCKS, (n + threads - 1) // threads))


def _flat(a):
    return a.reshape(a.size)


def _launch(kernel, n, *args, threads=None):
    """``kernel`` on enough blocks of ``threads`` (a count, or an (x, y) block shape) for n threads."""
    threads = threads or THREADS
    per_block = threads if isinstance(threads, int) else math.prod(threads)
    kernel[_blocks(n, per_block), threads, runtime.stream()](*runtime.kernel_args(args))


class _DtypeKernels:
    """Every kernel of one float dtype: constants such as ``one`` are closure values of that dtype,
    so numba types them as float32 in float32 kernels."""

    def __init__(self, dtype):
        T = np.dtype(dtype).type
        one, zero, negative_infinity, not_a_number = T(1.0), T(0.0), T(-np.inf), T(np.nan)
        threads, row_threads = THREADS, ROW_THREADS

        # ------------------------------------------------------------------ activations
        @_device
        def sigmoid(x):
            # exp of -|x| only: never overflows, and gives exactly 0 or 1 at the ends
            e = math.exp(-abs(x))
            r = one / (one + e)
            return r if x >= zero else e * r

        @_device
        def relu(x):
            return zero if x < zero else x  # NaN stays NaN

        gate_a, gate_b = T(scalar_math.GELU_GATE_A), T(scalar_math.GELU_GATE_B)
        gate_3b = T(3 * scalar_math.GELU_GATE_B)
        half, minus_sqrt_half, inv_sqrt_2pi = T(0.5), T(scalar_math.MINUS_SQRT_HALF), T(scalar_math.INV_SQRT_2PI)

        # f(x, alpha), alpha the parameter of leaky_relu and elu (of the array dtype), ignored by the others
        forward = {
            "linear": _device(lambda x, alpha: x),
            "sigmoid": _device(lambda x, alpha: sigmoid(x)),
            "tanh": _device(lambda x, alpha: math.tanh(x)),
            "relu": _device(lambda x, alpha: relu(x)),
            "leaky_relu": _device(lambda x, alpha: _leaky_relu(x, alpha, zero)),
            "elu": _device(lambda x, alpha: _elu(x, alpha, zero)),
            "gelu": _device(lambda x, alpha: _gated(x, sigmoid(_gelu_gate_input(x, gate_a, gate_b)))),
            "gelu_exact": _device(lambda x, alpha: _gelu_exact(x, half, minus_sqrt_half)),
            "softplus": _device(lambda x, alpha: _softplus(x, zero)),
            "silu": _device(lambda x, alpha: _gated(x, sigmoid(x))),
        }

        def make_bias_activation(f, keeps_pre):
            @cuda.jit
            def bias_activation(z, b, alpha, pre, keep):
                """z = f(z + b); pre = z + b when keep (pre was given) for an activation that keeps it."""
                n = z.shape[1]
                start, stride = cuda.grid(1), cuda.gridsize(1)
                for i in range(start, z.size, stride):
                    r, c = i // n, i % n
                    x = z[r, c] + b[c]
                    if keeps_pre and keep:  # keeps_pre: a compile-time constant
                        pre[r, c] = x
                    z[r, c] = f(x, alpha)
            return bias_activation

        self.bias_activation = {name: make_bias_activation(f, name in NEEDS_PRE_ACTIVATION)
                                for name, f in forward.items()}

        @_device
        def silu_backward(dy, z):
            s, s_complement = _sigmoid_pair(z, math.exp(-abs(z)), one, zero)
            return _gated_backward(dy, z, s, s_complement, one, one)

        @_device
        def gelu_backward(dy, z):
            u = _gelu_gate_input(z, gate_a, gate_b)
            s, s_complement = _sigmoid_pair(u, math.exp(-abs(u)), one, zero)
            return _gated_backward(dy, z, s, s_complement, gate_a + gate_3b * z * z, one)

        # dL/dz(dy, y, z, alpha): from the output y, or from the pre-activation z for NEEDS_PRE_ACTIVATION
        derivatives = {
            "sigmoid": _device(lambda dy, y, z, alpha: _sigmoid_backward(dy, y, one)),
            "tanh": _device(lambda dy, y, z, alpha: _tanh_backward(dy, y, one)),
            "relu": _device(lambda dy, y, z, alpha: _relu_backward(dy, y, zero)),
            "leaky_relu": _device(lambda dy, y, z, alpha: _leaky_relu_backward(dy, y, alpha, zero)),
            "elu": _device(lambda dy, y, z, alpha: _elu_backward(dy, y, alpha, zero)),
            "softplus": _device(lambda dy, y, z, alpha: _softplus_backward(dy, y)),
            "gelu": _device(lambda dy, y, z, alpha: gelu_backward(dy, z)),
            "gelu_exact": _device(
                lambda dy, y, z, alpha: _gelu_exact_backward(dy, z, half, minus_sqrt_half, inv_sqrt_2pi)),
            "silu": _device(lambda dy, y, z, alpha: silu_backward(dy, z)),
        }

        def make_backward(derivative, reads_pre):
            @cuda.jit
            def activation_backward(dy, y, alpha, pre):
                start, stride = cuda.grid(1), cuda.gridsize(1)
                for i in range(start, y.size, stride):
                    z = pre[i] if reads_pre else zero  # reads_pre: a compile-time constant
                    y[i] = derivative(dy[i], y[i], z, alpha)
            return activation_backward

        self.activation_backward = {name: make_backward(d, name in NEEDS_PRE_ACTIVATION)
                                    for name, d in derivatives.items()}

        @cuda.jit
        def sigmoid_inplace(x):
            start, stride = cuda.grid(1), cuda.gridsize(1)
            for i in range(start, x.size, stride):
                x[i] = sigmoid(x[i])

        self.sigmoid = sigmoid_inplace

        # ------------------------------------------------------------------ row softmax (a warp per row)
        @_device
        def row_max_and_sum(x, r, shared_max, shared_sum):
            """Max and sum(exp(x - max)) of row r, reduced in shared memory by the block's row_threads."""
            t = cuda.threadIdx.x
            K = x.shape[1]
            m = negative_infinity
            for k in range(t, K, row_threads):
                v = x[r, k]
                m = v if v > m or v != v else m  # a NaN wins, so it propagates
            shared_max[t] = m
            cuda.syncthreads()
            width = row_threads // 2
            while width > 0:
                if t < width:
                    a, b = shared_max[t], shared_max[t + width]
                    shared_max[t] = b if b > a or b != b else a
                cuda.syncthreads()
                width //= 2
            m = shared_max[0]
            s = zero
            for k in range(t, K, row_threads):
                s += math.exp(x[r, k] - m)
            shared_sum[t] = s
            cuda.syncthreads()
            width = row_threads // 2
            while width > 0:
                if t < width:
                    shared_sum[t] += shared_sum[t + width]
                cuda.syncthreads()
                width //= 2
            total = shared_sum[0]
            cuda.syncthreads()  # every thread has read the results before the next row reuses them
            return m, total

        @cuda.jit
        def softmax_rows(x):
            shared_max = cuda.shared.array(row_threads, T)
            shared_sum = cuda.shared.array(row_threads, T)
            for r in range(cuda.blockIdx.x, x.shape[0], cuda.gridDim.x):
                m, total = row_max_and_sum(x, r, shared_max, shared_sum)
                inv = one / total
                for k in range(cuda.threadIdx.x, x.shape[1], row_threads):
                    x[r, k] = math.exp(x[r, k] - m) * inv

        self.softmax = softmax_rows

        @_device
        def row_sum_float64(x, r, shared):
            """sum_k x[r, k] in float64, reduced in shared memory by the block's row_threads."""
            t = cuda.threadIdx.x
            s = 0.0
            for k in range(t, x.shape[1], row_threads):
                s += np.float64(x[r, k])
            shared[t] = s
            cuda.syncthreads()
            width = row_threads // 2
            while width > 0:
                if t < width:
                    shared[t] += shared[t + width]
                cuda.syncthreads()
                width //= 2
            total = shared[0]
            cuda.syncthreads()
            return total

        def make_softmax_cross_entropy(weighted):
            @cuda.jit
            def softmax_cross_entropy_rows(logits, labels, weights, grad, row_loss, hit, off, smoothing):
                """A block of row_threads per row: grad = w (softmax - q) / B, q the one-hot smoothed by
                eps = smoothing: hit = (1 - eps) / B at the label, off = eps / (K B) everywhere; row_loss[r]
                (float64) = w (log(sum) + (1 - eps) (max - z[label]) + eps (max - mean(z))), NaN for a label
                outside [0, K) (then only column 0 is touched, never out of bounds). w = weights[r] when
                weighted (a compile-time constant; else 1 and weights is never read): read once per row, cast
                to the dtype for the gradient (dtype arithmetic, as unweighted), float64 for the row loss."""
                shared_max = cuda.shared.array(row_threads, T)
                shared_sum = cuda.shared.array(row_threads, T)
                shared_z = cuda.shared.array(row_threads, np.float64)
                B, K = logits.shape
                inv_batch = one / T(B)
                for r in range(cuda.blockIdx.x, B, cuda.gridDim.x):
                    m, total = row_max_and_sum(logits, r, shared_max, shared_sum)
                    z_sum = row_sum_float64(logits, r, shared_z) if smoothing != 0.0 else 0.0
                    w = weights[r] if weighted else 1.0
                    w_row = T(w)
                    label = labels[r]
                    valid = label >= 0 and label < K
                    safe = label if valid else 0
                    scale, row_hit, row_off = w_row * inv_batch / total, w_row * hit, w_row * off
                    for k in range(cuda.threadIdx.x, K, row_threads):
                        p = math.exp(logits[r, k] - m) * scale - row_off
                        grad[r, k] = p - row_hit if k == safe else p
                    if cuda.threadIdx.x == 0:
                        margin = np.float64(m) - np.float64(logits[r, safe])
                        if smoothing != 0.0:
                            margin = (1.0 - smoothing) * margin + smoothing * (np.float64(m) - z_sum / K)
                        row_loss[r] = w * (_log_or_nan(np.float64(total)) + margin) if valid else math.nan
            return softmax_cross_entropy_rows

        self.softmax_cross_entropy = make_softmax_cross_entropy(False)
        self.weighted_softmax_cross_entropy = make_softmax_cross_entropy(True)

        # ------------------------------------------------------------------ elementwise losses
        # term(o, t, scale, delta) -> (scale g, the loss term in float64), g the derivative at one element
        @_device
        def bce_term(z, t, scale, delta):
            """g = sigmoid(z) - t; term = max(z, 0) - z t + log(1 + exp(-|z|))."""
            e = math.exp(-abs(z))
            r = one / (one + e)
            s = r if z >= zero else e * r
            positive = z if z > zero else zero
            return (s - t) * scale, np.float64(positive - z * t) + math.log1p(np.float64(e))

        @_device
        def mse_term(o, t, scale, delta):
            """g = o - t; term = (o - t)^2 (the caller halves the sum)."""
            d = o - t
            return d * scale, np.float64(d) * np.float64(d)

        @_device
        def huber_term(o, t, scale, delta):
            """g = clip(r, -delta, delta), r = o - t; term = r^2 / 2 if |r| <= delta else delta (|r| - delta / 2)."""
            d = o - t
            r = abs(np.float64(d))
            return _clip(d, T(delta)) * scale, 0.5 * r * r if r <= delta else delta * (r - 0.5 * delta)

        @_device
        def mae_term(o, t, scale, delta):
            """g = sign(o - t) (0 where o == t, NaN stays NaN); term = |o - t|."""
            d = o - t
            return scale if d > zero else (-scale if d < zero else (zero if d == zero else d)), abs(np.float64(d))

        def make_loss_terms(term, weighted):
            @cuda.jit
            def loss_terms(outputs, targets, grad, partial, inv_count, delta, weights, width):
                """Flat: grad = w g inv_count; per-block float64 partial sums of w times the loss terms. w =
                weights[i // width] when weighted (a compile-time constant; else 1 and weights is never read):
                cast to the dtype for the gradient (dtype arithmetic, as unweighted), float64 for the sum."""
                shared = cuda.shared.array(threads, np.float64)
                start, stride = cuda.grid(1), cuda.gridsize(1)
                acc = 0.0
                for i in range(start, outputs.size, stride):
                    w = weights[i // width] if weighted else 1.0
                    g, value = term(outputs[i], targets[i], T(w) * inv_count, delta)
                    grad[i] = g
                    acc += w * value
                block_sum(shared, acc, partial)
            return loss_terms

        terms = {"binary_cross_entropy": bce_term, "mse": mse_term, "huber": huber_term, "mae": mae_term}
        self.loss_terms = {name: make_loss_terms(term, False) for name, term in terms.items()}
        self.weighted_loss_terms = {name: make_loss_terms(term, True) for name, term in terms.items()}

        # ------------------------------------------------------------------ dropout
        @cuda.jit
        def dropout(x, out, threshold, scale, seed, clock, layer, width):
            """out = x * (scale if word(i) >= threshold else 0), word(i) the first Philox word of
            (i + seed[1] width, step) with the key (seed[0], layer); flat; out may be x."""
            key, step = np.uint64(seed[0]), np.uint64(clock[0])
            first = np.uint64(seed[1]) * width
            step_low, step_high = step & _LOW32, step >> _SHIFT32
            start, stride = cuda.grid(1), cuda.gridsize(1)
            for i in range(start, x.size, stride):
                index = np.uint64(i) + first
                word = _philox(index & _LOW32, index >> _SHIFT32, step_low, step_high, key, layer)[0]
                out[i] = x[i] * (scale if word >= threshold else zero)

        self.dropout = dropout

        # ------------------------------------------------------------------ status and hooks
        @cuda.jit
        def mark_non_finite(values, status, clock):
            """status[2] = step + 1 where a value is NaN/Inf (every writer writes the same value)."""
            if status[0] != 0:
                return
            start, stride = cuda.grid(1), cuda.gridsize(1)
            for i in range(start, values.size, stride):
                v = values[i]
                if v * zero != zero:
                    status[2] = clock[0] + 1

        self.mark_non_finite = mark_non_finite

        @cuda.jit
        def restore(p, backup, status):
            if status[0] == 0:
                return
            start, stride = cuda.grid(1), cuda.gridsize(1)
            for i in range(start, p.size, stride):
                p[i] = backup[i]

        @cuda.jit
        def clip_values(g, limit):
            start, stride = cuda.grid(1), cuda.gridsize(1)
            for i in range(start, g.size, stride):
                g[i] = _clip(g[i], limit)

        @cuda.jit
        def square_terms(g, partial):
            shared = cuda.shared.array(threads, np.float64)
            start, stride = cuda.grid(1), cuda.gridsize(1)
            acc = 0.0
            for i in range(start, g.size, stride):
                acc += np.float64(g[i]) * np.float64(g[i])
            block_sum(shared, acc, partial)

        @cuda.jit
        def scale_to_norm(g, sum_sq, max_norm):
            norm = math.sqrt(sum_sq[0])
            if not norm > max_norm:  # also for a NaN norm: the update's check then sees the NaN
                return
            scale = T(max_norm / norm)
            start, stride = cuda.grid(1), cuda.gridsize(1)
            for i in range(start, g.size, stride):
                g[i] *= scale

        @cuda.jit
        def weigh_or_poison(g, weight, status):
            w = T(weight[0])
            poisoned = status[0] != 0
            start, stride = cuda.grid(1), cuda.gridsize(1)
            for i in range(start, g.size, stride):
                g[i] = not_a_number if poisoned else g[i] * w

        self.restore, self.clip_values = restore, clip_values
        self.square_terms, self.scale_to_norm = square_terms, scale_to_norm
        self.weigh_or_poison = weigh_or_poison

        # ------------------------------------------------------------------ guarded updates
        # Two launches per update: "check" computes every new value and stamps step + 1 into
        # status[2] (gradient) or status[3] (new value) where one is not finite; "apply" writes
        # only when status is clear and neither stamp holds this step, and its thread 0 records
        # a failure. No kernel reads a value another thread of the same launch writes.
        @_device
        def stamp(status, step, g, new_finite):
            if g * zero != zero:
                status[2] = step + 1
            elif not new_finite:
                status[3] = step + 1

        @_device
        def settle(status, step):
            """True when this step's update may be written; thread 0 records a failure."""
            bad = status[2] == step + 1 or status[3] == step + 1
            if cuda.grid(1) == 0 and status[0] == 0 and bad:
                status[0] = STATUS_GRADIENT if status[2] == step + 1 else STATUS_UPDATE
                status[1] = step
            return status[0] == 0 and not bad

        @_device
        def finite(x):
            return x * zero == zero

        @cuda.jit
        def sgd_check(p, g, hyper, weight_decay, n_decayed, status, clock):
            if status[0] != 0:
                return
            lr, wd_all, step = T(hyper[0]), T(weight_decay), clock[0]
            start, stride = cuda.grid(1), cuda.gridsize(1)
            for i in range(start, p.size, stride):
                wd = wd_all if i < n_decayed else zero
                stamp(status, step, g[i], finite(_sgd_step(p[i], g[i], wd, lr)))

        @cuda.jit
        def sgd_apply(p, g, hyper, weight_decay, n_decayed, status, clock):
            if not settle(status, clock[0]):
                return
            lr, wd_all = T(hyper[0]), T(weight_decay)
            start, stride = cuda.grid(1), cuda.gridsize(1)
            for i in range(start, p.size, stride):
                p[i] = _sgd_step(p[i], g[i], wd_all if i < n_decayed else zero, lr)

        @cuda.jit
        def momentum_check(p, g, v, hyper, momentum, nesterov, weight_decay, n_decayed, status, clock):
            if status[0] != 0:
                return
            lr, mu, wd_all, step = T(hyper[0]), T(momentum), T(weight_decay), clock[0]
            start, stride = cuda.grid(1), cuda.gridsize(1)
            for i in range(start, p.size, stride):
                wd = wd_all if i < n_decayed else zero
                new_p, new_v = _momentum_step(p[i], g[i], v[i], wd, lr, mu, nesterov)
                stamp(status, step, g[i], finite(new_p) and finite(new_v))

        @cuda.jit
        def momentum_apply(p, g, v, hyper, momentum, nesterov, weight_decay, n_decayed, status, clock):
            if not settle(status, clock[0]):
                return
            lr, mu, wd_all = T(hyper[0]), T(momentum), T(weight_decay)
            start, stride = cuda.grid(1), cuda.gridsize(1)
            for i in range(start, p.size, stride):
                p[i], v[i] = _momentum_step(p[i], g[i], v[i], wd_all if i < n_decayed else zero, lr, mu, nesterov)

        @cuda.jit
        def adam_check(p, g, m, v, hyper, beta1, beta2, eps, weight_decay, n_decayed, status, clock):
            if status[0] != 0:
                return
            step_size, inv_bc2 = T(hyper[0]), T(1.0 / hyper[1])
            b1, b2, c1, c2 = T(beta1), T(beta2), T(1.0 - beta1), T(1.0 - beta2)
            e, wd_all, step = T(eps), T(weight_decay), clock[0]
            start, stride = cuda.grid(1), cuda.gridsize(1)
            for i in range(start, p.size, stride):
                wd = wd_all if i < n_decayed else zero
                new_p, new_m, new_v = _adam_step(p[i], g[i], m[i], v[i], wd, step_size, inv_bc2, b1, b2, c1, c2, e)
                stamp(status, step, g[i], finite(new_p) and finite(new_m) and finite(new_v))

        @cuda.jit
        def adam_apply(p, g, m, v, hyper, beta1, beta2, eps, weight_decay, n_decayed, status, clock):
            if not settle(status, clock[0]):
                return
            step_size, inv_bc2 = T(hyper[0]), T(1.0 / hyper[1])
            b1, b2, c1, c2 = T(beta1), T(beta2), T(1.0 - beta1), T(1.0 - beta2)
            e, wd_all = T(eps), T(weight_decay)
            start, stride = cuda.grid(1), cuda.gridsize(1)
            for i in range(start, p.size, stride):
                wd = wd_all if i < n_decayed else zero
                p[i], m[i], v[i] = _adam_step(p[i], g[i], m[i], v[i], wd, step_size, inv_bc2, b1, b2, c1, c2, e)

        @cuda.jit
        def rmsprop_check(p, g, v, hyper, rho, eps, weight_decay, n_decayed, status, clock):
            if status[0] != 0:
                return
            lr, r, c, e, wd_all, step = T(hyper[0]), T(rho), T(1.0 - rho), T(eps), T(weight_decay), clock[0]
            start, stride = cuda.grid(1), cuda.gridsize(1)
            for i in range(start, p.size, stride):
                wd = wd_all if i < n_decayed else zero
                new_p, new_v = _rmsprop_step(p[i], g[i], v[i], wd, lr, r, c, e)
                stamp(status, step, g[i], finite(new_p) and finite(new_v))

        @cuda.jit
        def rmsprop_apply(p, g, v, hyper, rho, eps, weight_decay, n_decayed, status, clock):
            if not settle(status, clock[0]):
                return
            lr, r, c, e, wd_all = T(hyper[0]), T(rho), T(1.0 - rho), T(eps), T(weight_decay)
            start, stride = cuda.grid(1), cuda.gridsize(1)
            for i in range(start, p.size, stride):
                p[i], v[i] = _rmsprop_step(p[i], g[i], v[i], wd_all if i < n_decayed else zero, lr, r, c, e)

        self.updates = {"sgd": (sgd_check, sgd_apply), "momentum": (momentum_check, momentum_apply),
                        "adam": (adam_check, adam_apply), "rmsprop": (rmsprop_check, rmsprop_apply)}

        # ------------------------------------------------------------------ bias gradient
        tile_columns, row_slices = COLUMN_BLOCK

        @cuda.jit
        def column_sums(delta, out, chunk_rows):
            """out[j, c] = sum of delta[r, c] over the rows r of chunk j (rows j chunk_rows on, chunk_rows of
            them). A block of tile_columns x row_slices threads takes one (column tile, chunk) job at a time:
            thread (x, y) sums column x of the tile over rows y, y + row_slices, ... of the chunk (loads
            coalesced along each row), then thread (x, 0) adds the row_slices sums of its column in order.
            A fixed order, so the sums are bit-identical run to run whatever the launch shape."""
            sums = cuda.shared.array((row_slices, tile_columns), T)
            x, y = cuda.threadIdx.x, cuda.threadIdx.y
            B, n = delta.shape
            tiles = (n + tile_columns - 1) // tile_columns
            jobs = tiles * out.shape[0]
            for job in range(cuda.blockIdx.x, jobs, cuda.gridDim.x):
                chunk, c = job // tiles, (job % tiles) * tile_columns + x
                s = zero
                if c < n:
                    for r in range(chunk * chunk_rows + y, min(B, (chunk + 1) * chunk_rows), row_slices):
                        s += delta[r, c]
                sums[y, x] = s
                cuda.syncthreads()
                if y == 0 and c < n:
                    for k in range(1, row_slices):
                        s += sums[k, x]
                    out[chunk, c] = s
                if job + cuda.gridDim.x < jobs:  # the same for the whole block
                    cuda.syncthreads()  # every sum is read before the block's next job overwrites it

        self.column_sums = column_sums


@cuda.jit
def _gather(source, rows, cursor, out):
    """out[r, c] = source[rows[cursor[0] + r], c]; any dtype."""
    n, first = out.shape[1], cursor[0]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, out.size, stride):
        r, c = i // n, i % n
        out[r, c] = source[rows[first + r], c]


@cuda.jit
def _store_at(value, out, cursor):
    if cuda.grid(1) == 0:
        out[cursor[1]] = value[0]


@cuda.jit
def _copy(source, out):
    """out = source, flat; any dtype."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, out.size, stride):
        out[i] = source[i]


@cuda.jit(device=True)
def block_sum(shared, value, partial):
    """Sum ``value`` over the block in a fixed tree order into partial[blockIdx.x] (float64)."""
    t = cuda.threadIdx.x
    shared[t] = value
    cuda.syncthreads()
    width = cuda.blockDim.x // 2
    while width > 0:
        if t < width:
            shared[t] += shared[t + width]
        cuda.syncthreads()
        width //= 2
    if t == 0:
        partial[cuda.blockIdx.x] = shared[0]


@cuda.jit
def _finish_sum(partial, count, scale, out):
    """out[0] = scale * sum(partial[:count]) in a fixed order, by one block; NaN if a term is NaN."""
    shared = cuda.shared.array(THREADS, np.float64)
    acc = 0.0
    for i in range(cuda.threadIdx.x, count, cuda.blockDim.x):
        acc += partial[i]
    block_sum(shared, acc, out)  # one block: thread 0 writes out[0], then scales it
    if cuda.threadIdx.x == 0:
        out[0] *= scale


@cuda.jit
def _record_mark(status, code, clock):
    """Turn a mark of :func:`check_finite_` (status[2] = step + 1) into the record [code, step]."""
    if status[0] == 0 and status[2] == clock[0] + 1:
        status[0] = code
        status[1] = clock[0]


_kernels = {}


def _of(a):
    """The kernels of ``a``'s dtype (compiled on first use)."""
    key = np.dtype(a.dtype)
    table = _kernels.get(key)
    if table is None:
        table = _kernels[key] = _DtypeKernels(key)
    return table


def _lookup(table, activation):
    try:
        return table[activation]
    except KeyError:
        raise unknown_activation(activation) from None


# --------------------------------------------------------------------------- activations
def _placeholder(a):
    """A one-element array of ``a``'s dtype and rank, made once: the ``pre`` of an activation kernel that
    was given none (never read or written)."""
    return runtime.scratch(("placeholder",), (1,) * a.ndim, a.dtype)


def bias_activation_(z, b, activation, alpha=None, pre=None):
    """In place: ``z = f(z + b)``; z (B, n), b (n,); alpha: leaky_relu's negative slope or elu's alpha (None:
    the default); for gelu, gelu_exact and silu, ``pre`` (B, n), unless None, receives z + b in the same pass."""
    kernel = _lookup(_of(z).bias_activation, activation)
    _launch(kernel, z.size, z, b, z.dtype.type(activation_alpha(activation, alpha)),
            _placeholder(z) if pre is None else pre, pre is not None)


def activation_backward_(dy, y, activation, alpha=None, pre=None):
    """In place: ``y = dy * f'(z)`` written with the output y (linear: y = dy), or with the pre-activation
    ``pre`` = z (required) for gelu, gelu_exact and silu."""
    if activation == "linear":
        copy_(dy, y)
        return
    kernel = _lookup(_of(y).activation_backward, activation)
    if pre is None and activation in NEEDS_PRE_ACTIVATION:
        raise missing_pre_activation(activation)
    _launch(kernel, y.size, _flat(dy), _flat(y), y.dtype.type(activation_alpha(activation, alpha)),
            _placeholder(dy.reshape(-1)) if pre is None else _flat(pre))


def sigmoid_(x):
    """In place logistic function."""
    _launch(_of(x).sigmoid, x.size, _flat(x))


def softmax_(x):
    """In place, numerically stable row softmax of (B, K): a warp per row."""
    _launch(_of(x).softmax, x.shape[0] * ROW_THREADS, x, threads=ROW_THREADS)


# --------------------------------------------------------------------------- losses
def _reduce_into(loss, partial, count, scale):
    _launch(_finish_sum, THREADS, partial, count, scale, loss, threads=THREADS)


def softmax_cross_entropy(logits, labels, grad, loss, label_smoothing):
    """Mean softmax cross-entropy into ``loss[0]``; ``grad = (softmax - q) / B``, q the one-hot of the labels
    smoothed by eps = label_smoothing, (1 - eps) onehot + eps / K; bad labels give NaN."""
    _label_loss(logits, labels, grad, loss, label_smoothing, None)


def _label_loss(logits, labels, grad, loss, label_smoothing, weights):
    """Softmax cross-entropy, a warp per row, row b weighted by ``weights[b]`` unless weights is None."""
    B, K = logits.shape
    eps = float(label_smoothing)
    row_loss = runtime.scratch(("row_loss", B), (B,), np.float64)
    T = logits.dtype.type
    table = _of(logits)
    kernel = table.softmax_cross_entropy if weights is None else table.weighted_softmax_cross_entropy
    _launch(kernel, B * ROW_THREADS, logits, labels, loss if weights is None else weights, grad, row_loss,
            T((1.0 - eps) / B), T(eps / (K * B)), eps, threads=ROW_THREADS)  # loss: a weights never read
    _reduce_into(loss, row_loss, B, 1.0 / B)


def _value_loss(name, outputs, targets, grad, loss, delta, weights):
    """An element-wise loss (a thread per element), row b weighted by ``weights[b]`` unless weights is None:
    grad = w g / B for mse, w g / (B K) for the others; loss[0] = the float64 sum of w times the terms over 2B
    for mse, over B K for the others."""
    B, n = outputs.shape[0], outputs.size
    grad_scale, loss_scale = (1.0 / B, 0.5 / B) if name == "mse" else (1.0 / n, 1.0 / n)
    blocks = _blocks(n)
    partial = runtime.scratch(("loss_partial", blocks), (blocks,), np.float64)
    table = _of(outputs)
    kernel = (table.loss_terms if weights is None else table.weighted_loss_terms)[name]
    _launch(kernel, n, _flat(outputs), _flat(targets), _flat(grad), partial, outputs.dtype.type(grad_scale),
            float(delta), loss if weights is None else weights, n // max(B, 1))  # loss: a weights never read
    _reduce_into(loss, partial, blocks, loss_scale)


def binary_cross_entropy(logits, targets, grad, loss):
    """Mean stable BCE-with-logits into ``loss[0]``; ``grad = (sigmoid(z) - t) / (B K)``."""
    _value_loss("binary_cross_entropy", logits, targets, grad, loss, 0.0, None)


def mse(outputs, targets, grad, loss):
    """``loss[0] = 1/(2B) sum (o - t)^2``; ``grad = (o - t) / B``."""
    _value_loss("mse", outputs, targets, grad, loss, 0.0, None)


def huber(outputs, targets, grad, loss, delta):
    """``loss[0]`` = mean Huber term over the B K elements (PyTorch's HuberLoss); ``grad = clip(r) / (B K)``."""
    _value_loss("huber", outputs, targets, grad, loss, delta, None)


def mae(outputs, targets, grad, loss):
    """``loss[0] = mean |o - t|`` (PyTorch's L1Loss); ``grad = sign(o - t) / (B K)``, 0 where o == t."""
    _value_loss("mae", outputs, targets, grad, loss, 0.0, None)


def weighted_loss(loss_name, outputs, targets, weights, grad, loss, parameter):
    """The loss kernel ``loss_name`` with row b weighted by ``weights[b]`` ((B,) float64): loss[0] = sum_b w_b l_b / B,
    grad[b] = w_b times row b of the unweighted gradient. The unweighted kernels with the weight read on the
    device: the gradient in the arrays' dtype (the weight cast to it), the loss summed in float64 in a fixed
    order, as unweighted."""
    if loss_name not in WEIGHTED_LOSSES:
        raise unknown_weighted_loss(loss_name)
    if loss_name == "softmax_cross_entropy":
        _label_loss(outputs, targets, grad, loss, parameter, weights)
    else:
        _value_loss(loss_name, outputs, targets, grad, loss, parameter, weights)


# --------------------------------------------------------------------------- dropout
def dropout_(x, out, rate, seed, clock, layer):
    """Inverted dropout, ``out = x * m / (1 - rate)``, with the counter-based mask of
    ``contract.KERNELS["dropout_"]`` drawn from seed[0] and clock[0] on the device; out may be x."""
    _launch(_of(x).dropout, x.size, _flat(x), _flat(out), philox.dropout_threshold(rate),
            x.dtype.type(1.0 / (1.0 - rate)), seed, clock, np.uint64(layer), np.uint64(x.shape[-1]))


# --------------------------------------------------------------------------- status and gradient hooks
def check_finite_(values, status, code, clock):
    """Record ``[code, clock[0]]`` in status when values hold NaN/Inf and status is clear."""
    _launch(_of(values).mark_non_finite, values.size, _flat(values), status, clock)
    _launch(_record_mark, 1, status, np.int64(code), clock, threads=1)


def restore_if_diverged_(p, backup, status):
    """``p = backup`` when status records a failure (read on the device)."""
    _launch(_of(p).restore, p.size, p, backup, status)


def clip_by_value_(g, limit):
    """In place: g clipped to [-limit, limit]; NaN stays NaN."""
    _launch(_of(g).clip_values, g.size, g, g.dtype.type(limit))


def clip_by_norm_(g, max_norm):
    """In place: ``g *= max_norm / ||g||`` when the norm (summed in float64 on the device) exceeds max_norm."""
    blocks = _blocks(g.size)
    partial = runtime.scratch(("norm_partial", blocks), (blocks,), np.float64)
    sum_sq = runtime.scratch(("norm_total",), (1,), np.float64)
    table = _of(g)
    _launch(table.square_terms, g.size, g, partial)
    _reduce_into(sum_sq, partial, blocks, 1.0)
    _launch(table.scale_to_norm, g.size, g, sum_sq, float(max_norm))


def all_reduce_mean_(g, weight, status, communicator):
    """In place: ``g = sum over ranks of weight[0] g`` (weight: this rank's (1,) float64 share, read on the
    device), or NaN everywhere from a rank whose status records a failure; the sum is
    ``communicator.allreduce_sum_`` queued on the step's stream (NCCL), so a captured step holds it."""
    _launch(_of(g).weigh_or_poison, g.size, g, weight, status)
    communicator.allreduce_sum_(g, runtime.stream_handle())


# --------------------------------------------------------------------------- guarded optimizer updates
def _guarded(name, p, args):
    check, apply = _of(p).updates[name]
    _launch(check, p.size, *args)
    _launch(apply, p.size, *args)


def sgd_update_(p, g, v, hyper, momentum, nesterov, weight_decay, n_decayed, status, clock):
    """Guarded SGD with optional (Nesterov) momentum, PyTorch convention, in place on p and v; lr = hyper[0]."""
    if momentum == 0.0:
        _guarded("sgd", p, (p, g, hyper, float(weight_decay), np.int64(n_decayed), status, clock))
    else:
        _guarded("momentum", p, (p, g, v, hyper, float(momentum), bool(nesterov), float(weight_decay),
                                 np.int64(n_decayed), status, clock))


def adam_update_(p, g, m, v, hyper, beta1, beta2, eps, weight_decay, n_decayed, status, clock):
    """Guarded Adam, ``torch.optim.Adam`` arithmetic, in place on p, m and v; hyper = [step_size, bc2_sqrt]."""
    _guarded("adam", p, (p, g, m, v, hyper, float(beta1), float(beta2), float(eps), float(weight_decay),
                         np.int64(n_decayed), status, clock))


def rmsprop_update_(p, g, v, hyper, rho, eps, weight_decay, n_decayed, status, clock):
    """Guarded RMSprop, in place on p and v; lr = hyper[0]."""
    _guarded("rmsprop", p, (p, g, v, hyper, float(rho), float(eps), float(weight_decay), np.int64(n_decayed),
                            status, clock))


# --------------------------------------------------------------------------- GEMMs, bias gradient, gather, copy
def scratch_bytes(batch_sizes, n_outputs, n_params):
    """Device memory these kernels and the runtime allocate for steps of ``batch_sizes`` rows: per batch
    size the softmax cross-entropy row losses, the loss partial sums (float64) and, where the batch can span
    several chunks of rows, the bias gradient's partial sums (at most the size of b float64 values), the gradient
    norm's partial sums, the activation kernels' two one-element placeholders, and the runtime's fixed
    buffers (the cuBLAS workspace)."""
    per_batch = sum(b + _blocks(b * n_outputs) + (b if _row_chunks(b, 1, 8) > 1 else 0) for b in batch_sizes)
    return 8 * (per_batch + _blocks(n_params) + 1 + 2) + runtime.FIXED_BYTES


def set_matmul_precision(precision):
    """Float32 GEMMs at ``precision`` from now on (see ``contract.MATMUL_PRECISIONS``): "high" and
    "medium" run on TF32 or bf16 tensor cores through one cuBLAS compute type for every GEMM."""
    check_matmul_precision(precision)
    runtime.set_matmul_precision(precision)


def matmul_precision():
    return runtime.matmul_precision()


def linear_(x, W, out):
    """``out = x @ W`` (one GEMM on the runtime's BLAS)."""
    runtime.gemm(x, W, out, transpose_a=False, transpose_b=False, scale=None)


def weight_gradient_(x, delta, out, scale=None):
    """``out = alpha x^T delta + beta out`` with ``[alpha, beta] = scale`` read on the device (plain SGD when
    out is W), or ``x^T delta`` when scale is None."""
    runtime.gemm(x, delta, out, transpose_a=True, transpose_b=False, scale=scale)


def input_gradient_(delta, W, out):
    """``out = delta @ W^T``; delta (B, fan_out), W (fan_in, fan_out), out (B, fan_in)."""
    runtime.gemm(delta, W, out, transpose_a=False, transpose_b=True, scale=None)


def _row_chunks(B, n, itemsize):
    """How many chunks of rows :func:`bias_gradient_` splits B rows of width n into: one per
    ROWS_PER_THREAD rows of each row slice of a block (so a large batch spreads over many blocks), at most
    THREADS (the rows of the second pass), and few enough that their (chunks, n) partial sums fit in B
    float64 values."""
    rows = ROWS_PER_THREAD * COLUMN_BLOCK[1]
    return max(1, min((B + rows - 1) // rows, THREADS, B * 8 // itemsize // max(n, 1)))


def _column_sums(kernel, delta, out, chunk_rows):
    """One launch of ``column_sums``: a block per (tile of columns, chunk of rows) job, MAX_BLOCKS at most."""
    jobs = ((delta.shape[1] + COLUMN_BLOCK[0] - 1) // COLUMN_BLOCK[0]) * out.shape[0]
    _launch(kernel, jobs * THREADS, delta, out, np.int64(chunk_rows), threads=COLUMN_BLOCK)


def bias_gradient_(delta, out):
    """``out = sum_b delta[b]``: the bias gradient, delta (B, n) -> out (n,). A tiled reduction: blocks of
    (32 columns x 8 row slices) on a GPU, one per tile of columns and chunk of rows; with several chunks
    (a large batch) a second launch adds their partial sums. No atomics: the order of every sum is fixed
    by the shape, so the result is bit-identical run to run."""
    B, n = delta.shape
    kernel = _of(delta).column_sums
    chunks = _row_chunks(B, n, delta.dtype.itemsize)
    if chunks == 1:
        _column_sums(kernel, delta, out.reshape(1, n), B)
        return
    chunk_rows = (B + chunks - 1) // chunks
    chunks = (B + chunk_rows - 1) // chunk_rows
    buffer = runtime.scratch(("column_partial", B), (B,), np.float64).view(delta.dtype)
    partial = buffer[:chunks * n].reshape(chunks, n)
    _column_sums(kernel, delta, partial, chunk_rows)
    _column_sums(kernel, partial, out.reshape(1, n), chunks)


def gather_rows_(source, rows, cursor, out):
    """``out[i] = source[rows[cursor[0] + i]]`` for the (B, n) batch buffer ``out`` (labels: (B,), through a
    2-D view); the position is read on the device, so a captured step gathers each step's own batch."""
    if out.ndim == 1:
        source, out = source.reshape(-1, 1), out.reshape(-1, 1)
    _launch(_gather, out.size, source, rows, cursor, out)


def store_at_(value, out, cursor):
    """``out[cursor[1]] = value[0]``: one thread."""
    _launch(_store_at, 1, value, out, cursor)


def copy_(source, out):
    """``out = source`` (same shape and dtype)."""
    _launch(_copy, out.size, _flat(source), _flat(out))

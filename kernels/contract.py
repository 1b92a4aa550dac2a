"""The kernel contract: every kernel a device implements, its arguments, results and errors.

Each device module (``gpubp.kernels.cpu`` for NumPy arrays with Numba,
``gpubp.kernels.cuda`` for CUDA arrays with ``numba.cuda``) exports one function per entry of
:data:`KERNELS`, with these names and arguments; ``gpubp.kernels.reference``
holds a plain array-module implementation of each, and the contract tests hold
every device to it (values against float64, in-place behaviour, errors).

Shared rules:

* Floating arrays are C-contiguous float32 or float64, all of one dtype per
  call; integer labels are int64; ``loss`` is a (1,) float64 array.
* Every kernel writes into the arrays it is given and returns None; nothing is
  read back to the host, so a kernel never waits for the device.
* ``status`` is the (4,) int64 divergence record ``[code, step, scratch,
  scratch]``, all 0 when cleared: ``code`` stays 0 while clear, else it is one
  of the ``STATUS_*`` codes and ``step`` the optimizer step that set it (a
  device may use the scratch entries within one kernel call).
  A kernel that takes ``status`` does nothing once it is set (the record keeps
  the first failure) and writes no parameter when it finds a NaN/Inf.
* Values that change from step to step are read from device memory, never
  passed as kernel scalars, so a step captured once as a CUDA graph and
  replayed sees them: ``clock`` is the (1,) int64 optimizer step, ``hyper`` a
  small float64 array of the update's per-step values (the learning rate, or
  Adam's step size and bias correction), ``scale`` the (2,) ``[alpha, beta]``
  of a GEMM in the arrays' dtype. Fixed hyperparameters (momentum, betas, eps,
  weight decay, clipping limits) are plain scalars.
* An unknown activation name raises ValueError (see :func:`unknown_activation`).
* Besides the kernels, a device exports ``scratch_bytes(batch_sizes,
  n_outputs, n_params)``, the memory its kernels allocate for steps of
  those shapes beyond the arrays they are given, and ``set_matmul_precision(precision)``
  and ``matmul_precision()``: the precision of its float32 GEMMs
  (:data:`MATMUL_PRECISIONS`), one setting for every GEMM of a step, so no
  layer mixes precisions.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Activation names every device implements. "gelu" is the tanh approximation (PyTorch's
#: ``approximate="tanh"``), "gelu_exact" the erf form (PyTorch's default); "silu" is x sigmoid(x).
ACTIVATIONS = ("linear", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "gelu_exact", "softplus", "silu")

#: The activations that take the kernels' ``alpha``, each with its default (PyTorch's): leaky_relu's negative
#: slope and elu's alpha. Both must be > 0, so that the output y still tells z <= 0 from z > 0.
ACTIVATION_ALPHA = {"leaky_relu": 0.01, "elu": 1.0}

#: The activations whose derivative is not a function of their output (they are not invertible): their
#: backward reads the pre-activation z, which the forward writes into ``pre``.
NEEDS_PRE_ACTIVATION = ("gelu", "gelu_exact", "silu")

#: ``status[0]`` codes: what was not finite.
STATUS_CLEAR = 0
STATUS_LOSS = 1
STATUS_GRADIENT = 2
STATUS_UPDATE = 3

STATUS_MEANING = {
    STATUS_LOSS: "the loss is not finite (NaN/Inf)",
    STATUS_GRADIENT: "the gradient is not finite (NaN/Inf)",
    STATUS_UPDATE: "the update overflowed: new parameters or optimizer state would not be finite",
}


#: Float32 GEMM precisions (the names of PyTorch's ``set_float32_matmul_precision``). A device
#: computes at the precision asked for or a higher one; float64 GEMMs are always float64.
MATMUL_PRECISIONS = {
    "highest": "float32 products and accumulation",
    "high": "TF32 tensor cores: operands rounded to 10 mantissa bits, float32 accumulation",
    "medium": "bf16 tensor cores: operands rounded to 7 mantissa bits, float32 accumulation",
}


def check_matmul_precision(precision):
    """Raise ValueError unless ``precision`` is one of :data:`MATMUL_PRECISIONS`."""
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"unknown matmul precision {precision!r}; expected one of {list(MATMUL_PRECISIONS)}")


#: The losses the ``weighted_loss`` kernel weights, by the name of their kernel.
WEIGHTED_LOSSES = ("softmax_cross_entropy", "binary_cross_entropy", "mse", "huber", "mae")


def unknown_weighted_loss(name):
    """The error every device raises for a ``weighted_loss`` name outside :data:`WEIGHTED_LOSSES`."""
    return ValueError(f"unknown loss {name!r} for weighted_loss; valid names are {list(WEIGHTED_LOSSES)}")


def unknown_activation(name):
    """The error every device raises for an activation outside :data:`ACTIVATIONS`."""
    return ValueError(f"unknown activation {name!r}; expected one of {list(ACTIVATIONS)}")


def activation_alpha(activation, alpha):
    """The ``alpha`` an activation kernel uses: ``alpha`` as a float, or the activation's default
    (:data:`ACTIVATION_ALPHA`) when it is None; 0.0 for an activation that takes none."""
    if alpha is None:
        return ACTIVATION_ALPHA.get(activation, 0.0)
    return float(alpha)


def missing_pre_activation(name):
    """The error every device raises when the backward of a :data:`NEEDS_PRE_ACTIVATION` activation gets no
    ``pre``."""
    return ValueError(f"the derivative of activation {name!r} needs its pre-activation: pass the pre array "
                      f"that bias_activation_ wrote")


@dataclass(frozen=True)
class KernelSpec:
    """One kernel: its argument names, what it writes, and what it raises."""

    args: tuple
    writes: tuple
    math: str
    raises: str = ""


KERNELS = {
    "bias_activation_": KernelSpec(
        ("z", "b", "activation", "alpha", "pre"), ("z", "pre"),
        "z (B, n) = f(z + b), b (n,); pre (B, n), unless None, = z + b (the pre-activation, in the same pass); "
        "alpha: the parameter of an ACTIVATION_ALPHA activation (None: its default), ignored by the others",
        "ValueError for an unknown activation"),
    "activation_backward_": KernelSpec(
        ("dy", "y", "activation", "alpha", "pre"), ("y",),
        "y = dy * f'(z), f' from the output y: sigmoid y(1-y), tanh 1-y^2, linear 1, leaky_relu 1 if y > 0 "
        "else alpha, elu 1 if y > 0 else y + alpha, softplus 1 - exp(-y); relu: y = dy where y > 0, else 0 "
        "(a select: 0 even where dy is NaN); for NEEDS_PRE_ACTIVATION ones from pre = z (required): "
        "gelu, gelu_exact, silu; pre is ignored by the others",
        "ValueError for an unknown activation, or one of NEEDS_PRE_ACTIVATION without pre"),
    "sigmoid_": KernelSpec(("x",), ("x",), "x = 1 / (1 + exp(-x))"),
    "softmax_": KernelSpec(("x",), ("x",), "each row of x (B, K) = softmax(row)"),
    "softmax_cross_entropy": KernelSpec(
        ("logits", "labels", "grad", "loss", "label_smoothing"), ("grad", "loss"),
        "q = (1 - eps) onehot(t) + eps / K with eps = label_smoothing in [0, 1); "
        "loss[0] = mean_b -sum_k q_bk log softmax(z_b)_k; grad = (softmax(z) - q) / B; "
        "a label outside [0, K) makes loss[0] NaN"),
    "binary_cross_entropy": KernelSpec(
        ("logits", "targets", "grad", "loss"), ("grad", "loss"),
        "loss[0] = mean(max(z,0) - z t + log(1 + exp(-|z|))); grad = (sigmoid(z) - t) / (B K)"),
    "mse": KernelSpec(
        ("outputs", "targets", "grad", "loss"), ("grad", "loss"),
        "loss[0] = sum((o - t)^2) / (2B); grad = (o - t) / B"),
    "huber": KernelSpec(
        ("outputs", "targets", "grad", "loss", "delta"), ("grad", "loss"),
        "r = o - t; loss[0] = mean over all B K elements of (r^2 / 2 if |r| <= delta else delta (|r| - delta / 2)); "
        "grad = clip(r, -delta, delta) / (B K); delta > 0 (PyTorch's HuberLoss, reduction 'mean')"),
    "mae": KernelSpec(
        ("outputs", "targets", "grad", "loss"), ("grad", "loss"),
        "loss[0] = mean over all B K elements of |o - t|; grad = sign(o - t) / (B K), 0 where o == t "
        "(PyTorch's L1Loss, reduction 'mean')"),
    "weighted_loss": KernelSpec(
        ("loss_name", "outputs", "targets", "weights", "grad", "loss", "parameter"), ("grad", "loss"),
        "the loss kernel ``loss_name`` (softmax_cross_entropy, binary_cross_entropy, mse, huber, mae; ``parameter`` "
        "its label_smoothing or delta, ignored by the others) with row b weighted by weights[b] ((B,) float64 "
        ">= 0): loss[0] = sum_b w_b l_b / B, l_b row b's loss (B times its share of the unweighted mean), and "
        "grad[b] = w_b times row b of the unweighted grad; the loss summed in float64",
        "ValueError for an unknown loss_name"),
    "dropout_": KernelSpec(
        ("x", "out", "rate", "seed", "clock", "layer"), ("out",),
        "out = x * m / (1 - rate), m = 1 where w >= floor(rate 2^32), else 0 (x * 0: NaN stays NaN); "
        "w = philox4x32-10(counter (i mod 2^32, i div 2^32, s mod 2^32, s div 2^32), key (seed[0], layer))[0], "
        "i = the flat index + seed[1] n (n = x.shape[-1]: row r of x is row seed[1] + r of the whole batch, "
        "so the ranks of data-parallel training draw one process's mask), s = clock[0]; seed (2,) int64 "
        "[key in [0, 2^32), first row >= 0], read on the device; rate in [0, 1); out may be x"),
    "check_finite_": KernelSpec(
        ("values", "status", "code", "clock"), ("status",), "status[:2] = [code, clock[0]] if values hold NaN/Inf"),
    "restore_if_diverged_": KernelSpec(
        ("p", "backup", "status"), ("p",), "p = backup when status[0] != 0, else nothing"),
    "clip_by_value_": KernelSpec(("g", "limit"), ("g",), "g = clip(g, -limit, limit); NaN stays NaN"),
    "clip_by_norm_": KernelSpec(
        ("g", "max_norm"), ("g",), "g *= max_norm / ||g|| when ||g|| > max_norm (norm summed in float64)"),
    "all_reduce_mean_": KernelSpec(
        ("g", "weight", "status", "communicator"), ("g",),
        "g = sum over ranks of T(weight[0]) g (T the dtype of g), or NaN from a rank whose status[0] != 0; "
        "weight (1,) float64 is this rank's share of the batch; the sum is communicator.allreduce_sum_(g, "
        "stream), stream the device's step stream handle (None on the host)"),
    "sgd_update_": KernelSpec(
        ("p", "g", "v", "hyper", "momentum", "nesterov", "weight_decay", "n_decayed", "status", "clock"),
        ("p", "v", "status"),
        "lr = hyper[0]; d = g + wd p[:n_decayed]; v = mu v + d; p -= lr (d + mu v if nesterov else v), "
        "or lr d when mu = 0"),
    "adam_update_": KernelSpec(
        ("p", "g", "m", "v", "hyper", "beta1", "beta2", "eps", "weight_decay", "n_decayed", "status", "clock"),
        ("p", "m", "v", "status"),
        "[step_size, bc2_sqrt] = hyper; m = b1 m + (1-b1) d; v = b2 v + (1-b2) d^2; "
        "p -= step_size m / (sqrt(v) / bc2_sqrt + eps)"),
    "rmsprop_update_": KernelSpec(
        ("p", "g", "v", "hyper", "rho", "eps", "weight_decay", "n_decayed", "status", "clock"), ("p", "v", "status"),
        "lr = hyper[0]; v = rho v + (1-rho) d^2; p -= lr d / (sqrt(v) + eps)"),
    "weight_gradient_": KernelSpec(
        ("x", "delta", "out", "scale"), ("out",),
        "out (fan_in, fan_out) = alpha x^T delta + beta out with [alpha, beta] = scale, or x^T delta when scale "
        "is None (never reading out)"),
    "linear_": KernelSpec(("x", "W", "out"), ("out",), "out (B, fan_out) = x (B, fan_in) @ W (fan_in, fan_out)"),
    "input_gradient_": KernelSpec(("delta", "W", "out"), ("out",), "out (B, fan_in) = delta W^T"),
    "bias_gradient_": KernelSpec(("delta", "out"), ("out",), "out (n,) = sum over rows of delta (B, n)"),
    "gather_rows_": KernelSpec(
        ("source", "rows", "cursor", "out"), ("out",),
        "out[i] = source[rows[cursor[0] + i]] for i < len(out); rows int64 in [0, len(source)); cursor (2,) int64 "
        "the batch's position [first entry of rows, step slot], read on the device"),
    "store_at_": KernelSpec(("value", "out", "cursor"), ("out",), "out[cursor[1]] = value[0]; cursor as above"),
    "copy_": KernelSpec(("source", "out"), ("out",), "out = source (same shape and dtype)"),
}

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

#: Activation names every device implements.
ACTIVATIONS = ("linear", "sigmoid", "tanh", "relu")

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


def unknown_activation(name):
    """The error every device raises for an activation outside :data:`ACTIVATIONS`."""
    return ValueError(f"unknown activation {name!r}; expected one of {list(ACTIVATIONS)}")


@dataclass(frozen=True)
class KernelSpec:
    """One kernel: its argument names, what it writes, and what it raises."""

    args: tuple
    writes: tuple
    math: str
    raises: str = ""


KERNELS = {
    "bias_activation_": KernelSpec(
        ("z", "b", "activation"), ("z",), "z (B, n) = f(z + b), b (n,)", "ValueError for an unknown activation"),
    "activation_backward_": KernelSpec(
        ("dy", "y", "activation"), ("y",),
        "y = dy * f'(z), f' from the output y: sigmoid y(1-y), tanh 1-y^2, linear 1; relu: y = dy where "
        "y > 0, else 0 (a select: 0 even where dy is NaN)",
        "ValueError for an unknown activation"),
    "sigmoid_": KernelSpec(("x",), ("x",), "x = 1 / (1 + exp(-x))"),
    "softmax_": KernelSpec(("x",), ("x",), "each row of x (B, K) = softmax(row)"),
    "softmax_cross_entropy": KernelSpec(
        ("logits", "labels", "grad", "loss"), ("grad", "loss"),
        "loss[0] = mean_b -log softmax(z_b)[t_b]; grad = (softmax(z) - onehot(t)) / B; "
        "a label outside [0, K) makes loss[0] NaN"),
    "binary_cross_entropy": KernelSpec(
        ("logits", "targets", "grad", "loss"), ("grad", "loss"),
        "loss[0] = mean(max(z,0) - z t + log(1 + exp(-|z|))); grad = (sigmoid(z) - t) / (B K)"),
    "mse": KernelSpec(
        ("outputs", "targets", "grad", "loss"), ("grad", "loss"),
        "loss[0] = sum((o - t)^2) / (2B); grad = (o - t) / B"),
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

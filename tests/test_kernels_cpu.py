"""Tests of the numba CPU kernels against float64 NumPy references."""

import platform
import re
import tracemalloc

import numba
import numpy as np
import pytest

from gpubp.kernels import cpu
from gpubp.kernels.fastmath import fast_exp, fast_tanh

DTYPES = (np.float32, np.float64)
# (32, 64) runs the serial kernels, (2048, 128) the parallel ones.
SHAPES = ((32, 64), (2048, 128))
# Max abs error vs a float64 reference of the same (already rounded) inputs.
TOLERANCE = {np.float32: 1e-6, np.float64: 1e-12}


@pytest.fixture(autouse=True)
def both_code_paths(monkeypatch):
    """Enable the parallel kernels from 2**17 elements so SHAPES exercise both builds."""
    monkeypatch.setattr(cpu, "PARALLEL_THRESHOLD", 1 << 17)


def test_shapes_cover_both_code_paths():
    sizes = [rows * cols for rows, cols in SHAPES]
    assert min(sizes) < cpu.PARALLEL_THRESHOLD <= max(sizes)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _normal(shape, dtype, scale=3.0, seed=0):
    return (scale * _rng(seed).standard_normal(shape)).astype(dtype)


def _assert_close(actual, reference, dtype, relative=False):
    """Max abs error <= TOLERANCE (scaled by |reference| when relative)."""
    actual = np.asarray(actual, dtype=np.float64)
    error = np.abs(actual - reference)
    if relative:
        error = error / np.maximum(1.0, np.abs(reference))
    assert np.all(np.isfinite(actual) == np.isfinite(reference))
    assert np.nanmax(error) <= TOLERANCE[dtype], np.nanmax(error)


# --------------------------------------------------------------------------
# float64 references
# --------------------------------------------------------------------------

def _sigmoid_ref(x):
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


_FORWARD_REF = {
    "linear": lambda x: x,
    "sigmoid": _sigmoid_ref,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
}

_BACKWARD_REF = {
    "linear": lambda y: np.ones_like(y),
    "sigmoid": lambda y: y * (1.0 - y),
    "tanh": lambda y: 1.0 - y * y,
    "relu": lambda y: (y > 0).astype(np.float64),
}


def _softmax_ref(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _cross_entropy_ref(logits, labels):
    x = np.asarray(logits, dtype=np.float64)
    batch = x.shape[0]
    row_max = x.max(axis=1)
    log_sum = np.log(np.exp(x - row_max[:, None]).sum(axis=1)) + row_max
    loss = np.mean(log_sum - x[np.arange(batch), labels])
    grad = _softmax_ref(x)
    grad[np.arange(batch), labels] -= 1.0
    return loss, grad / batch


def _bce_ref(logits, targets):
    z = np.asarray(logits, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    loss = np.mean(np.maximum(z, 0.0) - z * t + np.log1p(np.exp(-np.abs(z))))
    return loss, (_sigmoid_ref(z) - t) / z.size


# --------------------------------------------------------------------------
# fast_exp / fast_tanh
# --------------------------------------------------------------------------

@numba.njit
def _apply_fast_exp(x, out):
    for i in range(x.size):
        out[i] = fast_exp(x[i])


@numba.njit
def _apply_fast_tanh(x, out):
    for i in range(x.size):
        out[i] = fast_tanh(x[i])


def test_fast_exp_float32_relative_error_within_a_few_ulp():
    x = np.linspace(-87.3, 88.3, 2_000_001, dtype=np.float32)
    out = np.empty_like(x)
    _apply_fast_exp(x, out)
    reference = np.exp(x.astype(np.float64))
    assert out.dtype == np.float32
    assert np.max(np.abs(out - reference) / reference) <= 3 * 2.0**-24


def test_fast_exp_float32_saturates_and_propagates_nan():
    x = np.array([1e4, np.inf, -1e4, -np.inf, np.nan, 0.0], dtype=np.float32)
    out = np.empty_like(x)
    _apply_fast_exp(x, out)
    assert np.all(np.isfinite(out[:4])) and np.all(out[:4] > 0)
    assert out[0] > 1e38 and out[2] < 1.2e-38
    assert np.isnan(out[4])
    assert out[5] == 1.0


def test_fast_exp_float64_is_math_exp():
    x = np.linspace(-700.0, 700.0, 10_001)
    out = np.empty_like(x)
    _apply_fast_exp(x, out)
    np.testing.assert_allclose(out, np.exp(x), rtol=1e-15, atol=0)


def test_fast_tanh_float32_relative_error_near_zero():
    x = np.concatenate([np.geomspace(1e-30, 10.0, 200_001)]).astype(np.float32)
    x = np.concatenate([x, -x])
    out = np.empty_like(x)
    _apply_fast_tanh(x, out)
    reference = np.tanh(x.astype(np.float64))
    assert np.max(np.abs(out - reference) / np.abs(reference)) <= 4 * 2.0**-24


def test_float32_loops_are_vectorized():
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("assembly check written for x86-64")
    options = {k: v for k, v in cpu._JIT_OPTIONS.items() if k != "cache"}
    # A fresh, uncached compilation (cached code cannot be inspected).
    kernel = numba.njit(**options)(cpu._bias_sigmoid)
    z = np.zeros((4, 64), np.float32)
    kernel(z, np.zeros(64, np.float32))
    asm = kernel.inspect_asm(kernel.signatures[0])
    assert re.search(r"\bvfmadd\w*ps\s+%[yz]mm", asm), "no packed float32 FMA"
    assert "expf" not in asm


# --------------------------------------------------------------------------
# bias + activation, activation backward, sigmoid_, softmax_
# --------------------------------------------------------------------------

@pytest.mark.parametrize("activation", cpu.ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_activation_matches_reference(dtype, shape, activation):
    z = _normal(shape, dtype, seed=1)
    b = _normal(shape[1], dtype, seed=2)
    reference = _FORWARD_REF[activation](z.astype(np.float64) + b)
    out = cpu.bias_activation_(z, b, activation)
    assert out is z and z.dtype == dtype
    # linear and relu are exact up to the rounding of z + b: compare relatively.
    _assert_close(z, reference, dtype, relative=activation in ("linear", "relu"))


def test_bias_activation_rejects_unknown_name():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="activation"):
        cpu.bias_activation_(z, np.zeros(3), "softplus")


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_activation_extreme_inputs_saturate_without_warnings(dtype):
    values = np.array([-1e4, -1e3, -100.0, -89.0, -30.0, 0.0,
                       30.0, 89.0, 100.0, 1e3, 1e4], dtype=dtype)
    z = np.tile(values, (4, 1))
    b = np.zeros(values.size, dtype=dtype)
    with np.errstate(all="raise"):
        sig = cpu.bias_activation_(z.copy(), b, "sigmoid")
        tanh = cpu.bias_activation_(z.copy(), b, "tanh")
    for out in (sig, tanh):
        assert not np.any(np.isnan(out))
    assert np.all(sig[:, -4:] == 1.0)
    assert np.all((sig[:, :4] >= 0.0) & (sig[:, :4] < 1e-37))
    assert np.all(tanh[:, -4:] == 1.0) and np.all(tanh[:, :4] == -1.0)
    _assert_close(sig, _sigmoid_ref(z), dtype)
    _assert_close(tanh, np.tanh(z.astype(np.float64)), dtype)


@pytest.mark.parametrize("activation", ("sigmoid", "tanh", "relu"))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_propagates_through_activations(dtype, shape, activation):
    z = _normal(shape, dtype, seed=3)
    z[0, 5] = np.nan
    z[-1, -1] = np.nan
    cpu.bias_activation_(z, np.zeros(shape[1], dtype), activation)
    assert np.isnan(z[0, 5]) and np.isnan(z[-1, -1])
    assert np.count_nonzero(np.isnan(z)) == 2


@pytest.mark.parametrize("activation", cpu.ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_backward_matches_reference(dtype, shape, activation):
    y = cpu.bias_activation_(_normal(shape, dtype, seed=4),
                             np.zeros(shape[1], dtype), activation)
    delta = _normal(shape, dtype, scale=1.0, seed=5)
    reference = delta.astype(np.float64) * _BACKWARD_REF[activation](
        y.astype(np.float64))
    out = cpu.activation_backward_(delta, y, activation)
    assert out is delta
    _assert_close(delta, reference, dtype, relative=True)


@pytest.mark.parametrize("activation", cpu.ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_backward_written_over_the_output(dtype, shape, activation):
    """out=y: the training step writes dL/dz over the activation it no longer needs."""
    y = cpu.bias_activation_(_normal(shape, dtype, seed=4), np.zeros(shape[1], dtype), activation)
    delta = _normal(shape, dtype, scale=1.0, seed=5)
    reference = delta.astype(np.float64) * _BACKWARD_REF[activation](y.astype(np.float64))
    kept = delta.copy()
    out = cpu.activation_backward_(delta, y, activation, out=y)
    assert out is y
    np.testing.assert_array_equal(delta, kept)
    _assert_close(y, reference, dtype, relative=True)


@pytest.mark.parametrize("shape", ((7,), (32, 64), (2048, 128), (4, 8, 9)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_inplace_any_shape(dtype, shape):
    x = _normal(shape, dtype, scale=10.0, seed=6)
    x.flat[0] = np.nan
    x.flat[-1] = -1e4
    reference = _sigmoid_ref(x)
    with np.errstate(all="raise"):
        out = cpu.sigmoid_(x)
    assert out is x and x.shape == shape
    assert np.isnan(x.flat[0])
    _assert_close(x, reference, dtype)


@pytest.mark.parametrize("shape", SHAPES + ((5, 1), (3, 1000)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_matches_reference(dtype, shape):
    x = _normal(shape, dtype, seed=7)
    reference = _softmax_ref(x)
    out = cpu.softmax_(x)
    assert out is x
    _assert_close(x, reference, dtype)
    np.testing.assert_allclose(x.sum(axis=1), 1.0, atol=10 * TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_huge_logits_rows_sum_to_one(dtype):
    x = _normal((64, 10), dtype, scale=1e4, seed=8)
    x[0] = 1e30
    reference = _softmax_ref(x)
    with np.errstate(all="raise"):
        cpu.softmax_(x)
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(x.sum(axis=1), 1.0, atol=10 * TOLERANCE[dtype])
    _assert_close(x, reference, dtype)


# --------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------

@pytest.mark.parametrize("label_dtype", (np.int32, np.int64))
@pytest.mark.parametrize("shape", SHAPES + ((1001, 10), (1, 3)))  # row counts off the 32-row log blocks
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_matches_reference(dtype, shape, label_dtype):
    logits = _normal(shape, dtype, seed=9)
    labels = _rng(10).integers(0, shape[1], shape[0]).astype(label_dtype)
    logits_before = logits.copy()
    grad = np.full_like(logits, np.nan)
    loss = cpu.softmax_cross_entropy(logits, labels, grad)
    ref_loss, ref_grad = _cross_entropy_ref(logits, labels)
    assert isinstance(loss, float)
    assert abs(loss - ref_loss) <= TOLERANCE[dtype] * max(1.0, ref_loss)
    _assert_close(grad, ref_grad, dtype)
    np.testing.assert_array_equal(logits, logits_before)
    # Deterministic: the same call gives bit-identical results.
    grad_again = np.empty_like(grad)
    assert cpu.softmax_cross_entropy(logits, labels, grad_again) == loss
    np.testing.assert_array_equal(grad_again, grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_huge_logits(dtype):
    logits = _normal((16, 5), dtype, scale=1e4, seed=11)
    labels = np.arange(16) % 5
    grad = np.empty_like(logits)
    with np.errstate(all="raise"):
        loss = cpu.softmax_cross_entropy(logits, labels, grad)
    ref_loss, ref_grad = _cross_entropy_ref(logits, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert abs(loss - ref_loss) <= 1e-6 * ref_loss
    _assert_close(grad, ref_grad, dtype)


def test_softmax_cross_entropy_nan_logit_gives_nan_loss():
    logits = _normal((100, 10), np.float32, seed=12)
    logits[77, 3] = np.nan
    grad = np.empty_like(logits)
    assert np.isnan(cpu.softmax_cross_entropy(logits, np.zeros(100, np.int64), grad))


def test_softmax_cross_entropy_rejects_out_of_range_labels():
    logits = np.zeros((4, 3))
    grad = np.empty_like(logits)
    for bad in (3, -1):
        labels = np.array([0, 1, bad, 2])
        with pytest.raises(ValueError, match="labels"):
            cpu.softmax_cross_entropy(logits, labels, grad)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_cross_entropy_matches_reference(dtype, shape):
    logits = _normal(shape, dtype, seed=12)
    logits[0, :4] = [-1e4, 1e4, -90.0, 90.0]
    targets = _rng(13).random(shape).astype(dtype)
    grad = np.empty_like(logits)
    with np.errstate(all="raise"):
        loss = cpu.binary_cross_entropy(logits, targets, grad)
    ref_loss, ref_grad = _bce_ref(logits, targets)
    assert isinstance(loss, float) and np.isfinite(loss)
    assert abs(loss - ref_loss) <= TOLERANCE[dtype] * max(1.0, ref_loss)
    _assert_close(grad, ref_grad, dtype)


@pytest.mark.parametrize("shape", SHAPES + ((10,),))
@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_matches_reference(dtype, shape):
    outputs = _normal(shape, dtype, seed=14)
    targets = _normal(shape, dtype, seed=15)
    grad = np.empty_like(outputs)
    loss = cpu.mse(outputs, targets, grad)
    diff = outputs.astype(np.float64) - targets
    batch = shape[0]
    ref_loss = np.sum(diff * diff) / (2 * batch)
    assert isinstance(loss, float)
    assert abs(loss - ref_loss) <= TOLERANCE[dtype] * max(1.0, ref_loss)
    _assert_close(grad, diff / batch, dtype)


# --------------------------------------------------------------------------
# Optimizers (several steps against NumPy float64 formulas)
# --------------------------------------------------------------------------

OPTIMIZER_SIZES = (1000, 300_000)
STEPS = 5


def _params_and_grads(size, dtype):
    """Parameters ~ N(0, 1); gradients with 0.5 <= |g| <= 1.5.

    Keeping |g + wd p| away from 0 keeps the adaptive steps d / sqrt(v)
    well-conditioned, so float32 rounding of the inputs cannot flip them.
    """
    rng = _rng(16)
    p = rng.standard_normal(size).astype(dtype)
    grads = [(rng.choice([-1.0, 1.0], size) * rng.uniform(0.5, 1.5, size)
              ).astype(dtype) for _ in range(STEPS)]
    return p, grads


@pytest.mark.parametrize("momentum,nesterov,weight_decay",
                         [(0.0, False, 0.0), (0.0, False, 0.01),
                          (0.9, False, 0.0), (0.9, True, 0.01)])
@pytest.mark.parametrize("size", OPTIMIZER_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_matches_reference(dtype, size, momentum, nesterov, weight_decay):
    lr = 0.1
    p, grads = _params_and_grads(size, dtype)
    v = np.zeros_like(p) if momentum else None
    ref_p = p.astype(np.float64)
    ref_v = np.zeros(size)
    for g in grads:
        result = cpu.sgd_update_(p, g, v, lr, momentum, nesterov, weight_decay)
        assert result is p
        d = g + weight_decay * ref_p
        if momentum:
            ref_v = momentum * ref_v + d
            step = d + momentum * ref_v if nesterov else ref_v
        else:
            step = d
        ref_p = ref_p - lr * step
    assert p.dtype == dtype
    _assert_close(p, ref_p, dtype, relative=True)
    if momentum:
        _assert_close(v, ref_v, dtype, relative=True)


@pytest.mark.parametrize("weight_decay", (0.0, 0.01))
@pytest.mark.parametrize("size", OPTIMIZER_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_matches_reference(dtype, size, weight_decay):
    lr, beta1, beta2, eps = 1e-2, 0.9, 0.999, 1e-8
    p, grads = _params_and_grads(size, dtype)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    ref_p, ref_m, ref_v = p.astype(np.float64), np.zeros(size), np.zeros(size)
    for t, g in enumerate(grads, start=1):
        step_size = lr / (1 - beta1**t)
        bias_correction2_sqrt = np.sqrt(1 - beta2**t)
        result = cpu.adam_update_(p, g, m, v, step_size, bias_correction2_sqrt,
                                  beta1, beta2, eps, weight_decay)
        assert result is p
        d = g + weight_decay * ref_p
        ref_m = beta1 * ref_m + (1 - beta1) * d
        ref_v = beta2 * ref_v + (1 - beta2) * d * d
        ref_p = ref_p - step_size * ref_m / (
            np.sqrt(ref_v) / bias_correction2_sqrt + eps)
    _assert_close(p, ref_p, dtype, relative=True)
    _assert_close(m, ref_m, dtype, relative=True)
    _assert_close(v, ref_v, dtype, relative=True)


@pytest.mark.parametrize("weight_decay", (0.0, 0.01))
@pytest.mark.parametrize("size", OPTIMIZER_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsprop_matches_reference(dtype, size, weight_decay):
    lr, rho, eps = 1e-2, 0.99, 1e-8
    p, grads = _params_and_grads(size, dtype)
    v = np.zeros_like(p)
    ref_p, ref_v = p.astype(np.float64), np.zeros(size)
    for g in grads:
        result = cpu.rmsprop_update_(p, g, v, lr, rho, eps, weight_decay)
        assert result is p
        d = g + weight_decay * ref_p
        ref_v = rho * ref_v + (1 - rho) * d * d
        ref_p = ref_p - lr * d / (np.sqrt(ref_v) + eps)
    _assert_close(p, ref_p, dtype, relative=True)
    _assert_close(v, ref_v, dtype, relative=True)


# --------------------------------------------------------------------------
# Bias gradient
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + ((1001, 7), (3, 5), (8, 1)))
def test_bias_gradient_matches_reference(dtype, shape):
    delta = _normal(shape, dtype, scale=1.0, seed=42)
    out = np.full(shape[1], np.nan, dtype)
    assert cpu.bias_gradient_(delta, out) is out
    reference = delta.astype(np.float64).sum(axis=0)
    # float32 summation error grows with the number of rows
    tolerance = {np.float32: 1e-6, np.float64: 1e-12}[dtype] * np.sqrt(shape[0]) * 3.0
    assert np.max(np.abs(out - reference)) <= tolerance


def test_bias_gradient_propagates_nan():
    delta = np.ones((20, 4), np.float32)
    delta[13, 2] = np.nan
    out = cpu.bias_gradient_(delta, np.empty(4, np.float32))
    assert np.isnan(out[2]) and np.all(out[[0, 1, 3]] == 20.0)


# --------------------------------------------------------------------------
# Input-gradient GEMM
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, fan_in, fan_out", [(16, 512, 300), (64, 600, 512), (128, 512, 512), (8, 40, 10)])
def test_input_gradient_matches_reference(dtype, batch, fan_in, fan_out):
    """Both layouts (transposed for small batches of wide layers, direct otherwise) give delta W^T."""
    delta = _normal((batch, fan_out), dtype, scale=1.0, seed=40)
    W = _normal((fan_in, fan_out), dtype, scale=0.05, seed=41)
    out = np.full((batch, fan_in), np.nan, dtype)
    assert cpu.input_gradient_(delta, W, out) is out
    reference = delta.astype(np.float64) @ W.astype(np.float64).T
    # float32 GEMM rounding grows with the inner dimension
    tolerance = {np.float32: 1e-5, np.float64: 1e-12}[dtype] * np.sqrt(fan_out)
    assert np.max(np.abs(out - reference)) <= tolerance


def test_input_gradient_from_two_threads_at_once():
    """The transposed layout's cached buffer is per thread: concurrent calls of one shape do not mix."""
    from concurrent.futures import ThreadPoolExecutor

    W = _normal((512, 512), np.float32, scale=0.05, seed=43)
    deltas = [_normal((32, 512), np.float32, scale=1.0, seed=44 + k) for k in range(2)]
    expected = [d @ W.T for d in deltas]

    def many(k):
        out = np.empty((32, 512), np.float32)
        for _ in range(200):
            cpu.input_gradient_(deltas[k], W, out)
            if not np.allclose(out, expected[k], atol=1e-4):
                return False
        return True

    with ThreadPoolExecutor(2) as pool:
        assert all(pool.map(many, range(2)))


def test_transposed_input_gradient_only_for_small_batches_of_wide_layers():
    assert cpu.transposed_input_gradient_is_faster(32, 1024, 1024)
    assert not cpu.transposed_input_gradient_is_faster(256, 1024, 1024)
    assert not cpu.transposed_input_gradient_is_faster(32, 1024, 10)


# --------------------------------------------------------------------------
# No allocation in steady state
# --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_do_not_allocate(shape):
    dtype = np.float32
    z = _normal(shape, dtype, scale=1.0, seed=30)
    b = _normal(shape[1], dtype, scale=1.0, seed=31)
    delta = _normal(shape, dtype, scale=1.0, seed=32)
    grad = np.empty_like(z)
    labels = _rng(33).integers(0, shape[1], shape[0])
    targets = _rng(34).random(shape).astype(dtype)
    p = z.reshape(-1).copy()
    g = delta.reshape(-1).copy() * 1e-3
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    wide_W = _normal((512, 512), dtype, scale=0.1, seed=35)
    wide_delta = _normal((16, 512), dtype, scale=1.0, seed=36)
    wide_dx = np.empty((16, 512), dtype)
    assert cpu.transposed_input_gradient_is_faster(16, 512, 512)
    calls = [
        lambda: cpu.bias_activation_(z, b, "sigmoid"),
        lambda: cpu.bias_activation_(z, b, "tanh"),
        lambda: cpu.activation_backward_(delta, z, "sigmoid"),
        lambda: cpu.softmax_cross_entropy(z, labels, grad),
        lambda: cpu.binary_cross_entropy(z, targets, grad),
        lambda: cpu.mse(z, targets, grad),
        lambda: cpu.softmax_(z),
        lambda: cpu.sigmoid_(z),
        lambda: cpu.sgd_update_(p, g, v, 0.01, 0.9, True, 1e-4),
        lambda: cpu.adam_update_(p, g, m, v, 1e-3, 0.1, 0.9, 0.999, 1e-8, 1e-4),
        lambda: cpu.rmsprop_update_(p, g, v, 1e-3, 0.99, 1e-8, 1e-4),
        lambda: cpu.input_gradient_(wide_delta, wide_W, wide_dx),
        lambda: cpu.bias_gradient_(delta, b),
    ]
    for call in calls:  # warm-up (compilation, caches)
        call()
    array_bytes = z.nbytes
    tracemalloc.start()
    try:
        for call in calls:
            before, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            for _ in range(100):
                call()
            after, peak = tracemalloc.get_traced_memory()
            assert after - before <= 256, call
            # An array temporary would show up in the peak.
            assert peak - before < min(4096, array_bytes // 4), call
    finally:
        tracemalloc.stop()

"""CPU-only tests of the numba kernels: what the device contract (test_kernel_contract.py) does not cover.

The values, in-place behaviour and status rules of every kernel are held to
``gpubp.kernels.reference`` by the contract tests, on every device. Here:
the float32 math helpers, vectorization, the serial and ``parallel=True``
builds of each kernel agreeing (and the wrappers choosing between them by
``PARALLEL_THRESHOLD``), extreme inputs saturating without warnings, the
cross-entropy's 32-row log blocks, the two input-gradient layouts and their
per-thread buffers, and no allocation in steady state.
"""

import platform
import re
import tracemalloc
import warnings
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest

from gpubp.kernels import cpu, reference
from gpubp.kernels.contract import (ACTIVATIONS, KERNELS, NEEDS_PRE_ACTIVATION, STATUS_GRADIENT, STATUS_LOSS,
                                    STATUS_UPDATE)
from gpubp.kernels.fastmath import fast_exp, fast_tanh

DTYPES = (np.float32, np.float64)
# (32, 64) runs the serial kernels, (2048, 128) the parallel ones (see both_code_paths).
SHAPES = ((32, 64), (2048, 128))
# Max error vs a float64 reference of the same (already rounded) inputs, relative to max(1, |reference|).
TOLERANCE = {np.float32: 1e-6, np.float64: 1e-12}
SERIAL_ONLY, PARALLEL_ALWAYS = 1 << 62, 0


@pytest.fixture(autouse=True)
def both_code_paths(monkeypatch):
    """Enable the parallel kernels from 2**17 elements so SHAPES exercise both builds."""
    monkeypatch.setattr(cpu, "PARALLEL_THRESHOLD", 1 << 17)


def test_shapes_cover_both_code_paths():
    sizes = [rows * cols for rows, cols in SHAPES]
    assert min(sizes) < cpu.PARALLEL_THRESHOLD <= max(sizes)


def _rng(*seed):
    return np.random.default_rng(list(seed))


def _normal(shape, dtype, scale=3.0, seed=0):
    return (scale * _rng(seed).standard_normal(shape)).astype(dtype)


def _status(code=0, step=0):
    return np.array([code, step, 0, 0], np.int64)


def _assert_close(actual, expected, dtype):
    actual = np.asarray(actual, np.float64)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    error = np.abs(actual - expected) / np.maximum(1.0, np.abs(expected))
    assert np.nanmax(error) <= TOLERANCE[dtype], np.nanmax(error)


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
    x = np.geomspace(1e-30, 10.0, 200_001).astype(np.float32)
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
# Serial and parallel builds agree
# --------------------------------------------------------------------------

def _kernel_pairs():
    """{label: (serial, parallel)} for every pair built by ``cpu._serial_and_parallel``."""
    pairs = {}
    for attr, value in vars(cpu).items():
        if not attr.endswith("_KERNELS"):
            continue
        if isinstance(value, dict):
            pairs.update({f"{attr}[{key}]": pair for key, pair in value.items()})
        else:
            pairs[attr] = value
    return pairs


@pytest.fixture
def spied_pairs(monkeypatch):
    """Replaces every serial/parallel pair with recording wrappers; yields the set of (label, build) called."""
    called = set()

    def spy(fn, label, build):
        def wrapper(*args):
            called.add((label, build))
            return fn(*args)
        return wrapper

    for attr, value in list(vars(cpu).items()):
        if not attr.endswith("_KERNELS"):
            continue
        if isinstance(value, dict):
            for key, (serial, parallel) in value.items():
                label = f"{attr}[{key}]"
                monkeypatch.setitem(value, key, (spy(serial, label, "serial"), spy(parallel, label, "parallel")))
        else:
            serial, parallel = value
            monkeypatch.setattr(cpu, attr, (spy(serial, attr, "serial"), spy(parallel, attr, "parallel")))
    return called


def test_every_kernel_pair_is_a_serial_and_a_parallel_build():
    pairs = _kernel_pairs()
    assert len(pairs) >= 13
    for label, (serial, parallel) in pairs.items():
        assert not serial.targetoptions.get("parallel"), label
        assert parallel.targetoptions.get("parallel") is True, label
        assert parallel.py_func.__qualname__ == serial.py_func.__qualname__ + "_parallel", label


_UPDATE_HYPER = {
    "sgd": ("sgd_update_", ("v",), dict(hyper=np.array([0.1]), momentum=0.0, nesterov=False)),
    "sgd_momentum": ("sgd_update_", ("v",), dict(hyper=np.array([0.1]), momentum=0.9, nesterov=False)),
    "sgd_nesterov": ("sgd_update_", ("v",), dict(hyper=np.array([0.1]), momentum=0.9, nesterov=True)),
    "adam": ("adam_update_", ("m", "v"), dict(hyper=np.array([0.1, 0.0316]), beta1=0.9, beta2=0.999, eps=1e-8)),
    "rmsprop": ("rmsprop_update_", ("v",), dict(hyper=np.array([0.01]), rho=0.99, eps=1e-8)),
}


#: Each update is run with a clear status, a NaN gradient, an overflowing update and a status already
#: set; the status [code, step] each must leave (step 9 in every call).
UPDATE_SCENARIOS = {"clear": [0, 0], "nan_gradient": [STATUS_GRADIENT, 9], "overflow": [STATUS_UPDATE, 9],
                    "status_set": [STATUS_LOSS, 4]}


def _update_case(update, scenario):
    kernel, state_names, hyper = _UPDATE_HYPER[update]

    def build(dtype, size):
        rng = _rng(50, size)
        p = rng.standard_normal(size).astype(dtype)
        g = (rng.choice([-1.0, 1.0], size) * rng.uniform(0.5, 1.5, size)).astype(dtype)
        state = {name: np.abs(rng.standard_normal(size)).astype(dtype) for name in state_names}
        status = _status()
        args = dict(hyper)
        if scenario == "nan_gradient":
            g[-1] = np.nan
        elif scenario == "overflow":
            p[-1], g[-1] = -0.9 * np.finfo(dtype).max, np.finfo(dtype).max / 2
            if kernel != "adam_update_":
                args["hyper"] = np.array([1.0])
        elif scenario == "status_set":
            status = _status(STATUS_LOSS, 4)
        values = dict(p=p, g=g, **state, **args, weight_decay=0.01, n_decayed=size // 2, status=status, clock=np.array([9]))
        return kernel, {name: values[name] for name in KERNELS[kernel].args}

    return build


def _array_case(kernel, make):
    return lambda dtype, size: (kernel, make(dtype, size))


def _two_d(size):
    return (7, 3) if size < 100 else (1001, 70)


def _losses(kernel, bad_label=False, **parameters):
    def make(dtype, size):
        shape = _two_d(size)
        outputs = _normal(shape, dtype, seed=51)
        if kernel == "softmax_cross_entropy":
            second = _rng(52).integers(0, shape[1], shape[0]).astype(np.int64)
            if bad_label:
                second[-1] = shape[1]  # in the last, partial 32-row block
        elif kernel == "binary_cross_entropy":
            second = _rng(52).random(shape).astype(dtype)
        else:
            second = _normal(shape, dtype, seed=52)
        names = KERNELS[kernel].args
        return {names[0]: outputs, names[1]: second, "grad": np.full_like(outputs, np.nan), "loss": np.zeros(1),
                **parameters}
    return _array_case(kernel, make)


def _with_nan(shape, dtype, seed):
    x = _normal(shape, dtype, seed=seed)
    x.flat[-1] = np.nan
    x.flat[0] = 1e4
    return x


AGREEMENT_CASES = {
    **{f"bias_{name}": _array_case("bias_activation_", lambda dtype, size, name=name: dict(
        z=_with_nan(_two_d(size), dtype, 53), b=_normal(_two_d(size)[1], dtype, seed=54), activation=name,
        alpha=0.3, pre=np.zeros(_two_d(size), dtype) if name in NEEDS_PRE_ACTIVATION else None))
       for name in ACTIVATIONS},
    **{f"backward_{name}": _array_case("activation_backward_", lambda dtype, size, name=name: dict(
        dy=_normal(_two_d(size), dtype, seed=55), y=np.tanh(_normal(_two_d(size), dtype, seed=56)), activation=name,
        alpha=0.3, pre=_normal(_two_d(size), dtype, seed=60) if name in NEEDS_PRE_ACTIVATION else None))
       for name in ACTIVATIONS if name != "linear"},
    "sigmoid": _array_case("sigmoid_", lambda dtype, size: dict(x=_with_nan((3,) + _two_d(size), dtype, 57))),
    "softmax": _array_case("softmax_", lambda dtype, size: dict(x=_normal(_two_d(size), dtype, seed=58))),
    "cross_entropy": _losses("softmax_cross_entropy", label_smoothing=0.0),
    "cross_entropy_smoothed": _losses("softmax_cross_entropy", label_smoothing=0.1),
    "cross_entropy_bad_label": _losses("softmax_cross_entropy", bad_label=True, label_smoothing=0.1),
    "bce": _losses("binary_cross_entropy"),
    "mse": _losses("mse"),
    "huber": _losses("huber", delta=1.0),
    "mae": _losses("mae"),
    **{f"weighted_{name}": _array_case("weighted_loss", lambda dtype, size, name=name: dict(
        loss_name=name, outputs=_normal(_two_d(size), dtype, seed=61),
        targets=(_rng(62).integers(0, _two_d(size)[1], _two_d(size)[0]).astype(np.int64)
                 if name == "softmax_cross_entropy" else _rng(62).random(_two_d(size)).astype(dtype)),
        weights=_rng(63).random(_two_d(size)[0]) * 3, grad=np.full(_two_d(size), np.nan, dtype), loss=np.zeros(1),
        parameter=0.1 if name == "softmax_cross_entropy" else 1.0))
       for name in ("softmax_cross_entropy", "mse")},
    "dropout": _array_case("dropout_", lambda dtype, size: dict(
        x=_with_nan(_two_d(size), dtype, 59), out=np.zeros(_two_d(size), dtype), rate=0.3,
        seed=np.array([11, 0]), clock=np.array([2**40 + 3]), layer=2)),
    **{f"{update}_{scenario}": _update_case(update, scenario) for update in _UPDATE_HYPER
       for scenario in UPDATE_SCENARIOS},
}


#: Kernels that sum along rows (under fast-math reassociation): their bits depend on how LLVM vectorized the
#: sum, which differs between a process that compiles them and one that loads numba's on-disk cache (measured:
#: up to 4 ulp). Every other kernel must agree bit for bit.
ROW_REDUCTIONS = ("softmax_", "softmax_cross_entropy")


def _run(kernel, args):
    copies = {name: value.copy() if isinstance(value, np.ndarray) else value for name, value in args.items()}
    assert getattr(cpu, kernel)(*copies.values()) is None
    return copies


@pytest.mark.parametrize("size", (7, 70_001))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", AGREEMENT_CASES)
def test_serial_and_parallel_builds_agree(monkeypatch, spied_pairs, case, dtype, size):
    """Same inputs through the serial build (threshold off) and the parallel one (threshold 0).

    Elementwise results must be bit-identical; only the float64 loss sums may differ in rounding.
    """
    kernel, args = AGREEMENT_CASES[case](dtype, size)
    results = {}
    for threshold, build in ((SERIAL_ONLY, "serial"), (PARALLEL_ALWAYS, "parallel")):
        monkeypatch.setattr(cpu, "PARALLEL_THRESHOLD", threshold)
        spied_pairs.clear()
        results[build] = _run(kernel, args)
        assert {b for _, b in spied_pairs} == {build}, f"the wrapper ran {spied_pairs}, expected the {build} build"
    serial, parallel = results["serial"], results["parallel"]
    for name in KERNELS[kernel].writes:
        if name == "loss":  # float64 sums of row or element losses, in another order
            np.testing.assert_allclose(parallel["loss"], serial["loss"], rtol=max(1e-12, 8 * np.finfo(dtype).eps))
        elif kernel in ROW_REDUCTIONS:
            # relative to the largest value too: with label smoothing softmax - q cancels to tiny values
            scale = float(np.nanmax(np.abs(serial[name]))) if np.isfinite(serial[name]).any() else 0.0
            np.testing.assert_allclose(parallel[name], serial[name], rtol=8 * np.finfo(dtype).eps,
                                       atol=8 * np.finfo(dtype).eps * scale, err_msg=name)
        else:
            np.testing.assert_array_equal(parallel[name], serial[name], err_msg=name)
    if "status" in serial:
        scenario = next(name for name in UPDATE_SCENARIOS if case.endswith(name))
        np.testing.assert_array_equal(parallel["status"][:2], UPDATE_SCENARIOS[scenario])
    if case == "cross_entropy_bad_label":
        assert np.isnan(parallel["loss"][0])


def test_agreement_cases_exercise_every_kernel_pair(monkeypatch, spied_pairs):
    """Each serial/parallel pair (a new one too) is run, both builds, by test_serial_and_parallel_builds_agree."""
    for threshold in (SERIAL_ONLY, PARALLEL_ALWAYS):
        monkeypatch.setattr(cpu, "PARALLEL_THRESHOLD", threshold)
        for build in AGREEMENT_CASES.values():
            _run(*build(np.float32, 7))
    assert spied_pairs == {(label, b) for label in _kernel_pairs() for b in ("serial", "parallel")}


def test_threshold_picks_the_build_by_size(monkeypatch, spied_pairs):
    monkeypatch.setattr(cpu, "PARALLEL_THRESHOLD", 100)
    cpu.sigmoid_(np.zeros(99))
    assert spied_pairs == {("_SIGMOID_KERNELS", "serial")}
    cpu.sigmoid_(np.zeros(100))
    assert spied_pairs == {("_SIGMOID_KERNELS", "serial"), ("_SIGMOID_KERNELS", "parallel")}


@pytest.mark.parametrize("threshold", (SERIAL_ONLY, PARALLEL_ALWAYS), ids=("serial", "parallel"))
@pytest.mark.parametrize("update", _UPDATE_HYPER)
def test_updates_never_write_outside_their_arrays(monkeypatch, update, threshold):
    """p, g and the state are views into larger buffers; n_decayed beyond p.size must not reach past its end."""
    monkeypatch.setattr(cpu, "PARALLEL_THRESHOLD", threshold)
    kernel, state_names, hyper = _UPDATE_HYPER[update]
    size, spare = 33, 16
    buffers = {name: np.full(size + spare, 0.5, np.float32) for name in ("p", "g") + state_names}
    views = {name: buffer[:size] for name, buffer in buffers.items()}
    status = _status()
    values = dict(views, **hyper, weight_decay=0.1, n_decayed=size + spare, status=status, clock=np.array([1]))
    assert getattr(cpu, kernel)(*[values[name] for name in KERNELS[kernel].args]) is None
    assert status[0] == 0 and np.all(views["p"] != 0.5), "the update was applied"
    for name, buffer in buffers.items():
        np.testing.assert_array_equal(buffer[size:], 0.5, err_msg=f"{name} written past its end")


# --------------------------------------------------------------------------
# Extreme inputs saturate without warnings
# --------------------------------------------------------------------------

EXTREMES = [-1e4, -1e3, -100.0, -89.0, -30.0, 0.0, 30.0, 89.0, 100.0, 1e3, 1e4]


@pytest.mark.parametrize("threshold", (SERIAL_ONLY, PARALLEL_ALWAYS), ids=("serial", "parallel"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_inputs_saturate_without_warnings(monkeypatch, dtype, threshold):
    monkeypatch.setattr(cpu, "PARALLEL_THRESHOLD", threshold)
    values = np.array(EXTREMES, dtype)
    z = np.tile(values, (4, 1))
    b = np.zeros(values.size, dtype)
    sig, tanh, flat = z.copy(), z.copy(), z.copy()
    huge = _normal((64, 10), dtype, scale=1e4, seed=8)
    huge[0] = 1e30
    soft = huge.copy()
    grad = np.empty_like(huge)
    bce_grad = np.empty_like(z)
    loss, bce_loss = np.zeros(1), np.zeros(1)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        cpu.bias_activation_(sig, b, "sigmoid")
        cpu.bias_activation_(tanh, b, "tanh")
        cpu.sigmoid_(flat)
        cpu.softmax_(soft)
        cpu.softmax_cross_entropy(huge, np.arange(64, dtype=np.int64) % 10, grad, loss, 0.0)
        cpu.binary_cross_entropy(z, (np.arange(z.size).reshape(z.shape) % 2).astype(dtype), bce_grad, bce_loss)
    for out in (sig, tanh, flat, soft, grad, bce_grad):
        assert np.all(np.isfinite(out))
    assert np.all(sig[:, -4:] == 1.0) and np.all((sig[:, :4] >= 0.0) & (sig[:, :4] < 1e-37))
    np.testing.assert_array_equal(flat, sig)
    assert np.all(tanh[:, -4:] == 1.0) and np.all(tanh[:, :4] == -1.0)
    with np.errstate(over="ignore"):
        _assert_close(sig, 1 / (1 + np.exp(-z.astype(np.float64))), dtype)
    _assert_close(tanh, np.tanh(z.astype(np.float64)), dtype)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=10 * TOLERANCE[dtype])
    assert np.isfinite(loss[0]) and np.isfinite(bce_loss[0])
    expected_loss, expected_grad = np.zeros(1), np.empty(huge.shape)
    reference.softmax_cross_entropy(huge, np.arange(64) % 10, expected_grad, expected_loss, 0.0)
    assert abs(loss[0] - expected_loss[0]) <= 1e-6 * expected_loss[0]
    _assert_close(grad, expected_grad, dtype)


# --------------------------------------------------------------------------
# Cross-entropy: one log per block of 32 rows
# --------------------------------------------------------------------------

@pytest.mark.parametrize("threshold", (SERIAL_ONLY, PARALLEL_ALWAYS), ids=("serial", "parallel"))
@pytest.mark.parametrize("rows", (1, 31, 32, 33, 63, 64, 65, 1001))
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_at_row_counts_off_the_log_blocks(monkeypatch, dtype, rows, threshold):
    monkeypatch.setattr(cpu, "PARALLEL_THRESHOLD", threshold)
    logits = _normal((rows, 10), dtype, seed=9)
    labels = _rng(10, rows).integers(0, 10, rows).astype(np.int64)
    grad, loss = np.full_like(logits, np.nan), np.zeros(1)
    cpu.softmax_cross_entropy(logits, labels, grad, loss, 0.0)
    expected_grad, expected_loss = np.empty((rows, 10)), np.zeros(1)
    reference.softmax_cross_entropy(logits.astype(np.float64), labels, expected_grad, expected_loss, 0.0)
    assert abs(loss[0] - expected_loss[0]) <= TOLERANCE[dtype] * max(1.0, expected_loss[0])
    assert np.max(np.abs(grad - expected_grad)) <= TOLERANCE[dtype] / rows
    # deterministic: the same call gives bit-identical results
    grad_again, loss_again = np.empty_like(grad), np.zeros(1)
    cpu.softmax_cross_entropy(logits, labels, grad_again, loss_again, 0.0)
    assert loss_again[0] == loss[0]
    np.testing.assert_array_equal(grad_again, grad)


@pytest.mark.parametrize("threshold", (SERIAL_ONLY, PARALLEL_ALWAYS), ids=("serial", "parallel"))
@pytest.mark.parametrize("rows", (31, 32, 33, 65))
def test_softmax_cross_entropy_block_product_of_wide_rows_stays_finite(monkeypatch, rows, threshold):
    """Equal logits: each row's softmax sum is K, so a full block multiplies 32 factors of K = 20000 (1e137)."""
    monkeypatch.setattr(cpu, "PARALLEL_THRESHOLD", threshold)
    width = 20_000
    logits = np.full((rows, width), 0.25)
    labels = (np.arange(rows, dtype=np.int64) * 7919) % width
    grad, loss = np.empty_like(logits), np.zeros(1)
    cpu.softmax_cross_entropy(logits, labels, grad, loss, 0.0)
    assert abs(loss[0] - np.log(width)) <= 1e-12 * np.log(width)


# --------------------------------------------------------------------------
# Bias gradient (eight rows per pass, then the remainder)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("row", (0, 13, 15, 16, 19))  # in the 8-row passes, and in the remainder
@pytest.mark.parametrize("value", (np.nan, np.inf))
def test_bias_gradient_propagates_non_finite_values(row, value):
    delta = np.ones((20, 4), np.float32)
    delta[row, 2] = value
    out = np.empty(4, np.float32)
    assert cpu.bias_gradient_(delta, out) is None
    assert (np.isnan(out[2]) if np.isnan(value) else out[2] == np.inf)
    np.testing.assert_array_equal(out[[0, 1, 3]], 20.0)


def test_bias_gradient_of_opposite_infinities_is_nan():
    delta = np.zeros((11, 2))
    delta[2, 1], delta[9, 1] = np.inf, -np.inf  # one in the 8-row pass, one in the remainder
    out = np.empty(2)
    cpu.bias_gradient_(delta, out)
    assert out[0] == 0.0 and np.isnan(out[1])


# --------------------------------------------------------------------------
# Input-gradient GEMM: two layouts
# --------------------------------------------------------------------------

INPUT_GRADIENT_SHAPES = [(16, 512, 300), (64, 600, 512), (128, 512, 512), (8, 40, 10), (1, 256, 256)]


def test_input_gradient_shapes_cover_both_layouts():
    layouts = {cpu.transposed_input_gradient_is_faster(*shape) for shape in INPUT_GRADIENT_SHAPES}
    assert layouts == {True, False}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, fan_in, fan_out", INPUT_GRADIENT_SHAPES)
def test_input_gradient_matches_reference(dtype, batch, fan_in, fan_out):
    """Both layouts (transposed for small batches of wide layers, direct otherwise) give delta W^T."""
    delta = _normal((batch, fan_out), dtype, scale=1.0, seed=40)
    W = _normal((fan_in, fan_out), dtype, scale=0.05, seed=41)
    out = np.full((batch, fan_in), np.nan, dtype)
    assert cpu.input_gradient_(delta, W, out) is None
    expected = delta.astype(np.float64) @ W.astype(np.float64).T
    # float32 GEMM rounding grows with the inner dimension
    tolerance = {np.float32: 1e-5, np.float64: 1e-12}[dtype] * np.sqrt(fan_out)
    assert np.max(np.abs(out - expected)) <= tolerance
    # the transposed layout's cached buffer is reused, not shared with the result
    again = np.empty_like(out)
    cpu.input_gradient_(delta, W, again)
    np.testing.assert_array_equal(again, out)


def test_input_gradient_from_two_threads_at_once():
    """The transposed layout's cached buffer is per thread: concurrent calls of one shape do not mix."""
    assert cpu.transposed_input_gradient_is_faster(32, 512, 512)
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
    loss = np.zeros(1)
    status = _status()
    labels = _rng(33).integers(0, shape[1], shape[0])
    targets = _rng(34).random(shape).astype(dtype)
    p = z.reshape(-1).copy()
    g = delta.reshape(-1).copy() * 1e-3
    velocity, m, v = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)  # Adam's v must stay >= 0
    n_decayed = p.size // 2
    x_small = _normal((shape[0], 16), dtype, scale=1.0, seed=37)
    weight_grad = np.empty((16, shape[1]), dtype)
    wide_W = _normal((512, 512), dtype, scale=0.1, seed=35)
    wide_delta = _normal((16, 512), dtype, scale=1.0, seed=36)
    wide_dx = np.empty((16, 512), dtype)
    assert cpu.transposed_input_gradient_is_faster(16, 512, 512)
    clock, lr, adam_hyper = np.array([1]), np.array([0.01]), np.array([1e-3, 0.1])
    calls = [
        lambda: cpu.bias_activation_(z, b, "sigmoid"),
        lambda: cpu.bias_activation_(z, b, "tanh"),
        lambda: cpu.activation_backward_(delta, z, "sigmoid"),
        lambda: cpu.activation_backward_(delta, z, "linear"),
        lambda: cpu.softmax_cross_entropy(z, labels, grad, loss, 0.0),
        lambda: cpu.binary_cross_entropy(z, targets, grad, loss),
        lambda: cpu.mse(z, targets, grad, loss),
        lambda: cpu.softmax_(z),
        lambda: cpu.sigmoid_(z),
        lambda: cpu.check_finite_(loss, status, STATUS_LOSS, clock),
        lambda: cpu.clip_by_value_(g, 1.0),
        lambda: cpu.clip_by_norm_(g, 1e9),
        lambda: cpu.sgd_update_(p, g, None, lr, 0.0, False, 1e-4, n_decayed, status, clock),
        lambda: cpu.sgd_update_(p, g, velocity, lr, 0.9, True, 1e-4, n_decayed, status, clock),
        lambda: cpu.adam_update_(p, g, m, v, adam_hyper, 0.9, 0.999, 1e-8, 1e-4, n_decayed, status, clock),
        lambda: cpu.rmsprop_update_(p, g, v, lr, 0.99, 1e-8, 1e-4, n_decayed, status, clock),
        lambda: cpu.weight_gradient_(x_small, delta, weight_grad),
        lambda: cpu.input_gradient_(wide_delta, wide_W, wide_dx),
        lambda: cpu.bias_gradient_(delta, b),
    ]
    for call in calls:  # warm-up (compilation, caches)
        call()
    assert status[0] == 0, "the updates must run (status clear), not return early"
    array_bytes = z.nbytes
    tracemalloc.start()
    try:
        for index, call in enumerate(calls):
            # one call under tracing first: a fresh argument tuple that then stays on CPython's free list
            # (13 arguments: 160 bytes) would otherwise count as growth
            call()
            before, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            for _ in range(100):
                call()
            after, peak = tracemalloc.get_traced_memory()
            assert after - before <= 256, (index, after - before)
            # An array temporary would show up in the peak.
            assert peak - before < min(4096, array_bytes // 4), (index, peak - before)
    finally:
        tracemalloc.stop()
    assert status[0] == 0

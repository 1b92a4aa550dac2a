"""The kernel contract (``gpubp.kernels.contract``), held against every device implementation.

One set of tests, parameterized over devices. Each device is a small adapter
(:class:`Device`: its kernel module and how arrays move to and from it), so a
new device is one more entry of :data:`DEVICE_FACTORIES` and :data:`DEVICES`.
Values are compared against ``gpubp.kernels.reference`` run in float64 on
NumPy copies of the same (already rounded) inputs; behaviour is checked too:
every kernel returns None and writes only the arrays its spec lists, the
guarded optimizer updates keep the status record's rules, bad labels give a
NaN loss, unknown activations raise ValueError.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

from gpubp.kernels import reference
from gpubp.kernels.contract import (ACTIVATION_ALPHA, ACTIVATIONS, KERNELS, MATMUL_PRECISIONS, NEEDS_PRE_ACTIVATION,
                                    STATUS_GRADIENT, STATUS_LOSS, STATUS_UPDATE, missing_pre_activation,
                                    unknown_activation)
from helpers import gpu_sim, requires_gpu

# --------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class Device:
    """A kernel module and the two array transfers the tests need."""

    name: str
    module: object
    to_device: Callable  # NumPy array -> a new device array (never a view of the argument)
    to_host: Callable  # device array -> a new NumPy array


def _cpu_device():
    from gpubp.kernels import cpu

    return Device("cpu", cpu, lambda a: np.array(a, copy=True), lambda a: np.array(a, copy=True))


def _gpu_device():
    import cupy

    from gpubp.kernels import cuda

    return Device("gpu", cuda, cupy.array, cupy.asnumpy)


def _simulated_device():
    from gpubp.kernels import cuda

    return Device("gpu-sim", cuda, lambda a: np.array(a, copy=True), lambda a: np.array(a, copy=True))


DEVICE_FACTORIES = {"cpu": _cpu_device, "gpu": _gpu_device, "gpu-sim": _simulated_device}
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("gpu", id="gpu", marks=[pytest.mark.gpu, requires_gpu]),
    pytest.param("gpu-sim", id="gpu-sim", marks=gpu_sim),
]


@pytest.fixture(scope="module", params=DEVICES)
def device(request):
    return DEVICE_FACTORIES[request.param]()


# --------------------------------------------------------------------------- coverage bookkeeping

COVERED = set()


def covers(*names):
    """Marks a test as a contract test of the kernels ``names`` (see test_every_kernel_has_a_contract_test)."""
    for name in names:
        assert name in KERNELS, f"{name!r} is not a kernel of the contract"
    COVERED.update(names)
    return lambda test: test


# --------------------------------------------------------------------------- running a kernel

DTYPES = (np.float32, np.float64)
BATCHES = (1, 7, 33, 1001)
WIDTHS = (1, 3, 70)
SHAPES = tuple((b, w) for b in BATCHES for w in WIDTHS)
FLAT_SIZES = (1, 7, 33, 1001)
# Max error against the float64 reference, relative to max(1, |reference|). float32: the CPU's
# polynomial exp is accurate to ~2 ulp, and rounding the result costs another ulp or two.
TOLERANCE = {np.float32: 1e-6, np.float64: 1e-12}


def _rng(*seed):
    return np.random.default_rng(list(seed))


def _normal(shape, dtype, scale=3.0, seed=0):
    return (scale * _rng(seed, *np.atleast_1d(shape)).standard_normal(shape)).astype(dtype)


def _large(device):
    """A size past several blocks and partial at the end: 1001 (37 on the simulated GPU, a Python thread per
    CUDA thread, where it still spans blocks of 8 threads)."""
    return 37 if device.name == "gpu-sim" else 1001


def _clock(step):
    """The (1,) int64 optimizer step the kernels read on the device."""
    return np.array([step], np.int64)


def _fresh_status(code=0, step=0):
    return np.array([code, step, 0, 0], np.int64)


def _ordered(name, values):
    """``values`` (a dict) in the argument order of the kernel's spec."""
    spec = KERNELS[name]
    assert set(values) == set(spec.args), (name, sorted(values))
    return {arg: values[arg] for arg in spec.args}


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.ascontiguousarray(a).tobytes() == \
        np.ascontiguousarray(b).tobytes()


def run_device(device, name, **args):
    """Run kernel ``name`` of ``device`` on device copies of the NumPy ``args`` (positionally, in spec order).

    Asserts it returns None and leaves every array it does not list in ``writes`` bit-identical;
    returns every array argument as it is after the call, on the host.
    """
    spec = KERNELS[name]
    args = _ordered(name, args)
    arrays = [arg for arg, value in args.items() if isinstance(value, np.ndarray)]
    on_device = {arg: device.to_device(value) if arg in arrays else value for arg, value in args.items()}
    result = getattr(device.module, name)(*on_device.values())
    assert result is None, f"{device.name}.{name} returned {type(result).__name__}, not None"
    after = {arg: device.to_host(on_device[arg]) for arg in arrays}
    for arg in arrays:
        assert after[arg].dtype == args[arg].dtype and after[arg].shape == args[arg].shape, arg
        if arg not in spec.writes:
            assert _same_bits(after[arg], args[arg]), f"{device.name}.{name} wrote its input {arg!r}"
    return after


def run_reference(name, **args):
    """Run ``reference.<name>`` on float64 NumPy copies of ``args``; returns the arrays after the call."""
    with np.errstate(all="ignore"):
        copies = {arg: (value.astype(np.float64) if value.dtype.kind == "f" else value.copy())
                  if isinstance(value, np.ndarray) else value for arg, value in _ordered(name, args).items()}
        assert getattr(reference, name)(*copies.values()) is None
    return {arg: value for arg, value in copies.items() if isinstance(value, np.ndarray)}


def assert_close(actual, expected, dtype, scale=1.0, factor=1.0):
    """|actual - expected| <= factor * TOLERANCE * max(scale, |expected|); NaN/Inf exactly where expected has them."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), "NaN pattern differs")
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(actual[~finite], expected[~finite])
    if finite.any():
        with np.errstate(invalid="ignore"):
            floor = max(float(scale), np.finfo(np.float64).tiny)
            error = np.abs(actual[finite] - expected[finite]) / np.maximum(floor, np.abs(expected[finite]))
        assert np.max(error) <= factor * TOLERANCE[dtype], f"max scaled error {np.max(error):.3g}"


def assert_gemm_close(actual, expected, abs_a, abs_b, inner, dtype):
    """The classic GEMM/sum rounding bound |fl(AB) - AB| <= 2 n eps |A||B| (plus a tiny floor)."""
    bound = 2 * max(inner, 1) * np.finfo(dtype).eps * (abs_a @ abs_b) + np.finfo(dtype).tiny
    assert np.all(np.abs(np.asarray(actual, np.float64) - expected) <= bound)


# --------------------------------------------------------------------------- the contract itself


def test_every_kernel_has_a_contract_test():
    """A kernel added to the contract without a test here fails this test."""
    assert set(KERNELS) - COVERED == set(), "kernels without a contract test"


def test_reference_implements_every_kernel_with_the_contract_arguments():
    for name, spec in KERNELS.items():
        assert tuple(inspect.signature(getattr(reference, name)).parameters) == spec.args, name


def test_device_implements_every_kernel_with_the_contract_arguments(device):
    for name, spec in KERNELS.items():
        fn = getattr(device.module, name, None)
        assert callable(fn), f"{device.name} lacks {name}"
        assert tuple(inspect.signature(fn).parameters) == spec.args, name
        assert name in device.module.__all__, name


def test_every_spec_writes_only_its_own_arguments():
    for name, spec in KERNELS.items():
        assert set(spec.writes) <= set(spec.args), name


# --------------------------------------------------------------------------- activations


#: A value of ``alpha`` other than the default for each activation that takes one (others get None).
OTHER_ALPHA = {"leaky_relu": 0.2, "elu": 0.7}
assert set(OTHER_ALPHA) == set(ACTIVATION_ALPHA)


def _pre_buffer(activation, shape, dtype):
    """A NaN-filled ``pre`` for the activations that keep their pre-activation, else None."""
    return np.full(shape, np.nan, dtype) if activation in NEEDS_PRE_ACTIVATION else None


@covers("bias_activation_")
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_activation(device, dtype, shape, activation):
    z = _normal(shape, dtype, seed=1)
    z.flat[-1] = np.nan  # NaN stays NaN through every activation
    if z.size > 2:
        z.flat[0], z.flat[1] = 1e4, -1e4  # saturation
    b = _normal(shape[1], dtype, seed=2)
    args = dict(z=z, b=b, activation=activation, alpha=OTHER_ALPHA.get(activation),
                pre=_pre_buffer(activation, shape, dtype))
    after, expected = run_device(device, "bias_activation_", **args), run_reference("bias_activation_", **args)
    assert_close(after["z"], expected["z"], dtype)
    if args["pre"] is not None:  # z + b, rounded once
        np.testing.assert_array_equal(after["pre"], z + b)


@covers("activation_backward_")
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_backward(device, dtype, shape, activation):
    z = _normal(shape, dtype, seed=3)
    alpha = OTHER_ALPHA.get(activation)
    y = run_reference("bias_activation_", z=z, b=np.zeros(shape[1]), activation=activation, alpha=alpha,
                      pre=None)["z"].astype(dtype)
    dy = _normal(shape, dtype, scale=1.0, seed=4)
    dy.flat[-1] = np.nan  # relu: 0 where y <= 0 even then (a select), NaN elsewhere
    args = dict(dy=dy, y=y, activation=activation, alpha=alpha,
                pre=z if activation in NEEDS_PRE_ACTIVATION else None)
    assert_close(run_device(device, "activation_backward_", **args)["y"],
                 run_reference("activation_backward_", **args)["y"], dtype)


@covers("bias_activation_", "activation_backward_")
@pytest.mark.parametrize("activation", sorted(ACTIVATION_ALPHA))
def test_activation_alpha_none_is_the_default(device, activation):
    z, b = _normal((7, 3), np.float64, seed=5), _normal(3, np.float64, seed=6)
    default = ACTIVATION_ALPHA[activation]
    forward = dict(z=z, b=b, activation=activation, pre=None)
    np.testing.assert_array_equal(run_device(device, "bias_activation_", alpha=None, **forward)["z"],
                                  run_device(device, "bias_activation_", alpha=default, **forward)["z"])
    y = run_reference("bias_activation_", alpha=default, **forward)["z"]
    backward = dict(dy=np.ones_like(y), y=y, activation=activation, pre=None)
    np.testing.assert_array_equal(run_device(device, "activation_backward_", alpha=None, **backward)["y"],
                                  run_device(device, "activation_backward_", alpha=default, **backward)["y"])
    assert not np.array_equal(y, run_reference("bias_activation_", alpha=OTHER_ALPHA[activation], **forward)["z"])


@covers("bias_activation_", "activation_backward_")
@pytest.mark.parametrize("activation", NEEDS_PRE_ACTIVATION)
def test_pre_activation_is_optional_forward_and_required_backward(device, activation):
    z, b = _normal((7, 3), np.float64, seed=7), _normal(3, np.float64, seed=8)
    args = dict(z=z, b=b, activation=activation, alpha=None)
    np.testing.assert_array_equal(run_device(device, "bias_activation_", pre=None, **args)["z"],
                                  run_device(device, "bias_activation_", pre=np.empty_like(z), **args)["z"])
    with pytest.raises(ValueError) as error:
        run_device(device, "activation_backward_", dy=z, y=z.copy(), activation=activation, alpha=None, pre=None)
    assert str(error.value) == str(missing_pre_activation(activation))


@covers("bias_activation_", "activation_backward_")
@pytest.mark.parametrize("name", ["mish", "", "ReLU", None])
def test_unknown_activation_raises_value_error(device, name):
    z, b = np.ones((3, 2)), np.zeros(2)
    expected = str(unknown_activation(name))
    with pytest.raises(ValueError) as error:
        run_device(device, "bias_activation_", z=z, b=b, activation=name, alpha=None, pre=None)
    assert str(error.value) == expected
    with pytest.raises(ValueError) as error:
        run_device(device, "activation_backward_", dy=z, y=z.copy(), activation=name, alpha=None, pre=None)
    assert str(error.value) == expected


@covers("bias_activation_", "activation_backward_")
def test_unknown_activation_writes_nothing(device):
    z = device.to_device(np.ones((3, 2)))
    with pytest.raises(ValueError):
        device.module.bias_activation_(z, device.to_device(np.full(2, 5.0)), "swish")
    with pytest.raises(ValueError):
        device.module.activation_backward_(device.to_device(np.zeros((3, 2))), z, "swish")
    np.testing.assert_array_equal(device.to_host(z), np.ones((3, 2)))


@covers("sigmoid_")
@pytest.mark.parametrize("shape", ((1,), (33,), (7, 70), (1001, 3), (4, 8, 9)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid(device, dtype, shape):
    x = _normal(shape, dtype, scale=10.0, seed=5)
    x.flat[0] = np.nan
    if x.size >= 5:
        x.flat[1:5] = [-1e4, 1e4, -np.inf, np.inf]
    after = run_device(device, "sigmoid_", x=x)["x"]
    assert_close(after, run_reference("sigmoid_", x=x)["x"], dtype)
    finite = ~np.isnan(x)
    assert np.all((after[finite] >= 0) & (after[finite] <= 1))


@covers("softmax_")
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax(device, dtype, shape):
    x = _normal(shape, dtype, seed=6)
    x[0] *= 1e4  # huge logits in one row
    after = run_device(device, "softmax_", x=x)["x"]
    assert_close(after, run_reference("softmax_", x=x)["x"], dtype)
    np.testing.assert_allclose(after.sum(axis=1), 1.0, rtol=0, atol=10 * TOLERANCE[dtype])


# --------------------------------------------------------------------------- losses


def _loss_array():
    return np.full(1, -7.0)  # not a valid loss: the kernel must overwrite it


@covers("softmax_cross_entropy")
@pytest.mark.parametrize("label_smoothing", (0.0, 0.2))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy(device, dtype, shape, label_smoothing):
    logits = _normal(shape, dtype, seed=7)
    labels = _rng(8, *shape).integers(0, shape[1], shape[0]).astype(np.int64)
    args = dict(logits=logits, labels=labels, grad=np.full_like(logits, np.nan), loss=_loss_array(),
                label_smoothing=label_smoothing)
    after = run_device(device, "softmax_cross_entropy", **args)
    expected = run_reference("softmax_cross_entropy", **args)
    assert after["loss"].dtype == np.float64 and np.isfinite(after["loss"][0])
    assert_close(after["loss"], expected["loss"], dtype)
    # with K = 1 the gradient is 0 (softmax 1, target 1): its rounding is measured against 1/B
    assert_close(after["grad"], expected["grad"], dtype, scale=max(np.abs(expected["grad"]).max(), 1 / shape[0]))
    # each gradient row sums to 0: the softmax sums to 1, the (smoothed) one-hot to 1
    np.testing.assert_allclose(after["grad"].sum(axis=1), 0.0, atol=10 * TOLERANCE[dtype] / shape[0])


@covers("softmax_cross_entropy")
@pytest.mark.parametrize("dtype", DTYPES)
def test_label_smoothing_moves_eps_of_the_target_to_a_uniform_one(device, dtype):
    """With every logit equal the softmax is uniform: the gradient is (1/K - q) / B, exactly the smoothed
    target's offsets, and the loss log K whatever eps is."""
    B, K, eps = 6, 4, 0.3
    labels = np.arange(B, dtype=np.int64) % K
    args = dict(logits=np.zeros((B, K), dtype), labels=labels, grad=np.full((B, K), np.nan, dtype),
                loss=_loss_array(), label_smoothing=eps)
    after = run_device(device, "softmax_cross_entropy", **args)
    target = np.full((B, K), eps / K)
    target[np.arange(B), labels] += 1 - eps
    assert_close(after["grad"], (1 / K - target) / B, dtype, scale=1 / B)
    assert_close(after["loss"], [np.log(K)], dtype)


@covers("softmax_cross_entropy")
@pytest.mark.parametrize("label_smoothing", (0.0, 0.1))
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_huge_logits(device, dtype, label_smoothing):
    logits = _normal((40, 5), dtype, scale=1e4, seed=9)
    labels = np.arange(40, dtype=np.int64) % 5
    args = dict(logits=logits, labels=labels, grad=np.full_like(logits, np.nan), loss=_loss_array(),
                label_smoothing=label_smoothing)
    after = run_device(device, "softmax_cross_entropy", **args)
    expected = run_reference("softmax_cross_entropy", **args)
    assert np.isfinite(after["loss"][0]) and np.all(np.isfinite(after["grad"]))
    assert_close(after["loss"], expected["loss"], dtype)
    assert_close(after["grad"], expected["grad"], dtype, scale=1 / 40)


@covers("softmax_cross_entropy")
@pytest.mark.parametrize("bad_label", (-1, 3, 2**40, -(2**62)))
@pytest.mark.parametrize("bad_row", (0, 31, 32, 1000))  # first row, ends of a 32-row block, last row
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_out_of_range_label_gives_nan_loss(device, dtype, bad_row, bad_label):
    """Never raises (nothing is read back to check), never reads out of bounds; the loss says NaN."""
    n = _large(device)
    logits = _normal((n, 3), dtype, seed=10)
    labels = _rng(11).integers(0, 3, n).astype(np.int64)
    labels[bad_row] = bad_label
    args = dict(logits=logits, labels=labels, grad=np.full_like(logits, np.nan), loss=_loss_array(),
                label_smoothing=0.0)
    after = run_device(device, "softmax_cross_entropy", **args)
    assert np.isnan(after["loss"][0])
    good = np.arange(n) != bad_row  # rows with a valid label still get their gradient
    expected = run_reference("softmax_cross_entropy", **args)
    assert_close(after["grad"][good], expected["grad"][good], dtype, scale=1 / n)


@covers("softmax_cross_entropy", "binary_cross_entropy", "mse", "huber", "mae")
@pytest.mark.parametrize("name", ("softmax_cross_entropy", "binary_cross_entropy", "mse", "huber", "mae"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_of_a_nan_input_are_nan(device, dtype, name):
    """Divergence detection relies on it: a NaN output gives a NaN loss."""
    outputs = _normal((33, 3), dtype, seed=12)
    outputs[20, 1] = np.nan
    second = (np.zeros(33, np.int64) if name == "softmax_cross_entropy"
              else (_rng(13).random((33, 3)) > 0.5).astype(dtype))
    first, second_name = {"softmax_cross_entropy": ("logits", "labels"), "binary_cross_entropy": ("logits", "targets"),
                          "mse": ("outputs", "targets"), "huber": ("outputs", "targets"),
                          "mae": ("outputs", "targets")}[name]
    parameters = {"softmax_cross_entropy": {"label_smoothing": 0.1}, "huber": {"delta": 1.0}}.get(name, {})
    after = run_device(device, name, **{first: outputs, second_name: second, "grad": np.full_like(outputs, np.nan),
                                        "loss": _loss_array()}, **parameters)
    assert np.isnan(after["loss"][0])


@covers("binary_cross_entropy")
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_cross_entropy(device, dtype, shape):
    logits = _normal(shape, dtype, seed=14)
    logits.flat[:4] = [-1e4, 1e4, -90.0, 90.0][:logits.size]
    targets = _rng(15, *shape).random(shape).astype(dtype)
    targets.flat[::5] = np.round(targets.flat[::5])  # hard 0/1 labels too
    args = dict(logits=logits, targets=targets, grad=np.full_like(logits, np.nan), loss=_loss_array())
    after = run_device(device, "binary_cross_entropy", **args)
    expected = run_reference("binary_cross_entropy", **args)
    assert np.isfinite(after["loss"][0])
    assert_close(after["loss"], expected["loss"], dtype)
    assert_close(after["grad"], expected["grad"], dtype, scale=np.abs(expected["grad"]).max())


@covers("mse")
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mse(device, dtype, shape):
    outputs = _normal(shape, dtype, seed=16)
    targets = _normal(shape, dtype, seed=17)
    args = dict(outputs=outputs, targets=targets, grad=np.full_like(outputs, np.nan), loss=_loss_array())
    after = run_device(device, "mse", **args)
    expected = run_reference("mse", **args)
    assert_close(after["loss"], expected["loss"], dtype)
    assert_close(after["grad"], expected["grad"], dtype, scale=np.abs(expected["grad"]).max())


@covers("huber")
@pytest.mark.parametrize("delta", (0.5, 1.0, 4.0))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_huber(device, dtype, shape, delta):
    outputs = _normal(shape, dtype, seed=16)  # scale 3: residuals on both sides of delta
    targets = _normal(shape, dtype, seed=17)
    args = dict(outputs=outputs, targets=targets, grad=np.full_like(outputs, np.nan), loss=_loss_array(),
                delta=delta)
    after = run_device(device, "huber", **args)
    expected = run_reference("huber", **args)
    assert_close(after["loss"], expected["loss"], dtype)
    assert_close(after["grad"], expected["grad"], dtype, scale=np.abs(expected["grad"]).max())
    assert np.abs(after["grad"]).max() <= delta / outputs.size * (1 + TOLERANCE[dtype])  # outliers pull <= delta


@covers("mae")
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mae(device, dtype, shape):
    outputs = _normal(shape, dtype, seed=16)
    targets = _normal(shape, dtype, seed=17)
    targets.flat[::4] = outputs.flat[::4]  # residual exactly 0: gradient 0, as PyTorch's sign(0)
    args = dict(outputs=outputs, targets=targets, grad=np.full_like(outputs, np.nan), loss=_loss_array())
    after = run_device(device, "mae", **args)
    expected = run_reference("mae", **args)
    assert_close(after["loss"], expected["loss"], dtype)
    assert_close(after["grad"], expected["grad"], dtype, scale=1 / outputs.size)
    assert np.all(after["grad"].flat[::4] == 0)


# --------------------------------------------------------------------------- dropout


@covers("dropout_")
@pytest.mark.parametrize("rate", (0.0, 0.25, 0.5, 0.9))
@pytest.mark.parametrize("shape", ((1,), (7, 3), (33, 70), (1001, 3)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout(device, dtype, shape, rate):
    x = _normal(shape, dtype, seed=30)
    x.flat[-1] = np.nan  # NaN stays NaN, dropped or not (x * 0)
    seed, clock, layer = np.array([2**32 - 5, 0], np.int64), _clock(2**33 + 7), 3  # words of both halves
    args = dict(x=x, out=np.full_like(x, -1.0), rate=rate, seed=seed, clock=clock, layer=layer)
    after = run_device(device, "dropout_", **args)
    expected = run_reference("dropout_", **args)
    assert_close(after["out"], expected["out"], dtype)
    keep = reference.dropout_mask(shape, rate, int(seed[0]), int(clock[0]), layer)
    np.testing.assert_array_equal(after["out"][~keep & ~np.isnan(x)], 0)  # exactly the reference's mask
    kept = keep & ~np.isnan(x)
    np.testing.assert_array_equal(after["out"][kept], x[kept] * dtype(1 / (1 - rate)))
    if rate == 0:
        np.testing.assert_array_equal(after["out"], x)


@covers("dropout_")
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_in_place_and_keyed_by_seed_step_and_layer(device, dtype):
    """out may be x; another step, layer or seed draws another mask, the same ones the same mask."""
    x = np.ones(37, dtype)
    masks = {}
    for key in ((1, 0, 0), (1, 1, 0), (1, 0, 1), (2, 0, 0), (1, 0, 0)):
        seed, step, layer = key
        a = device.to_device(x)
        device.module.dropout_(a, a, 0.5, device.to_device(np.array([seed, 0], np.int64)),
                               device.to_device(_clock(step)), layer)
        masks.setdefault(key, []).append(device.to_host(a) != 0)
    np.testing.assert_array_equal(*masks[(1, 0, 0)])
    distinct = {m[0].tobytes() for m in masks.values()}
    assert len(distinct) == 4


@covers("dropout_")
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_rows_are_keyed_by_their_row_in_the_whole_batch(device, dtype):
    """Rows 5.. of a batch drawn with seed[1] = 5 get the mask rows 5.. of the whole batch get: the shares
    of data-parallel ranks together draw one process's mask."""
    x = np.ones((12, 7), dtype)
    whole = run_device(device, "dropout_", x=x, out=np.empty_like(x), rate=0.5, seed=np.array([9, 0], np.int64),
                       clock=_clock(4), layer=1)["out"]
    share = run_device(device, "dropout_", x=x[5:], out=np.empty_like(x[5:]), rate=0.5,
                       seed=np.array([9, 5], np.int64), clock=_clock(4), layer=1)["out"]
    np.testing.assert_array_equal(share, whole[5:])
    assert not np.array_equal(share, whole[:7])


# --------------------------------------------------------------------------- status record and gradient hooks


def _with_non_finite(dtype, shape, where, value):
    values = _normal(shape, dtype, seed=18)
    values.flat[where] = value
    return values


@covers("check_finite_")
@pytest.mark.parametrize("shape", ((1,), (33,), (1001,), (7, 70)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_check_finite_leaves_a_clear_status_clear_for_finite_values(device, dtype, shape):
    values = _normal(shape, dtype, seed=19)
    info = np.finfo(dtype)
    values.flat[0] = info.max  # huge and tiny finite values are still finite
    values.flat[-1] = -info.max if values.size > 1 else info.smallest_subnormal
    after = run_device(device, "check_finite_", values=values, status=_fresh_status(), code=STATUS_LOSS, clock=_clock(5))
    np.testing.assert_array_equal(after["status"][:2], [0, 0])


@covers("check_finite_")
@pytest.mark.parametrize("value", (np.nan, np.inf, -np.inf))
@pytest.mark.parametrize("where", (0, -1, 17))
@pytest.mark.parametrize("shape", ((1,), (33,), (1001,), (7, 70)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_check_finite_records_code_and_step(device, dtype, shape, where, value):
    values = _with_non_finite(dtype, shape, where % int(np.prod(shape)), value)
    for code, step in ((STATUS_LOSS, 12), (STATUS_GRADIENT, 2**40)):
        after = run_device(device, "check_finite_", values=values, status=_fresh_status(), code=code, clock=_clock(step))
        np.testing.assert_array_equal(after["status"][:2], [code, step])
        expected = run_reference("check_finite_", values=values, status=_fresh_status(), code=code, clock=_clock(step))
        np.testing.assert_array_equal(after["status"][:2], expected["status"][:2])


@covers("check_finite_")
@pytest.mark.parametrize("finite", (True, False))
@pytest.mark.parametrize("dtype", DTYPES)
def test_check_finite_keeps_the_first_record(device, dtype, finite):
    n = _large(device)
    values = _normal((n,), dtype, seed=20)
    if not finite:
        values[n // 2] = np.nan
    status = _fresh_status(STATUS_GRADIENT, 3)
    after = run_device(device, "check_finite_", values=values, status=status, code=STATUS_LOSS, clock=_clock(9))
    np.testing.assert_array_equal(after["status"][:2], [STATUS_GRADIENT, 3])


@covers("clip_by_value_")
@pytest.mark.parametrize("size", FLAT_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_by_value(device, dtype, size):
    g = _normal(size, dtype, seed=21)
    g[-1] = np.nan  # NaN stays NaN
    if size > 3:
        g[:3] = [np.inf, -np.inf, 1e30]
    limit = 0.75
    after = run_device(device, "clip_by_value_", g=g, limit=limit)["g"]
    assert_close(after, run_reference("clip_by_value_", g=g, limit=limit)["g"], dtype)
    assert np.isnan(after[-1])
    inside = np.abs(g) <= limit
    assert _same_bits(after[inside], g[inside]), "values within the limit must not change"
    outside = np.abs(g) > limit
    np.testing.assert_array_equal(after[outside], np.sign(g[outside]) * dtype(limit))


class _OtherRank:
    """A communicator of two ranks whose other rank sends ``other``: ``allreduce_sum_`` adds it, and
    records the stream each call was queued on."""

    def __init__(self, other):
        self.other, self.streams = other, []

    def allreduce_sum_(self, buffer, stream=None):
        self.streams.append(stream)
        buffer += self.other


@covers("all_reduce_mean_")
@pytest.mark.parametrize("poisoned", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_all_reduce_mean(device, dtype, poisoned):
    """This rank's gradient weighted by its share (read on the device) plus the other rank's; NaN
    everywhere from a rank whose status is set; the sum queued on the device's step stream."""
    size = _large(device)
    g, other = _normal(size, dtype, seed=31), _normal(size, dtype, seed=32)
    weight, status = np.array([0.375]), _fresh_status(STATUS_LOSS if poisoned else 0, 3)
    communicator = _OtherRank(device.to_device(other))
    after = run_device(device, "all_reduce_mean_", g=g, weight=weight, status=status,
                       communicator=communicator)["g"]
    expected = run_reference("all_reduce_mean_", g=g, weight=weight, status=status,
                             communicator=_OtherRank(other.astype(np.float64)))["g"]
    assert_close(after, expected, dtype)
    assert np.isnan(after).all() == poisoned
    assert len(communicator.streams) == 1
    assert (communicator.streams[0] is None) == (device.name == "cpu"), communicator.streams


@covers("clip_by_norm_")
@pytest.mark.parametrize("size", FLAT_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_by_norm_leaves_a_gradient_under_the_limit_bit_identical(device, dtype, size):
    g = _normal(size, dtype, seed=22)
    norm = np.sqrt(np.sum(g.astype(np.float64) ** 2))
    for max_norm in (norm * 1.001, norm * 1e6):
        after = run_device(device, "clip_by_norm_", g=g, max_norm=max_norm)["g"]
        assert _same_bits(after, g)


@covers("clip_by_norm_")
@pytest.mark.parametrize("size", FLAT_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_by_norm_scales_a_gradient_over_the_limit_to_the_limit(device, dtype, size):
    g = _normal(size, dtype, seed=23)
    g[0] = 5.0  # never all near zero
    max_norm = 0.5
    after = run_device(device, "clip_by_norm_", g=g, max_norm=max_norm)["g"]
    assert_close(after, run_reference("clip_by_norm_", g=g, max_norm=max_norm)["g"], dtype, factor=2)
    new_norm = np.sqrt(np.sum(after.astype(np.float64) ** 2))
    assert abs(new_norm - max_norm) <= 4 * np.finfo(dtype).eps * max_norm
    # the direction is kept: one common scale factor
    assert_close(after / after[0], g.astype(np.float64) / g[0], dtype, factor=2)


@covers("clip_by_norm_")
@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_by_norm_sums_squares_in_float64(device, dtype):
    """1e20**2 overflows float32; summed in float64 the norm stays finite and the scale right."""
    n = _large(device)
    g = np.full(n, 1e20, dtype)
    g[::2] = -1e20
    after = run_device(device, "clip_by_norm_", g=g, max_norm=1.0)["g"]
    np.testing.assert_allclose(after, np.sign(g) / np.sqrt(float(n)), rtol=4 * np.finfo(dtype).eps)


@covers("clip_by_norm_")
@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_by_norm_leaves_a_nan_gradient_for_the_update_to_find(device, dtype):
    g = _normal(33, dtype, seed=24)
    g[7] = np.nan
    after = run_device(device, "clip_by_norm_", g=g, max_norm=1e-3)["g"]
    assert _same_bits(after, g)


# --------------------------------------------------------------------------- guarded optimizer updates


@dataclass(frozen=True)
class Update:
    """One optimizer configuration: its kernel, state arrays and hyper-parameters at step t."""

    kernel: str
    state: tuple
    hyper: Callable  # t -> {argument: value}


def _adam_hyper(t, lr=1e-2, beta1=0.9, beta2=0.999):
    return dict(hyper=np.array([lr / (1 - beta1**t), np.sqrt(1 - beta2**t)]), beta1=beta1, beta2=beta2, eps=1e-8)


def _lr(lr):
    return np.array([lr], np.float64)


UPDATES = {
    "sgd": Update("sgd_update_", ("v",), lambda t: dict(hyper=_lr(0.1), momentum=0.0, nesterov=False)),
    "sgd_momentum": Update("sgd_update_", ("v",), lambda t: dict(hyper=_lr(0.1), momentum=0.9, nesterov=False)),
    "sgd_nesterov": Update("sgd_update_", ("v",), lambda t: dict(hyper=_lr(0.1), momentum=0.9, nesterov=True)),
    "adam": Update("adam_update_", ("m", "v"), _adam_hyper),
    "rmsprop": Update("rmsprop_update_", ("v",), lambda t: dict(hyper=_lr(1e-2), rho=0.99, eps=1e-8)),
}


def _update_args(update, t, p, g, state, weight_decay, n_decayed, status, step, **overrides):
    values = dict(p=p, g=g, **state, **update.hyper(t), weight_decay=weight_decay, n_decayed=n_decayed,
                  status=status, clock=_clock(step))
    values.update(overrides)
    return _ordered(update.kernel, values)


def _params_grads_state(update, size, dtype, seed=25):
    """p ~ N(0, 1); |g| in [0.5, 1.5] (keeps d / sqrt(v) well-conditioned); adaptive state > 0 or zeros."""
    rng = _rng(seed, size)
    p = rng.standard_normal(size).astype(dtype)
    g = (rng.choice([-1.0, 1.0], size) * rng.uniform(0.5, 1.5, size)).astype(dtype)
    state = {name: np.zeros(size, dtype) for name in update.state}
    return p, g, state


def _state_arrays(after, update):
    return {name: after[name] for name in ("p",) + update.state}


@covers("sgd_update_", "adam_update_", "rmsprop_update_")
@pytest.mark.parametrize("weight_decay, decayed", [(0.0, 1.0), (0.05, 1.0), (0.05, 0.5)])
@pytest.mark.parametrize("size", FLAT_SIZES)
@pytest.mark.parametrize("update_name", UPDATES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_update_matches_reference_over_steps(device, dtype, update_name, size, weight_decay, decayed):
    update = UPDATES[update_name]
    p, g, state = _params_grads_state(update, size, dtype)
    n_decayed = int(size * decayed)
    current = dict(p=p, **state)
    expected = {name: value.astype(np.float64) for name, value in current.items()}
    for t in (1, 2, 3):
        g_t = (g * (1 + 0.25 * t)).astype(dtype)
        args = _update_args(update, t, current["p"], g_t, {n: current[n] for n in update.state}, weight_decay,
                            n_decayed, _fresh_status(), t)
        after = run_device(device, update.kernel, **args)
        np.testing.assert_array_equal(after["status"][:2], [0, 0])  # clear stays clear
        current = _state_arrays(after, update)
        ref_args = _update_args(update, t, expected["p"], g_t.astype(np.float64),
                                {n: expected[n] for n in update.state}, weight_decay, n_decayed, _fresh_status(), t)
        with np.errstate(all="ignore"):
            getattr(reference, update.kernel)(*ref_args.values())
        assert ref_args["status"][0] == 0
    assert not _same_bits(current["p"], p), "the update was not applied"
    for name, value in current.items():
        assert_close(value, expected[name], dtype, factor=3)


@pytest.mark.parametrize("n_decayed", (0, 1, 16, 33))
@pytest.mark.parametrize("update_name", UPDATES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_decay_only_on_the_first_n_decayed_entries(device, dtype, update_name, n_decayed):
    """With g = 0 only the decay moves a parameter: the first n_decayed move, the others stay bit-identical."""
    update = UPDATES[update_name]
    p, _, state = _params_grads_state(update, 33, dtype, seed=26)
    p[np.abs(p) < 0.1] = 0.5
    g = np.zeros_like(p)
    after = run_device(device, update.kernel,
                       **_update_args(update, 1, p, g, state, 0.1, n_decayed, _fresh_status(), 1))
    assert np.all(after["p"][:n_decayed] != p[:n_decayed])
    assert np.all(np.abs(after["p"][:n_decayed]) < np.abs(p[:n_decayed]))  # decay shrinks
    assert _same_bits(after["p"][n_decayed:], p[n_decayed:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_without_momentum_takes_no_velocity(device, dtype):
    """Plain SGD keeps no state: the optimizer passes v=None."""
    update = UPDATES["sgd"]
    p, g, _ = _params_grads_state(update, 33, dtype, seed=38)
    args = _update_args(update, 1, p, g, {"v": None}, 0.05, 16, _fresh_status(), 1)
    after = run_device(device, "sgd_update_", **args)
    np.testing.assert_array_equal(after["status"][:2], [0, 0])
    assert_close(after["p"], run_reference("sgd_update_", **args)["p"], dtype)


@pytest.mark.parametrize("value", (np.nan, np.inf))
@pytest.mark.parametrize("where", (0, -1))
@pytest.mark.parametrize("size", (1, 33, 1001))
@pytest.mark.parametrize("update_name", UPDATES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_update_with_a_non_finite_gradient_writes_nothing(device, dtype, update_name, size, where, value):
    update = UPDATES[update_name]
    p, g, state = _params_grads_state(update, size, dtype, seed=27)
    state = {name: np.abs(_normal(size, dtype, scale=0.1, seed=28 + k)) for k, name in enumerate(state)}
    g[where] = value
    args = _update_args(update, 1, p, g, state, 0.01, size, _fresh_status(), 41)
    after = run_device(device, update.kernel, **args)
    np.testing.assert_array_equal(after["status"][:2], [STATUS_GRADIENT, 41])
    for name, array in _state_arrays(after, update).items():
        assert _same_bits(array, args[name]), f"{name} was written"


def _overflowing(update, size, dtype, where):
    """A finite gradient whose update overflows in one entry: p = -0.9 max, g = max / 2, lr = 1.

    SGD: p - g = -1.4 max; with momentum the velocity is g, then as SGD. Adam and RMSprop: (1 - beta2) g^2
    overflows the second moment (and p stays finite), so the state decides.
    """
    p, g, state = _params_grads_state(update, size, dtype, seed=29)
    big = np.finfo(dtype).max
    p[where], g[where] = -0.9 * big, big / 2
    overrides = {"hyper": _lr(1.0)} if update.kernel != "adam_update_" else {}
    return p, g, state, overrides


@pytest.mark.parametrize("where", (0, -1, 16))
@pytest.mark.parametrize("size", (1, 33, 1001))
@pytest.mark.parametrize("update_name", UPDATES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_update_that_overflows_writes_nothing(device, dtype, update_name, size, where):
    update = UPDATES[update_name]
    where = where % size
    p, g, state, overrides = _overflowing(update, size, dtype, where)
    args = _update_args(update, 1, p, g, state, 0.0, size, _fresh_status(), 7, **overrides)
    after = run_device(device, update.kernel, **args)
    np.testing.assert_array_equal(after["status"][:2], [STATUS_UPDATE, 7])
    for name, array in _state_arrays(after, update).items():
        assert _same_bits(array, args[name]), f"{name} was written"
    # the reference, run in the same dtype (in float64 nothing overflows), agrees about the case
    same_dtype = {name: value.copy() if isinstance(value, np.ndarray) else value for name, value in args.items()}
    with np.errstate(all="ignore"):
        getattr(reference, update.kernel)(*same_dtype.values())
    np.testing.assert_array_equal(same_dtype["status"][:2], [STATUS_UPDATE, 7])


@pytest.mark.parametrize("update_name", ("sgd", "sgd_momentum", "sgd_nesterov"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_with_an_overflowing_learning_rate_writes_nothing(device, dtype, update_name):
    """lr = 1e38 (float32) / 1e308 (float64): lr * g overflows only where |g| > ~3.4; one such entry suffices."""
    n = _large(device)
    update = UPDATES[update_name]
    p, g, state = _params_grads_state(update, n, dtype, seed=30)
    g[n // 2] = 10.0
    lr = 1e38 if dtype == np.float32 else 1e308
    args = _update_args(update, 1, p, g, state, 0.0, 0, _fresh_status(), 3, hyper=_lr(lr))
    after = run_device(device, update.kernel, **args)
    np.testing.assert_array_equal(after["status"][:2], [STATUS_UPDATE, 3])
    for name, array in _state_arrays(after, update).items():
        assert _same_bits(array, args[name]), f"{name} was written"


@pytest.mark.parametrize("bad_gradient", (False, True))
@pytest.mark.parametrize("update_name", UPDATES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_update_does_nothing_once_status_is_set(device, dtype, update_name, bad_gradient):
    """The record keeps the first failure: no write, and a later NaN does not overwrite it."""
    n = _large(device)
    update = UPDATES[update_name]
    p, g, state = _params_grads_state(update, n, dtype, seed=31)
    if bad_gradient:
        g[3] = np.nan
    status = _fresh_status(STATUS_LOSS, 5)
    args = _update_args(update, 1, p, g, state, 0.01, n, status, 6)
    after = run_device(device, update.kernel, **args)
    np.testing.assert_array_equal(after["status"][:2], [STATUS_LOSS, 5])
    for name, array in _state_arrays(after, update).items():
        assert _same_bits(array, args[name]), f"{name} was written"


@pytest.mark.parametrize("update_name", UPDATES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_failed_update_is_recorded_once_and_later_steps_are_refused(device, dtype, update_name):
    """Step 1 fails on a NaN gradient; the same record then refuses a finite step 2."""
    update = UPDATES[update_name]
    p, g, state = _params_grads_state(update, 33, dtype, seed=32)
    status = device.to_device(_fresh_status())
    arrays = {name: device.to_device(value) for name, value in dict(p=p, **state).items()}
    kernel = getattr(device.module, update.kernel)
    bad = g.copy()
    bad[32] = np.nan
    for step, grad in ((1, bad), (2, g)):
        args = _update_args(update, step, arrays["p"], device.to_device(grad),
                            {name: arrays[name] for name in update.state}, 0.0, 33, status, step)
        args = {name: device.to_device(value) if name in ("hyper", "clock") else value for name, value in args.items()}
        assert kernel(*args.values()) is None
    np.testing.assert_array_equal(device.to_host(status)[:2], [STATUS_GRADIENT, 1])
    assert _same_bits(device.to_host(arrays["p"]), p)


# --------------------------------------------------------------------------- GEMMs and the bias gradient


@covers("weight_gradient_")
@pytest.mark.parametrize("fan_out", WIDTHS)
@pytest.mark.parametrize("fan_in", WIDTHS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_gradient(device, dtype, batch, fan_in, fan_out):
    x = _normal((batch, fan_in), dtype, scale=1.0, seed=33)
    delta = _normal((batch, fan_out), dtype, scale=1.0, seed=34)
    out = np.full((fan_in, fan_out), np.nan, dtype)  # overwritten, never accumulated into
    after = run_device(device, "weight_gradient_", x=x, delta=delta, out=out, scale=None)["out"]
    expected = run_reference("weight_gradient_", x=x, delta=delta, out=out, scale=None)["out"]
    assert_gemm_close(after, expected, np.abs(x.T.astype(np.float64)), np.abs(delta.astype(np.float64)), batch,
                      dtype)


@covers("weight_gradient_")
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_gradient_as_a_plain_sgd_update(device, dtype, batch):
    """out = alpha x^T delta + beta out, with out the weights: W = (1 - lr wd) W - lr x^T delta."""
    x = _normal((batch, 70), dtype, scale=1.0, seed=38)
    delta = _normal((batch, 3), dtype, scale=1.0, seed=39)
    W = _normal((70, 3), dtype, scale=1.0, seed=40)
    args = dict(x=x, delta=delta, out=W, scale=np.array([-0.1, 0.999], dtype))
    after = run_device(device, "weight_gradient_", **args)["out"]
    expected = run_reference("weight_gradient_", **args)["out"]
    magnitude = 0.1 * np.abs(x.T.astype(np.float64)) @ np.abs(delta.astype(np.float64)) + np.abs(W)
    assert np.all(np.abs(after - expected) <= 2 * (batch + 2) * np.finfo(dtype).eps * magnitude)
    assert not np.array_equal(after, W)


@covers("restore_if_diverged_")
@pytest.mark.parametrize("code", (0, STATUS_LOSS, STATUS_UPDATE))
@pytest.mark.parametrize("dtype", DTYPES)
def test_restore_if_diverged(device, dtype, code):
    n = _large(device)
    p = _normal(n, dtype, seed=41)
    backup = _normal(n, dtype, seed=42)
    after = run_device(device, "restore_if_diverged_", p=p, backup=backup, status=_fresh_status(code, 4))
    assert _same_bits(after["p"], backup if code else p)
    np.testing.assert_array_equal(after["status"], _fresh_status(code, 4))


@covers("input_gradient_")
@pytest.mark.parametrize("fan_out", WIDTHS)
@pytest.mark.parametrize("fan_in", WIDTHS + (512,))
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_input_gradient(device, dtype, batch, fan_in, fan_out):
    delta = _normal((batch, fan_out), dtype, scale=1.0, seed=35)
    W = _normal((fan_in, fan_out), dtype, scale=0.1, seed=36)
    out = np.full((batch, fan_in), np.nan, dtype)
    after = run_device(device, "input_gradient_", delta=delta, W=W, out=out)["out"]
    expected = run_reference("input_gradient_", delta=delta, W=W, out=out)["out"]
    assert_gemm_close(after, expected, np.abs(delta.astype(np.float64)), np.abs(W.T.astype(np.float64)), fan_out,
                      dtype)


@covers("bias_gradient_")
@pytest.mark.parametrize("shape", SHAPES + ((8, 5), (16, 3), (9, 2)))  # multiples of and around 8 rows
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_gradient(device, dtype, shape):
    delta = _normal(shape, dtype, scale=1.0, seed=37)
    out = np.full(shape[1], np.nan, dtype)
    after = run_device(device, "bias_gradient_", delta=delta, out=out)["out"]
    expected = run_reference("bias_gradient_", delta=delta, out=out)["out"]
    assert_gemm_close(after, expected, np.ones(shape[0]), np.abs(delta.astype(np.float64)), shape[0], dtype)


@covers("linear_")
@pytest.mark.parametrize("fan_out", WIDTHS)
@pytest.mark.parametrize("fan_in", WIDTHS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear(device, dtype, batch, fan_in, fan_out):
    x = _normal((batch, fan_in), dtype, scale=1.0, seed=43)
    W = _normal((fan_in, fan_out), dtype, scale=0.1, seed=44)
    out = np.full((batch, fan_out), np.nan, dtype)  # overwritten, never read
    after = run_device(device, "linear_", x=x, W=W, out=out)["out"]
    expected = run_reference("linear_", x=x, W=W, out=out)["out"]
    assert_gemm_close(after, expected, np.abs(x.astype(np.float64)), np.abs(W.astype(np.float64)), fan_in, dtype)


@pytest.fixture
def precision_of(device):
    """Sets the device's float32 GEMM precision for one test, and "highest" again after it."""
    yield device.module.set_matmul_precision
    device.module.set_matmul_precision("highest")


_PRECISION_ORDER = list(MATMUL_PRECISIONS)  # highest first


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("precision", list(MATMUL_PRECISIONS))
@pytest.mark.parametrize("name", ("linear_", "weight_gradient_", "input_gradient_"))
def test_gemm_at_each_matmul_precision(device, precision_of, name, precision, dtype):
    """Every GEMM kernel computes float32 products of operands rounded to the device's precision, which
    is the one asked for or a higher one; float64 GEMMs stay float64; an unknown name raises ValueError."""
    precision_of(precision)
    used = device.module.matmul_precision()
    assert _PRECISION_ORDER.index(used) <= _PRECISION_ORDER.index(precision)
    a = _normal((9, 37), dtype, scale=1.0, seed=60)
    b = _normal((37, 5), dtype, scale=1.0, seed=61)
    args = {"linear_": dict(x=a, W=b), "weight_gradient_": dict(x=np.ascontiguousarray(a.T), delta=b, scale=None),
            "input_gradient_": dict(delta=a, W=np.ascontiguousarray(b.T))}[name]
    after = run_device(device, name, **args, out=np.full((9, 5), np.nan, dtype))["out"]
    if dtype == np.float32:
        a, b = reference.round_to_precision(a, used), reference.round_to_precision(b, used)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    assert_gemm_close(after, exact, np.abs(a.astype(np.float64)), np.abs(b.astype(np.float64)), 37, dtype)
    if used != "highest" and dtype == np.float32:  # the rounding happened: far from the unrounded product
        unrounded = _normal((9, 37), dtype, scale=1.0, seed=60).astype(np.float64) @ \
            _normal((37, 5), dtype, scale=1.0, seed=61).astype(np.float64)
        assert np.max(np.abs(after - unrounded)) > 100 * np.finfo(np.float32).eps * np.max(np.abs(unrounded))
    with pytest.raises(ValueError, match="matmul precision"):
        device.module.set_matmul_precision("bf16")


@covers("gather_rows_")
@pytest.mark.parametrize("width", (None,) + WIDTHS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES + (np.int64,))
def test_gather_rows(device, dtype, batch, width):
    """Rows in any order, repeated, first and last: the batch gather of shuffled training, exactly."""
    n = 1009
    shape = (n,) if width is None else (n, width)
    source = (_rng(45, batch).standard_normal(shape) * 100).astype(dtype)
    rows = _rng(46, batch).integers(0, n, batch + 5).astype(np.int64)
    rows[3], rows[batch + 2] = n - 1, 0
    out = np.zeros((batch,) + shape[1:], dtype)
    cursor = np.array([3, -1], np.int64)  # the batch starts at entry 3 of rows; the slot is not the gather's
    after = run_device(device, "gather_rows_", source=source, rows=rows, cursor=cursor, out=out)["out"]
    np.testing.assert_array_equal(after, source[rows[3:3 + batch]])


@covers("store_at_")
@pytest.mark.parametrize("slot", (0, 4, 6))
def test_store_at(device, slot):
    value = np.array([np.pi])
    after = run_device(device, "store_at_", value=value, out=np.arange(7.0), cursor=np.array([99, slot], np.int64))
    expected = np.arange(7.0)
    expected[slot] = np.pi
    np.testing.assert_array_equal(after["out"], expected)


@covers("copy_")
@pytest.mark.parametrize("shape", ((1,), (7, 3), (1001, 70)))
@pytest.mark.parametrize("dtype", DTYPES + (np.int64,))
def test_copy(device, dtype, shape):
    source = (_normal(shape, np.float64, seed=47) * 100).astype(dtype)
    after = run_device(device, "copy_", source=source, out=np.zeros(shape, dtype))["out"]
    assert _same_bits(after, source)


@covers("weighted_loss")
@pytest.mark.parametrize("loss_name", ("softmax_cross_entropy", "binary_cross_entropy", "mse", "huber", "mae"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_weighted_loss(device, dtype, loss_name):
    shape = (37, 5)
    outputs = _normal(shape, dtype, seed=40)
    targets = (np.random.default_rng(41).integers(0, shape[1], shape[0]) if loss_name == "softmax_cross_entropy"
               else np.random.default_rng(41).uniform(size=shape).astype(dtype))
    weights = np.random.default_rng(42).uniform(0, 3, shape[0])
    args = dict(loss_name=loss_name, outputs=outputs, targets=targets, weights=weights, grad=np.full_like(outputs, np.nan),
                loss=_loss_array(), parameter=0.1 if loss_name == "softmax_cross_entropy" else 1.0)
    after = run_device(device, "weighted_loss", **args)
    expected = run_reference("weighted_loss", **args)
    assert_close(after["loss"], expected["loss"], dtype)
    assert_close(after["grad"], expected["grad"], dtype, scale=np.abs(expected["grad"]).max())


@pytest.mark.parametrize("loss_name", ("softmax_cross_entropy", "binary_cross_entropy", "mse", "huber", "mae"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_weighted_loss_with_unit_weights_is_the_loss(device, dtype, loss_name):
    """Weights of 1 give the unweighted kernel's loss and gradient (a row of K = 5 spans more than a warp of the
    simulated GPU's row kernels)."""
    shape = (13, 5)
    outputs = _normal(shape, dtype, seed=48)
    targets = (np.random.default_rng(49).integers(0, shape[1], shape[0]) if loss_name == "softmax_cross_entropy"
               else np.random.default_rng(49).uniform(size=shape).astype(dtype))
    parameter = {"softmax_cross_entropy": (0.1,), "huber": (1.0,)}.get(loss_name, ())
    common = dict(outputs=outputs, targets=targets, grad=np.full_like(outputs, np.nan), loss=_loss_array())
    weighted = run_device(device, "weighted_loss", loss_name=loss_name, weights=np.ones(shape[0]),
                          parameter=parameter[0] if parameter else 1.0, **common)
    names = dict(zip(KERNELS[loss_name].args, ("outputs", "targets", "grad", "loss")))
    unweighted = run_device(device, loss_name, **{arg: common[name] for arg, name in names.items()},
                            **dict(zip(KERNELS[loss_name].args[4:], parameter)))
    assert_close(weighted["loss"], unweighted["loss"], dtype, factor=4)
    gradient = unweighted[KERNELS[loss_name].args[2]]
    assert_close(weighted["grad"], gradient, dtype, scale=np.abs(gradient).max(), factor=4)


@pytest.mark.parametrize("shape", ((37, 9), (33, 3), (40, 1)))  # several tiles of columns and chunks of rows
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_gradient_is_bit_identical_run_to_run(device, dtype, shape):
    """A fixed order of summation, no atomics: the same delta gives the same bits every time."""
    delta = _normal(shape, dtype, scale=1.0, seed=50)
    first = run_device(device, "bias_gradient_", delta=delta, out=np.full(shape[1], np.nan, dtype))["out"]
    for _ in range(2):
        again = run_device(device, "bias_gradient_", delta=delta, out=np.full(shape[1], np.nan, dtype))["out"]
        assert _same_bits(first, again)
    expected = run_reference("bias_gradient_", delta=delta, out=np.zeros(shape[1], dtype))["out"]
    assert_gemm_close(first, expected, np.ones(shape[0]), np.abs(delta.astype(np.float64)), shape[0], dtype)

"""Property-based input validation: random shapes, dtypes and values thrown at the public API.

The property, for ``fit``, ``predict``, ``evaluate``, ``train_on_batch`` and ``set_weights``
on small CPU models (every loss, float32 and float64): each call either returns a valid
result (right shape, float, finite) or raises a documented :class:`gpubp.GpubpError`
whose message names the offending argument. Any other exception, and any warning
(a NumPy ``RuntimeWarning: overflow`` from a cast, say), is a failure.

Inputs whose values are huge but representable in the model dtype (|v| > 1e6) may
legitimately overflow inside the network; for those a non-finite result, or
``TrainingDiverged`` (when that error exists), is accepted too.

The second part feeds arbitrary values (None, bools, ints of any size, NaN/Inf, text,
arrays, containers, callables, ...) to every public constructor and callback (Dense,
Sequential, SGD/Adam/RMSprop, every schedule, EarlyStopping, ModelCheckpoint), to
compile, set_scaler and set_weights on an unbuilt model, to gradcheck and to fit's
keyword arguments: each call works (and what it made then works too) or raises a
GpubpError, an InvalidInputError or InvalidTypeError naming the argument.

The hand-written cases live in ``test_input_errors.py`` and ``test_public_errors.py``.
"""

import math
import os
import re
import tempfile
import warnings
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gpubp as gb
from gpubp import schedules
from gpubp.callbacks import ModelCheckpoint
from gpubp.data import StandardScaler

LOSSES = ["softmax_cross_entropy", "binary_cross_entropy", "mse"]
DTYPES = ["float32", "float64"]
N_IN, N_OUT = 2, 3
MODERATE = 1e6
TrainingDiverged = getattr(gb, "TrainingDiverged", None)

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NUMERIC_DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                  np.uint64, np.float16, np.float32, np.float64]
ODD_DTYPES = [np.complex64, np.complex128, np.dtype("U3"), np.dtype("datetime64[s]"),
              np.dtype("timedelta64[s]")]


# ---------------------------------------------------------------- strategies
def _elements(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        big = float(np.finfo(dtype).max)
        special = [np.nan, np.inf, -np.inf, big, -big, 1e38 if big > 1e38 else big]
        if dtype == np.float64:
            special += [1e39, -1e300]  # finite in float64, Inf in float32
        return st.one_of(st.floats(-4, 4, width=dtype.itemsize * 8), st.sampled_from(special),
                         st.sampled_from([0.5, 1.5, -1.0, 2.0, 3.0]))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return st.one_of(st.integers(max(info.min, -2), min(info.max, 4)), st.integers(info.min, info.max))
    return None  # hypothesis' default for the dtype


@st.composite
def arrays(draw, shape):
    """An array of ``shape`` with a random dtype: mostly numeric, sometimes an odd or object one."""
    kind = draw(st.sampled_from(["numeric"] * 8 + ["odd", "object"]))
    if kind == "object":
        fill = draw(st.sampled_from([1.0, "a", None]))
        a = np.empty(shape, dtype=object)
        a[...] = fill
        return a
    dtype = np.dtype(draw(st.sampled_from(NUMERIC_DTYPES if kind == "numeric" else ODD_DTYPES)))
    return draw(hnp.arrays(dtype, shape, elements=_elements(dtype)))


def shapes(n):
    """Mostly shapes with ``n`` rows; sometimes anything with 0-3 dims and zero-size axes."""
    return st.one_of(
        st.tuples(st.just(n), st.integers(0, 4)),
        st.just((n,)),
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    )


NON_ARRAYS = st.sampled_from([None, "abc", 3.0, {"a": 1}, [[1.0, 2.0], [3.0]], [[1, "x"]],
                              [[0.0, 1.0]] * 3, object()])


@st.composite
def features(draw, n):
    """X: valid (n, 2) features most of the time, or something odd."""
    choice = draw(st.sampled_from(["good"] * 4 + ["shape", "other"]))
    if choice == "other":
        return draw(NON_ARRAYS)
    shape = (n, N_IN) if choice == "good" else draw(shapes(n))
    return draw(arrays(shape))


@st.composite
def targets(draw, n, loss):
    """y in the loss' layout most of the time, else random (and mismatched) shapes and dtypes."""
    choice = draw(st.sampled_from(["good"] * 4 + ["shape", "length", "other"]))
    if choice == "other":
        return draw(NON_ARRAYS)
    if choice == "length":
        shape = (draw(st.integers(0, 6).filter(lambda m: m != n)),)
    elif choice == "shape":
        shape = draw(shapes(n))
    else:
        shape = (n,) if loss == "softmax_cross_entropy" else draw(st.sampled_from([(n, N_OUT), (n,)]))
    return draw(arrays(shape))


# ---------------------------------------------------------------- the property
def _numeric_magnitude(*values):
    """Largest |value| among the numeric arrays in ``values`` (0 for anything else)."""
    top = 0.0
    for v in values:
        try:
            a = np.asarray(v)
        except Exception:
            continue
        if a.dtype.kind in "biuf" and a.size:
            with np.errstate(all="ignore"):
                m = np.abs(a.astype(np.float64))
            m = m[np.isfinite(m)].max(initial=0.0)
            if np.isfinite(m):
                top = max(top, float(m))
    return top


def _names_pattern(names):
    return re.compile("|".join(rf"(?<![\w\[]){re.escape(n)}(?![\w\]])" if n[-1] != "]" else re.escape(n)
                               for n in names))


def call(fn, names, extreme=False):
    """Run ``fn()`` with every warning an error; return ``(result, None)`` or ``(None, exc)``.

    A GpubpError must name one of ``names``; any other exception propagates and fails the test.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return fn(), None
        except gb.GpubpError as exc:
            if extreme and TrainingDiverged is not None and isinstance(exc, TrainingDiverged):
                return None, exc
            assert _names_pattern(names).search(str(exc)), (
                f"{type(exc).__name__} does not name any of {names}: {exc}")
            return None, exc


def assert_finite(value, extreme, what):
    if not extreme:
        assert np.all(np.isfinite(value)), f"{what} is not finite: {value!r}"


# ---------------------------------------------------------------- models
_MODELS = {}


def model_for(loss, dtype):
    """One built, compiled model per (loss, dtype), reset to its initial weights on every call."""
    key = (loss, dtype)
    if key not in _MODELS:
        m = gb.Sequential([gb.Dense(3, activation="tanh"), gb.Dense(N_OUT)], input_dim=N_IN,
                          backend="cpu", dtype=dtype, seed=0)
        m.compile(loss=loss, optimizer="sgd")
        good_y = (np.array([0, 1, 2]) if loss == "softmax_cross_entropy"
                  else np.eye(3)[[0, 1, 2]])
        m.fit(np.zeros((3, N_IN)), good_y, batch_size=2, epochs=1, verbose=0)  # compile the kernels
        m.predict(np.zeros((3, N_IN)))
        _MODELS[key] = (m, m.get_weights())
    m, initial = _MODELS[key]
    m.set_weights(initial)
    if getattr(m.optimizer, "iterations", None) is not None:
        m.optimizer.iterations = 0
    return m


MODEL_PARAMS = pytest.mark.parametrize("loss,dtype", [(l, d) for l in LOSSES for d in DTYPES])


# ---------------------------------------------------------------- tests
@MODEL_PARAMS
@SETTINGS
@given(data=st.data())
def test_predict_property(loss, dtype, data):
    model = model_for(loss, dtype)
    n = data.draw(st.integers(1, 5))
    X = data.draw(features(n))
    batch_size = data.draw(st.sampled_from([None, None, 1, 2, 4096, 0, -1, 2.5, "8", True]))
    extreme = _numeric_magnitude(X) > MODERATE
    result, exc = call(lambda: model.predict(X, batch_size=batch_size), ["X", "batch_size"], extreme)
    if exc is None:
        assert isinstance(result, np.ndarray) and result.dtype.kind == "f"
        assert result.shape == (np.asarray(X).shape[0], N_OUT)
        assert_finite(result, extreme, "predict")
        if loss == "softmax_cross_entropy" and not extreme:
            np.testing.assert_allclose(result.sum(axis=1), 1, rtol=1e-3)


def draw_batch(data, loss):
    """A drawn (X, y) pair of 1 to 5 rows, valid or not, for ``loss``."""
    n = data.draw(st.integers(1, 5))
    return data.draw(features(n)), data.draw(targets(n, loss))


@MODEL_PARAMS
@SETTINGS
@given(data=st.data())
def test_evaluate_and_train_on_batch_property(loss, dtype, data):
    model = model_for(loss, dtype)
    X, y = draw_batch(data, loss)
    extreme = _numeric_magnitude(X, y) > MODERATE
    result, exc = call(lambda: model.evaluate(X, y), ["X", "y"], extreme)
    if exc is None:
        assert set(result) == {"loss", "accuracy"}
        assert_finite(result["loss"], extreme, "evaluate loss")
        assert result["accuracy"] is None or 0 <= result["accuracy"] <= 1
    result, exc = call(lambda: model.train_on_batch(X, y), ["X", "y"], extreme)
    if exc is None:
        assert isinstance(result, float)
        assert_finite(result, extreme, "train_on_batch loss")


@MODEL_PARAMS
@SETTINGS
@given(data=st.data())
def test_fit_property(loss, dtype, data):
    model = model_for(loss, dtype)
    X, y = draw_batch(data, loss)
    kwargs = {}
    if data.draw(st.booleans()):
        m = data.draw(st.integers(1, 3))
        kwargs["validation_data"] = data.draw(st.one_of(
            st.tuples(features(m), targets(m, loss)),
            st.sampled_from([None, (), np.zeros(3), (np.zeros((2, N_IN)),)])))
    val = kwargs.get("validation_data")
    extreme = _numeric_magnitude(X, y, *(val if isinstance(val, tuple) else ())) > MODERATE
    names = ["X", "y", "validation_data"]
    history, exc = call(lambda: model.fit(X, y, batch_size=2, epochs=1, verbose=0, **kwargs), names, extreme)
    if exc is None:
        assert len(history.history["loss"]) == 1
        assert_finite(history.history["loss"], extreme, "fit loss")
        if kwargs.get("validation_data") is not None:
            assert_finite(history.history["val_loss"], extreme, "fit val_loss")


# a valid (softmax, float32) data set for the fit-argument tests
X6 = np.random.default_rng(0).normal(size=(6, N_IN))
Y6 = np.array([0, 1, 2, 0, 1, 2])
ARG_VALUES = [0, -1, 1, 2, 7, 2.5, "8", None, True, False, np.int64(3), np.float64(2.0), np.nan,
              np.array(2), np.array([1, 2]), 10**30, -(10**30)]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(batch_size=st.sampled_from(ARG_VALUES), epochs=st.sampled_from(ARG_VALUES[:12] + [np.array([1, 2])]))
def test_fit_batch_size_and_epochs_property(batch_size, epochs):
    model = model_for("softmax_cross_entropy", "float32")
    history, exc = call(lambda: model.fit(X6, Y6, batch_size=batch_size, epochs=epochs, verbose=0),
                        ["batch_size", "epochs"])
    valid = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 1 <= v < 100
                for v in (batch_size, epochs))
    assert (exc is None) == valid, (batch_size, epochs, exc)
    if exc is None:
        assert len(history.history["loss"]) == int(epochs)


@pytest.mark.parametrize("verbose", [-1, 3, "1", None, 0.5, np.nan, [1], {}])
def test_fit_rejects_bad_verbose(verbose):
    model = model_for("softmax_cross_entropy", "float32")
    _, exc = call(lambda: model.fit(X6, Y6, epochs=1, verbose=verbose), ["verbose"])
    assert isinstance(exc, gb.InvalidInputError)


def test_fit_rejects_array_verbose():
    model = model_for("softmax_cross_entropy", "float32")
    _, exc = call(lambda: model.fit(X6, Y6, epochs=1, verbose=np.array([1, 2])), ["verbose"])
    assert isinstance(exc, gb.InvalidInputError)


@pytest.mark.parametrize("verbose", [0, False, np.int64(0)])
def test_fit_accepts_quiet_verbose(verbose):
    model = model_for("softmax_cross_entropy", "float32")
    history, exc = call(lambda: model.fit(X6, Y6, epochs=1, verbose=verbose), ["verbose"])
    assert exc is None and len(history.history["loss"]) == 1


@pytest.mark.parametrize("split", [-0.1, 1.0, np.nan, np.inf, 0.01, 0.99, True])
def test_fit_validation_split_edges(split):
    """Out of range, NaN, or leaving 0 or all samples for validation: an error naming validation_split."""
    model = model_for("softmax_cross_entropy", "float32")
    _, exc = call(lambda: model.fit(X6, Y6, epochs=1, verbose=0, validation_split=split), ["validation_split"])
    assert isinstance(exc, gb.InvalidInputError)


@pytest.mark.parametrize("split", [0.2, 0.5, 0.8, np.float32(0.5)])
def test_fit_validation_split_valid(split):
    model = model_for("softmax_cross_entropy", "float32")
    history, exc = call(lambda: model.fit(X6, Y6, epochs=1, verbose=0, validation_split=split), ["validation_split"])
    assert exc is None and np.isfinite(history.history["val_loss"][0])


@pytest.mark.parametrize("split", ["0.5", None, [0.5]])
def test_fit_validation_split_wrong_type(split):
    model = model_for("softmax_cross_entropy", "float32")
    _, exc = call(lambda: model.fit(X6, Y6, epochs=1, verbose=0, validation_split=split), ["validation_split"])
    assert isinstance(exc, gb.GpubpError)


def test_fit_validation_split_with_validation_data():
    model = model_for("softmax_cross_entropy", "float32")
    _, exc = call(lambda: model.fit(X6, Y6, verbose=0, validation_split=0.5, validation_data=(X6, Y6)),
                  ["validation_split"])
    assert isinstance(exc, gb.InvalidInputError)


def test_validation_data_errors_name_validation_data():
    """Errors from the loss' target checks say which y was wrong."""
    model = model_for("softmax_cross_entropy", "float32")
    for bad in (np.array([0, 1, 7]), np.full((3, 3), 0.5), np.array([0.5, 1, 2])):
        _, exc = call(lambda: model.fit(X6, Y6, verbose=0, validation_data=(X6[:3], bad)), ["validation_data y"])
        assert isinstance(exc, gb.InvalidInputError)
    _, exc = call(lambda: model.fit(X6, Y6, verbose=0, validation_data=(X6[:3], Y6)), ["validation_data X"])
    assert "validation_data X has 3 samples but validation_data y has 6" in str(exc)


@pytest.mark.parametrize("loss", LOSSES)
def test_values_that_overflow_float32_are_rejected_naming_rows(loss):
    """1e39 is finite in float64 but Inf in float32: rejected before the cast, without a NumPy warning."""
    model = model_for(loss, "float32")
    X = X6.copy()
    X[[1, 4], 0] = 1e39
    _, exc = call(lambda: model.evaluate(X, Y6 if loss == "softmax_cross_entropy" else np.eye(3)[Y6]), ["X"])
    assert isinstance(exc, gb.InvalidInputError)
    assert "too large for float32" in str(exc) and "2 of 6 rows" in str(exc) and "row 1" in str(exc)
    # representable in float64: accepted (shape and dtype right; the values may overflow in the network)
    result, exc = call(lambda: model_for(loss, "float64").predict(X), ["X"], extreme=True)
    assert exc is None and result.shape == (6, N_OUT) and result.dtype == np.float64


def test_huge_regression_targets_are_rejected_for_float32():
    model = model_for("mse", "float32")
    y = np.eye(3)[Y6]
    y[2, 1] = -1e300
    _, exc = call(lambda: model.train_on_batch(X6, y), ["y"])
    assert isinstance(exc, gb.InvalidInputError) and "too large for float32" in str(exc)


def test_huge_float_labels_are_rejected_without_warning():
    model = model_for("softmax_cross_entropy", "float64")
    _, exc = call(lambda: model.evaluate(X6, np.array([0, 1, 1e38, 0, 1, 2])), ["y"])
    assert isinstance(exc, gb.InvalidInputError)


@pytest.mark.parametrize("method", ["predict", "evaluate"])
@pytest.mark.parametrize("batch_size", [0, False])
def test_inference_batch_size_zero_is_rejected(method, batch_size):
    model = model_for("softmax_cross_entropy", "float32")
    args = (X6,) if method == "predict" else (X6, Y6)
    _, exc = call(lambda: getattr(model, method)(*args, batch_size=batch_size), ["batch_size"])
    assert isinstance(exc, gb.InvalidInputError)


# ---------------------------------------------------------------- unbuilt models
def _unbuilt(loss="softmax_cross_entropy"):
    m = gb.Sequential([gb.Dense(3, activation="tanh"), gb.Dense(N_OUT)], backend="cpu", seed=0)
    return m.compile(loss=loss, optimizer="sgd")


@pytest.mark.parametrize("X", [[[1.0, 2.0], [3.0]], np.zeros((3, 0))], ids=["ragged", "no-features"])
def test_unbuilt_model_rejects_bad_X_naming_it(X):
    model = _unbuilt()
    _, exc = call(lambda: model.train_on_batch(X, np.array([0, 1, 2])), ["X"])
    assert isinstance(exc, gb.GpubpError)
    assert not model.built


# ---------------------------------------------------------------- set_weights
# ragged lists and None are covered by the test below
WEIGHT_NON_ARRAYS = st.sampled_from(["abc", 3.0, {"a": 1}, [[1, "x"]], [[0.0, 1.0]] * 3, object()])


def _weight(draw, shape):
    choice = draw(st.sampled_from(["good"] * 3 + ["shape", "other"]))
    if choice == "other":
        return draw(WEIGHT_NON_ARRAYS)
    return draw(arrays(shape if choice == "good" else draw(hnp.array_shapes(min_dims=0, max_dims=3,
                                                                            min_side=0, max_side=4))))


@MODEL_PARAMS
@SETTINGS
@given(data=st.data())
def test_set_weights_property(loss, dtype, data):
    model = model_for(loss, dtype)
    shapes_ = [w.shape for w in model.get_weights()]
    n = data.draw(st.sampled_from([len(shapes_)] * 4 + [0, 1, 5]))
    weights = [_weight(data.draw, shapes_[i % len(shapes_)]) for i in range(n)]
    weights = data.draw(st.sampled_from([weights, weights, tuple(weights)]))
    before = model.get_weights()
    names = [f"weights[{i}]" for i in range(n)] + ["set_weights"]
    _, exc = call(lambda: model.set_weights(weights), names)
    after = model.get_weights()
    if exc is not None:  # a rejected call leaves the model untouched
        for a, b in zip(before, after):
            np.testing.assert_array_equal(a, b)
    else:
        for w, a in zip(weights, after):
            assert a.shape == np.shape(w) and np.all(np.isfinite(a))


def test_set_weights_rejects_values_that_overflow_float32():
    model = model_for("mse", "float32")
    weights = model.get_weights()
    weights[0] = weights[0].astype(np.float64)
    weights[0][0, 0] = 1e39
    _, exc = call(lambda: model.set_weights(weights), ["weights[0]"])
    assert isinstance(exc, gb.InvalidInputError)


@pytest.mark.parametrize("weights", ["ragged", None], ids=["ragged", "none"])
def test_set_weights_rejects_non_arrays(weights):
    model = model_for("mse", "float32")
    if weights == "ragged":
        weights = model.get_weights()
        weights[0] = [[1.0, 2.0, 3.0], [1.0]]
    _, exc = call(lambda: model.set_weights(weights), ["weights", "set_weights"])
    assert isinstance(exc, gb.GpubpError)


# ---------------------------------------------------------------- constructors, callbacks, keyword arguments
# Every public constructor and callback, gradcheck and fit's keyword arguments, fed arbitrary values:
# each call works or raises a GpubpError; InvalidInputError and InvalidTypeError name the argument.
ARG_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: Ints beyond float's range (10**400), which the optimizers' own checks do not take yet: see
#: test_public_errors.py::test_optimizers_refuse_ints_beyond_float_range.
HUGE_INTS = [10 ** 400, -(10 ** 400)]
ODD_VALUES = [object(), [], [1], (), {}, {"a": 1}, b"x", 1j, np.float32(0.5), np.float64(np.nan), np.int64(3),
              np.int64(-1), np.bool_(True), np.array(2), np.array([1, 2]), np.array(0.5), np.array(["a"]),
              lambda *args: None, Fraction(1, 3), Decimal("0.1"), 1e-300, 1e300, 0.5, 2.5, 1e-8]
WORDS = ["", "auto", "min", "max", "loss", "val_loss", "accuracy", "relu", "tanh", "he", "sgd", "adam", "mse",
         "raise", "stop", "x"]
ANY_NON_TEXT = st.one_of(st.none(), st.booleans(), st.integers(-3, 8), st.integers(-(10 ** 30), 10 ** 30),
                         st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(ODD_VALUES))
ANY_BUT_HUGE = st.one_of(ANY_NON_TEXT, st.text(max_size=4), st.sampled_from(WORDS))
ANY_VALUE = st.one_of(ANY_BUT_HUGE, st.sampled_from(HUGE_INTS))
#: sizes (units, input_dim): small, or too large for any memory (refused before anything is allocated);
#: sizes beyond float's range: see test_public_errors.py::test_sizes_beyond_float_range_are_refused
SIZES = st.one_of(st.integers(-2, 5), st.sampled_from([10 ** 15, 10 ** 30]))


def attempt(fn, names):
    """Run ``fn()`` with every warning an error: ``(result, None)`` or ``(None, GpubpError)``.

    InvalidInputError and InvalidTypeError must name one of ``names``; other GpubpErrors
    (InsufficientMemory, NotCompiledError, BackendUnavailableError, ...) pass as they are;
    any other exception propagates and fails the test.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return fn(), None
        except (gb.InvalidInputError, gb.InvalidTypeError) as exc:
            assert _names_pattern(names).search(str(exc)), (
                f"{type(exc).__name__} does not name any of {names}: {exc}")
            return None, exc
        except gb.GpubpError as exc:
            return None, exc


def mostly(good, other=ANY_VALUE):
    """A value from ``good`` three times in four, else from ``other``.

    (``st.one_of`` flattens nested alternatives into equally likely branches, which would
    make the good values rare next to the many kinds of odd value.)
    """
    return st.integers(0, 3).flatmap(lambda k: good if k else other)


def maybe(valid):
    """Mostly one of the values ``valid``, else anything."""
    return mostly(st.sampled_from(valid))


def draw_kwargs(data, spec):
    """A dict with a random subset of ``spec``'s keys, each drawn from its strategy."""
    return {name: data.draw(strategy, label=name) for name, strategy in spec.items() if data.draw(st.booleans())}


def _init(kind):
    def custom(rng, fan_in, fan_out):
        return {
            "good": lambda: rng.normal(size=(fan_in, fan_out)),
            "ints": lambda: [[1] * fan_out] * fan_in,
            "float32_max": lambda: np.full((fan_in, fan_out), 3e38),
            "transposed": lambda: np.zeros((fan_out, fan_in)),
            "flat": lambda: np.zeros(fan_in * fan_out),
            "nan": lambda: np.full((fan_in, fan_out), np.nan),
            "1e39": lambda: np.full((fan_in, fan_out), 1e39),
            "longdouble": lambda: np.full((fan_in, fan_out), np.longdouble(1e39)),
            "text": lambda: "weights",
            "none": lambda: None,
            "ragged": lambda: [[0.0] * fan_out, [0.0]],
        }[kind]()
    return custom


INITS = mostly(st.one_of(st.sampled_from(["he", "glorot", "normal", None]),
                         st.sampled_from(["good", "ints"]).map(_init)),
               st.one_of(st.sampled_from(["float32_max", "transposed", "flat", "nan", "1e39", "longdouble", "text",
                                          "none", "ragged"]).map(_init),
                         st.sampled_from([lambda: None, lambda rng: None, len, print]), ANY_VALUE))


@ARG_SETTINGS
@given(units=mostly(st.integers(1, 6), st.one_of(SIZES, ANY_VALUE)),
       activation=maybe([None, "relu", "tanh", "sigmoid", "linear", "softmax"]), init=INITS,
       dtype=st.sampled_from(DTYPES))
def test_dense_property(units, activation, init, dtype):
    dense, exc = attempt(lambda: gb.Dense(units, activation=activation, init=init), ["units", "activation", "init"])
    if exc is not None or dense.units > 64:
        return
    model, exc = attempt(lambda: gb.Sequential([dense, gb.Dense(2)], input_dim=3, backend="cpu", dtype=dtype),
                         ["W", "init"])
    if exc is None:
        W = model.get_weights()[0]
        assert W.shape == (3, dense.units) and np.isfinite(W).all()
        assert model.predict(np.zeros((2, 3))).shape == (2, 2)


@ARG_SETTINGS
@given(data=st.data())
def test_sequential_property(data):
    layers = data.draw(mostly(st.sampled_from([[gb.Dense(3, activation="relu"), gb.Dense(2)], (gb.Dense(2),)]),
                              st.sampled_from([[], ["dense"], [gb.Dense(2), 3], "ab", {}, [None]])), label="layers")
    kwargs = draw_kwargs(data, {"input_dim": mostly(st.integers(1, 4), st.one_of(SIZES, ANY_BUT_HUGE)),
                                "backend": maybe(["cpu", "numpy"]),
                                "dtype": maybe(["float32", "float64", np.float64]),
                                "seed": maybe([0, 1, 2 ** 40])})
    kwargs.setdefault("backend", "cpu")
    names = ["layers", "Sequential", "input_dim", "backend", "dtype", "seed"]
    model, exc = attempt(lambda: gb.Sequential(list(layers) if isinstance(layers, tuple) else layers, **kwargs), names)
    if exc is None and model.built and model.input_dim <= 64:
        assert model.predict(np.zeros((2, model.input_dim))).shape == (2, model.n_outputs)


OPTIMIZER_ARGS = {
    gb.optim.SGD: {"lr": [0.01, 0.5], "momentum": [0.0, 0.9], "nesterov": [False, True], "weight_decay": [0, 1e-3],
                   "clip_norm": [None, 1.0], "clip_value": [None, 0.5]},
    gb.optim.Adam: {"lr": [1e-3], "beta1": [0.9, 0.0], "beta2": [0.999], "eps": [1e-8, 1e-300],
                    "weight_decay": [0, 1e-3], "clip_norm": [None, 1.0], "clip_value": [None, 0.5]},
    gb.optim.RMSprop: {"lr": [1e-3], "rho": [0.9], "eps": [1e-8, 1e-300], "weight_decay": [0.0],
                       "clip_norm": [None, 1.0], "clip_value": [None, 0.5]},
}


@ARG_SETTINGS
@given(data=st.data(), cls=st.sampled_from(sorted(OPTIMIZER_ARGS, key=lambda c: c.__name__)),
       dtype=st.sampled_from(DTYPES))
def test_optimizer_property(data, cls, dtype):
    spec = {name: mostly(st.sampled_from(valid), ANY_BUT_HUGE) for name, valid in OPTIMIZER_ARGS[cls].items()}
    kwargs = draw_kwargs(data, spec)
    names = list(OPTIMIZER_ARGS[cls]) + ["momentum"]
    optimizer, exc = attempt(lambda: cls(**kwargs), names)
    if exc is not None:
        return
    model = gb.Sequential([gb.Dense(3, activation="tanh"), gb.Dense(N_OUT)], input_dim=N_IN, backend="cpu",
                          dtype=dtype, seed=0)
    _, exc = attempt(lambda: model.compile(loss="mse", optimizer=optimizer), names)
    if exc is None and optimizer.lr <= 1:
        loss = model.train_on_batch(X6, np.eye(3)[Y6])
        assert np.isfinite(loss)


SCHEDULE_ARGS = {
    schedules.Constant: {"lr": [0.1]},
    schedules.StepDecay: {"lr": [0.1], "step_size": [1, 3], "gamma": [0.5, 0.1]},
    schedules.ExponentialDecay: {"lr": [0.1], "decay_steps": [10, 0.5], "decay_rate": [0.5]},
    schedules.InverseScaling: {"lr": [0.1], "power_t": [0.5, 0.25]},
    schedules.Cosine: {"lr": [0.1], "total_steps": [10, 1], "min_lr": [0.0, 0.05]},
}
REQUIRED = {"lr", "step_size", "decay_steps", "decay_rate", "total_steps"}


@ARG_SETTINGS
@given(data=st.data(), cls=st.sampled_from(sorted(SCHEDULE_ARGS, key=lambda c: c.__name__)))
def test_schedule_property(data, cls):
    kwargs = {name: data.draw(maybe(valid), label=name) for name, valid in SCHEDULE_ARGS[cls].items()
              if name in REQUIRED or data.draw(st.booleans())}
    schedule, exc = attempt(lambda: cls(**kwargs), list(kwargs))
    if exc is not None:
        return
    assert schedule(0) == pytest.approx(schedule.lr) and np.isfinite(schedule(0))
    assert schedules.schedule_from_config(schedule.get_config()).get_config() == schedule.get_config()
    assert gb.optim.SGD(lr=schedule).lr == schedule(0)


@ARG_SETTINGS
@given(data=st.data())
def test_early_stopping_property(data):
    kwargs = draw_kwargs(data, {"monitor": maybe(["loss", "val_loss", "accuracy"]), "patience": maybe([0, 2]),
                                "min_delta": maybe([0.0, 0.1, -0.1]), "mode": maybe(["auto", "min", "max"]),
                                "restore_best_weights": maybe([True, False])})
    stop, exc = attempt(lambda: gb.EarlyStopping(**kwargs), list(kwargs))
    if exc is None and stop.monitor == "loss":
        model = model_for("softmax_cross_entropy", "float32")
        history, exc = attempt(lambda: model.fit(X6, Y6, epochs=3, verbose=0, callbacks=[stop]), ["callbacks"])
        assert exc is None and 1 <= len(history.epoch) <= 3


@ARG_SETTINGS
@given(data=st.data())
def test_model_checkpoint_property(data):
    path = data.draw(mostly(st.just("model-{epoch}.npz"), st.one_of(ANY_NON_TEXT, st.sampled_from(HUGE_INTS))))
    kwargs = draw_kwargs(data, {"save_freq": maybe(["epoch", 2]), "save_best_only": maybe([True, False]),
                                "mode": maybe(["auto", "min", "max"])})
    checkpoint, exc = attempt(lambda: ModelCheckpoint(path, **kwargs), ["path", *kwargs])
    if exc is None:
        assert checkpoint.path == "model-{epoch}.npz"
        assert checkpoint.save_freq == "epoch" or checkpoint.save_freq >= 1


@ARG_SETTINGS
@given(data=st.data())
def test_gradcheck_property(data):
    kwargs = draw_kwargs(data, {"eps": maybe([1e-6, 1e-4]), "tolerance": maybe([1e-6, 1e-2, 0]),
                                "max_entries": maybe([None, 1, 3]), "seed": maybe([None, 0, 5])})
    model = model_for("mse", "float64")
    result, exc = attempt(lambda: gb.gradcheck(model, X6, np.eye(3)[Y6], **kwargs), list(kwargs))
    if exc is None:
        assert isinstance(result, gb.GradcheckResult) and set(result.errors) == {"W1", "b1", "W2", "b2"}


def _callbacks(kind):
    return {"none": None, "list": [gb.EarlyStopping(monitor="loss")], "single": gb.EarlyStopping(monitor="loss"),
            "tuple": (gb.History(),), "object": [object()], "string": "early", "int": 3, "mixed": [gb.History(), 1],
            "class": [gb.EarlyStopping]}[kind]


FIT_ARGS = {
    "shuffle": maybe([True, False, np.bool_(True)]),
    "callbacks": mostly(st.sampled_from(["none", "list", "single", "tuple"]).map(_callbacks),
                        st.one_of(st.sampled_from(["object", "string", "int", "mixed", "class"]).map(_callbacks),
                                  ANY_VALUE)),
    "verbose": maybe([0, 0, False]),
    "on_divergence": maybe(["raise", "stop"]),
    "checkpoint_every": maybe([1, 2]),
    "checkpoint_keep": maybe([1, 3]),
    "check_every": maybe([None, 1, 5]),
    "resume": maybe([False, True]),
    "validation_split": maybe([0.0, 0.5]),
    # paths: a fresh directory, an existing file, or no path at all (no random text: it would create directories)
    "checkpoint_dir": mostly(st.sampled_from(["<dir>", None]),
                             st.one_of(st.sampled_from(["<file>", "", "a\0b"]), ANY_NON_TEXT)),
}


@ARG_SETTINGS
@given(data=st.data())
def test_fit_keywords_property(data):
    kwargs = draw_kwargs(data, FIT_ARGS)
    model = model_for("softmax_cross_entropy", "float32")
    with tempfile.TemporaryDirectory() as tmp:
        if kwargs.get("checkpoint_dir") == "<dir>":
            kwargs["checkpoint_dir"] = os.path.join(tmp, "ckpt")
        elif kwargs.get("checkpoint_dir") == "<file>":
            kwargs["checkpoint_dir"] = os.path.join(tmp, "file")
            open(kwargs["checkpoint_dir"], "w").close()
        kwargs.setdefault("verbose", 0)
        history, exc = attempt(lambda: model.fit(X6, Y6, epochs=1, **kwargs), list(FIT_ARGS))
    if exc is None:
        assert history.epoch == [0]
        assert np.isfinite(history.history["loss"]).all()


LOSS_VALUES = ["softmax_cross_entropy", "binary_cross_entropy", "mse", "cross_entropy", "bce", "MSE",
               gb.MeanSquaredError(), gb.BinaryCrossEntropy(), gb.SoftmaxCrossEntropy(), gb.MeanSquaredError]


@ARG_SETTINGS
@given(loss=mostly(st.sampled_from(LOSS_VALUES)),
       optimizer=mostly(st.one_of(st.sampled_from(["sgd", "adam", "rmsprop", "SGD"]),
                                  st.builds(gb.optim.SGD, lr=st.sampled_from([0.01, 0.1])))),
       metrics=maybe([(), ["accuracy"], "accuracy", None, ["accuracy", "accuracy"]]),
       n_out=st.sampled_from([1, 3]), last=st.sampled_from([None, "relu"]))
def test_compile_property(loss, optimizer, metrics, n_out, last):
    model = gb.Sequential([gb.Dense(3, activation="tanh"), gb.Dense(n_out, activation=last)], input_dim=N_IN,
                          backend="cpu", seed=0)
    _, exc = attempt(lambda: model.compile(loss=loss, optimizer=optimizer, metrics=metrics),
                     ["loss", "optimizer", "metrics", "softmax_cross_entropy", "binary_cross_entropy", "lr"])
    if exc is not None:
        assert model.loss is None and model.optimizer is None and model.metrics == []
        return
    y = {"softmax_cross_entropy": Y6 % n_out, "binary_cross_entropy": (np.eye(3)[Y6][:, :n_out] > 0) * 1.0,
         "mse": np.eye(3)[Y6][:, :n_out]}[model.loss.name]
    history = model.fit(X6, y, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def _scaler(kind):
    rng = np.random.default_rng(0)
    if kind == "unfitted":
        return StandardScaler()
    if kind == "1-D":
        return StandardScaler().fit(rng.normal(size=5))
    if kind.startswith("width"):
        return StandardScaler().fit(rng.normal(size=(5, int(kind[-1]))))
    scaler = StandardScaler().fit(rng.normal(size=(5, N_IN)))
    scaler.scale_ = {"zero-scale": np.zeros(N_IN), "nan-mean": scaler.scale_, "short": scaler.scale_[:1]}[kind]
    if kind == "nan-mean":
        scaler.mean_ = np.full(N_IN, np.nan)
    return scaler


@ARG_SETTINGS
@given(kind=mostly(st.sampled_from(["unfitted", "1-D", "width1", "width2", "width2", "width4", "zero-scale",
                                     "nan-mean", "short"]).map(_scaler)),
       built=st.booleans())
def test_set_scaler_property(kind, built):
    scaler = kind
    model = gb.Sequential([gb.Dense(3, activation="tanh"), gb.Dense(N_OUT)], input_dim=N_IN if built else None,
                          backend="cpu", seed=0)
    _, exc = attempt(lambda: model.set_scaler(scaler), ["scaler", "set_scaler"])
    if exc is not None:
        assert model.scaler is None and model.built == built
        return
    if scaler is None:
        assert model.scaler is None
        return
    assert model.built and model.input_dim == len(scaler.mean_)
    X = np.random.default_rng(1).normal(size=(4, model.input_dim))
    assert np.isfinite(model.predict(X)).all()


@MODEL_PARAMS
@SETTINGS
@given(data=st.data())
def test_set_weights_on_unbuilt_model_property(loss, dtype, data):
    shapes_ = [w.shape for w in model_for(loss, dtype).get_weights()]
    n = data.draw(st.sampled_from([len(shapes_)] * 4 + [0, 1, 5]))
    weights = [_weight(data.draw, shapes_[i % len(shapes_)]) for i in range(n)]
    model = gb.Sequential([gb.Dense(3, activation="tanh"), gb.Dense(N_OUT)], backend="cpu", dtype=dtype, seed=0)
    names = [f"weights[{i}]" for i in range(n)] + ["set_weights"]
    _, exc = attempt(lambda: model.set_weights(weights), names)
    if exc is not None:
        assert not model.built  # a refused call builds nothing
    else:
        assert model.built and model.input_dim == np.shape(weights[0])[0]
        for w, a in zip(weights, model.get_weights()):
            assert a.shape == np.shape(w) and np.all(np.isfinite(a))


# ---------------------------------------------------------------- more callbacks, layers, losses, metrics, lr_find
#: fewer examples for the calls that train: they keep the file's runtime within a few seconds more
FEW = settings(max_examples=25, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: any value but ints beyond a few: for counts that would make a call run (or allocate) without end
SMALL_ANY = st.one_of(st.none(), st.booleans(), st.integers(-3, 8), st.floats(allow_nan=True, allow_infinity=True),
                      st.sampled_from(ODD_VALUES), st.text(max_size=4), st.sampled_from(WORDS))


def _fit_with(callback, epochs=2, model=None):
    model = model or model_for("softmax_cross_entropy", "float32")
    return attempt(lambda: model.fit(X6, Y6, epochs=epochs, verbose=0, callbacks=[callback]), ["callbacks"])


@FEW
@given(data=st.data())
def test_reduce_lr_on_plateau_property(data):
    kwargs = draw_kwargs(data, {"monitor": maybe(["loss", "val_loss"]), "factor": maybe([0.1, 0.5]),
                                "patience": maybe([0, 1]), "min_delta": maybe([0.0, 1e-4]), "cooldown": maybe([0, 1]),
                                "min_lr": maybe([0.0, 1e-4]), "mode": maybe(["auto", "min"]), "verbose": maybe([0])})
    reduce, exc = attempt(lambda: gb.ReduceLROnPlateau(**kwargs), list(kwargs))
    if exc is None and reduce.monitor == "loss" and not reduce.verbose:
        history, exc = _fit_with(reduce, epochs=3)
        assert exc is None
        lrs = history.history["lr"]
        assert len(lrs) == 3 and all(np.isfinite(lrs)) and lrs == sorted(lrs, reverse=True)


@FEW
@given(data=st.data())
def test_csv_logger_property(data):
    path = data.draw(mostly(st.just("<file>"), st.one_of(ANY_NON_TEXT, st.sampled_from(HUGE_INTS + ["", "a\0b"]))))
    kwargs = draw_kwargs(data, {"separator": maybe([",", ";", "\t"]), "append": maybe([False, True])})
    with tempfile.TemporaryDirectory() as tmp:
        if path == "<file>":
            path = os.path.join(tmp, "log.csv")
        logger, exc = attempt(lambda: gb.CSVLogger(path, **kwargs), ["path", *kwargs])
        if exc is None:
            _, exc = _fit_with(logger)
            assert exc is None
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
            assert len(lines) == 3 and lines[0].startswith("epoch" + logger.separator)


SCHEDULE_FUNCTIONS = [lambda epoch, lr: lr * 0.5, lambda epoch, lr: 0.01 / (epoch + 1),
                      lambda epoch, lr: np.float32(0.02), lambda epoch, lr: np.array(0.03), lambda epoch, lr: 0]
BAD_SCHEDULE_FUNCTIONS = [lambda epoch, lr: float("nan"), lambda epoch, lr: -1.0, lambda epoch, lr: "0.1",
                          lambda epoch, lr: None, lambda epoch, lr: np.array([0.1, 0.2]), lambda epoch, lr: True,
                          lambda epoch, lr: 10 ** 400, lambda epoch, lr: math.inf, lambda epoch, lr: 1j]


@FEW
@given(schedule=mostly(st.sampled_from(SCHEDULE_FUNCTIONS),
                       st.one_of(st.sampled_from(BAD_SCHEDULE_FUNCTIONS), ANY_VALUE)),
       verbose=maybe([0]))
def test_learning_rate_scheduler_property(schedule, verbose):
    scheduler, exc = attempt(lambda: gb.LearningRateScheduler(schedule, verbose=verbose), ["schedule", "verbose"])
    if exc is None and not scheduler.verbose:
        history, exc = attempt(lambda: model_for("softmax_cross_entropy", "float32").fit(
            X6, Y6, epochs=2, verbose=0, callbacks=[scheduler]), ["schedule"])
        if exc is None:
            assert [lr >= 0 and np.isfinite(lr) for lr in history.history["lr"]] == [True, True]


@FEW
@given(data=st.data())
def test_gradient_monitor_property(data):
    kwargs = draw_kwargs(data, {"every": maybe([1, 3]), "vanishing": maybe([1e-3]), "exploding": maybe([1e3, 10.0]),
                                "max_grad_norm": maybe([1e3]), "max_update_ratio": maybe([0.25]),
                                "saturation": maybe([0.02]), "max_saturated": maybe([0.5]), "max_dead": maybe([0.5]),
                                "warn": maybe([False])})
    monitor, exc = attempt(lambda: gb.GradientMonitor(**kwargs), list(kwargs))
    if exc is None and not monitor.warn:
        _, exc = _fit_with(monitor, epochs=1)
        assert exc is None and monitor.history["step"] == [0] and isinstance(monitor.report(), str)


@FEW
@given(rate=mostly(st.sampled_from([0.0, 0.25, 0.5, 0.9, np.float32(0.1)]), ANY_BUT_HUGE),
       dtype=st.sampled_from(DTYPES))
def test_dropout_property(rate, dtype):  # 10**400: see test_public_errors.py::test_rates_beyond_float_range...
    dropout, exc = attempt(lambda: gb.Dropout(rate), ["rate"])
    if exc is None:
        model = gb.Sequential([gb.Dense(4, activation="relu"), dropout, gb.Dense(N_OUT)], input_dim=N_IN,
                              backend="cpu", dtype=dtype, seed=0).compile(optimizer="sgd")
        history = model.fit(X6, Y6, epochs=1, verbose=0)
        assert 0 <= dropout.rate < 1 and np.isfinite(history.history["loss"]).all()
        assert np.isfinite(model.predict(X6)).all()


LOSS_PARAMETERS = {gb.Huber: ("delta", [1.0, 0.5, 1e-3, 100]), gb.SoftmaxCrossEntropy: ("label_smoothing", [0.0, 0.1, 0.9])}


@FEW
@given(data=st.data(), cls=st.sampled_from([gb.Huber, gb.SoftmaxCrossEntropy]))
def test_loss_parameter_property(data, cls):
    name, valid = LOSS_PARAMETERS[cls]
    value = data.draw(mostly(st.sampled_from(valid), ANY_BUT_HUGE), label=name)  # 10**400: see test_public_errors.py
    loss, exc = attempt(lambda: cls(**{name: value}), [name])
    if exc is None:
        model = gb.Sequential([gb.Dense(3, activation="tanh"), gb.Dense(N_OUT)], input_dim=N_IN, backend="cpu",
                              seed=0).compile(loss=loss, optimizer="sgd")
        assert np.isfinite(model.train_on_batch(X6, Y6 if cls is gb.SoftmaxCrossEntropy else np.eye(3)[Y6]))
        assert model.loss.parameters() == {name: float(value)}


@FEW
@given(k=mostly(st.sampled_from([1, 2, 3, np.int64(2)])))
def test_top_k_accuracy_property(k):  # a name= of its own: see test_public_errors.py::test_top_k_accuracy_names
    from gpubp.metrics import TopKAccuracy

    metric, exc = attempt(lambda: TopKAccuracy(k), ["k"])
    if exc is None:
        model = model_for("softmax_cross_entropy", "float32")
        _, exc = attempt(lambda: model.compile(loss=model.loss, optimizer=model.optimizer, metrics=[metric]),
                         ["k", "metrics", "top_k_accuracy", metric.name])
        if exc is None:
            value = model.evaluate(X6, Y6)[metric.name]
            assert 0 <= value <= 1 and (value == 1 or metric.k < N_OUT)
        model.compile(loss=model.loss, optimizer=model.optimizer)


@FEW
@given(data=st.data())
def test_lr_find_property(data):
    kwargs = draw_kwargs(data, {"start_lr": maybe([1e-5, 1e-3]), "end_lr": maybe([1.0, 10.0]),
                                "steps": mostly(st.sampled_from([2, 5, 12]), SMALL_ANY),
                                "batch_size": maybe([4, 32]), "smoothing": maybe([0.0, 0.9]),
                                "diverge_threshold": maybe([4.0, 1.5])})
    model = model_for("softmax_cross_entropy", "float32")
    before = model.get_weights()
    result, exc = attempt(lambda: gb.lr_find(model, X6, Y6, **kwargs), list(kwargs))
    if exc is None:
        assert isinstance(result, gb.LRFinderResult) and 1 <= result.steps <= kwargs.get("steps", 100)
        assert np.isfinite(result.lrs).all()
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)  # the test runs on a copy, refused or not


SKLEARN_PARAMS = {
    "hidden_layer_sizes": mostly(st.sampled_from([(3,), 4, [2, 2], (np.int64(3),)]),
                                 st.one_of(SMALL_ANY, st.sampled_from([10 ** 15, 10 ** 30, (3, 0), (3, 10 ** 30)]))),
    "activation": maybe(["relu", "tanh", "logistic", "identity"]), "solver": maybe(["adam", "sgd"]),
    "alpha": maybe([0.0, 1e-4]), "batch_size": maybe(["auto", 4]),
    "learning_rate": maybe(["constant", "invscaling", "adaptive"]), "learning_rate_init": maybe([1e-3, 0.01]),
    "power_t": maybe([0.5]), "max_iter": mostly(st.sampled_from([1, 2]), SMALL_ANY), "shuffle": maybe([True, False]),
    "random_state": maybe([None, 0, 3]), "tol": maybe([1e-4]), "verbose": maybe([False]),
    "warm_start": maybe([False, True]), "momentum": maybe([0.9, 0.0]), "nesterovs_momentum": maybe([True, False]),
    "early_stopping": maybe([False, True]), "validation_fraction": maybe([0.1, 0.25]), "beta_1": maybe([0.9]),
    "beta_2": maybe([0.999]), "epsilon": maybe([1e-8]), "n_iter_no_change": mostly(st.sampled_from([1, 10]), SMALL_ANY),
    "backend": maybe(["cpu"]), "dtype": maybe(["float32", "float64"]),
}
#: the names gpubp's own checks give some of the estimators' parameters
GPUBP_NAMES = {"alpha": ["weight_decay"], "learning_rate_init": ["lr"], "max_iter": ["epochs"], "beta_1": ["beta1"],
               "beta_2": ["beta2"], "epsilon": ["eps"], "random_state": ["seed"]}


@settings(FEW, max_examples=60)
@given(data=st.data(), classifier=st.booleans())
def test_sklearn_estimator_parameters_property(data, classifier):
    """Any parameter values construct (scikit-learn's convention); ``fit`` works or raises scikit-learn's
    ValueError/TypeError (or a GpubpError: InsufficientMemory, TrainingDiverged, ...) naming the parameter."""
    sklearn = pytest.importorskip("sklearn")
    from gpubp.sklearn import MLPClassifier, MLPRegressor

    chosen = data.draw(st.lists(st.sampled_from(sorted(SKLEARN_PARAMS)), max_size=3, unique=True), label="params")
    kwargs = {name: data.draw(SKLEARN_PARAMS[name], label=name) for name in chosen}
    kwargs.setdefault("backend", "cpu")
    kwargs.setdefault("max_iter", 2)
    estimator = (MLPClassifier if classifier else MLPRegressor)(**kwargs)
    X = np.random.default_rng(0).normal(size=(24, N_IN))
    y = (np.arange(24) % 3) if classifier else X[:, 0] - X[:, 1]
    names = [alias for name in kwargs for alias in [name] + GPUBP_NAMES.get(name, [])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)
        try:
            estimator.fit(X, y)
        except (ValueError, TypeError, gb.GpubpError) as exc:
            if not isinstance(exc, (gb.InsufficientMemory, gb.TrainingDiverged, gb.BackendUnavailableError)):
                assert _names_pattern(names).search(str(exc)), f"{type(exc).__name__} names none of {names}: {exc}"
            return
    assert estimator.predict(X).shape == y.shape
    assert np.isfinite(estimator.loss_)

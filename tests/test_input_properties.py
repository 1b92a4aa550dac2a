"""Property-based input validation: random shapes, dtypes and values thrown at the public API.

The property, for ``fit``, ``predict``, ``evaluate``, ``train_on_batch`` and ``set_weights``
on small CPU models (every loss, float32 and float64): each call either returns a valid
result (right shape, float, finite) or raises a documented :class:`gpubp.GpubpError`
whose message names the offending argument. Any other exception, and any warning
(a NumPy ``RuntimeWarning: overflow`` from a cast, say), is a failure.

Inputs whose values are huge but representable in the model dtype (|v| > 1e6) may
legitimately overflow inside the network; for those a non-finite result, or
``TrainingDiverged`` (when that error exists), is accepted too.

The hand-written cases live in ``test_input_errors.py``.
"""

import re
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gpubp as gb

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

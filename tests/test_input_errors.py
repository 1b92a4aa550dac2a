"""Bad input gets an error that names the argument and what was expected."""

import numpy as np
import pytest

import gpubp as gb


@pytest.fixture
def model():
    m = gb.Sequential([gb.Dense(4, activation="relu"), gb.Dense(3)], input_dim=2, backend="cpu", seed=0)
    return m.compile(loss="softmax_cross_entropy", optimizer="adam")


X = np.zeros((6, 2))
Y = np.array([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("bad_x,error,message", [
    (np.array([[np.nan, 1.0]] * 6), gb.InvalidInputError, "NaN or Inf values in 6 of 6 rows"),
    (np.zeros(6), gb.InvalidInputError, r"must be 2-D.*reshape"),
    (np.zeros((6, 3)), gb.InvalidInputError, "has 3 features but the model expects 2"),
    (np.array([["a", "b"]] * 6), gb.InvalidTypeError, "must hold numbers"),
    (np.zeros((0, 2)), gb.InvalidInputError, "is empty"),
])
def test_bad_features(model, bad_x, error, message):
    with pytest.raises(error, match=message):
        model.fit(bad_x, Y, verbose=0)


def test_bad_targets(model):
    with pytest.raises(gb.InvalidInputError, match="X has 6 samples but y has 5 samples"):
        model.fit(X, Y[:5], verbose=0)
    with pytest.raises(gb.InvalidInputError, match="one-hot"):
        model.fit(X, np.full((6, 3), 0.5), verbose=0)
    with pytest.raises(gb.InvalidInputError, match=r"shape \(n_samples,\)"):
        model.fit(X, Y.reshape(6, 1, 1), verbose=0)


@pytest.mark.parametrize("kwargs,message", [
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"epochs": 0}, "epochs must be an integer >= 1"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"validation_data": (np.zeros((2, 5)), np.zeros(2))}, "validation_data X has 5 features but the model expects 2"),
    ({"validation_data": np.zeros(3)}, "pair"),
    ({"validation_split": 1.5}, "validation_split"),
])
def test_bad_fit_arguments(model, kwargs, message):
    with pytest.raises(gb.InvalidInputError, match=message):
        model.fit(X, Y, verbose=0, **kwargs)


def test_bad_layer_and_model_arguments():
    with pytest.raises(gb.InvalidInputError, match="valid names"):
        gb.Dense(3, activation="swish")
    with pytest.raises(gb.InvalidInputError, match="positive integer"):
        gb.Dense(0)
    with pytest.raises(gb.InvalidInputError, match="init"):
        gb.Dense(3, init="orthogonal")
    with pytest.raises(gb.InvalidTypeError, match="Dense and Dropout layers"):
        gb.Sequential(["dense"])
    with pytest.raises(gb.InvalidInputError, match="dtype"):
        gb.Sequential([gb.Dense(1)], dtype="float16", backend="cpu")


def test_training_before_compile_says_so():
    m = gb.Sequential([gb.Dense(1)], input_dim=1, backend="cpu")
    with pytest.raises(gb.NotCompiledError, match="compile"):
        m.fit(np.zeros((2, 1)), np.zeros(2), verbose=0)


def test_errors_are_builtin_subclasses():
    assert issubclass(gb.InvalidInputError, ValueError) and issubclass(gb.InvalidTypeError, TypeError)
    assert issubclass(gb.BackendUnavailableError, RuntimeError)

"""Printing, pickling and deep-copying a Sequential: joblib, multiprocessing and "keep the best model"."""

import copy
import pickle

import numpy as np
import pytest

import gpubp as gb
from helpers import gpu_sim


def _data():
    X = np.random.default_rng(0).normal(size=(200, 4))
    return X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 1)


def _model(backend="cpu", **compile_args):
    layers = [gb.Dense(8, activation="tanh"), gb.Dropout(0.1), gb.Dense(3)]
    return gb.Sequential(layers, input_dim=4, backend=backend, seed=3).compile(
        optimizer=gb.optim.Adam(lr=0.01), **compile_args)


def _same_weights(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights()))


def test_print_shows_the_summary():
    model = _model()
    assert repr(model) == str(model) == model.summary()
    assert "Dense(4 -> 8, tanh)" in str(model) and "Dropout(rate=0.1)" in str(model)


@pytest.mark.parametrize("copy_model", [lambda m: pickle.loads(pickle.dumps(m, protocol=5)), copy.deepcopy],
                         ids=["pickle", "deepcopy"])
def test_a_copy_holds_the_weights_and_trains_on_bit_identically(copy_model):
    """Weights, scaler, labels, optimizer moments and step count, shuffle generator and dropout seed all
    come along: one more epoch of the original and of the copy give the same weights."""
    X, y = _data()
    model = _model()
    model.set_scaler(gb.data.StandardScaler().fit(X))
    model.set_labels([f"x{i}" for i in range(4)], ["a", "b", "c"])
    model.fit(X, y, epochs=2, verbose=0)
    twin = copy_model(model)
    assert twin is not model and twin.params is not model.params
    assert _same_weights(model, twin) and twin.optimizer.iterations == model.optimizer.iterations
    assert twin.classes == ["a", "b", "c"] and twin.feature_names == model.feature_names
    model.fit(X, y, epochs=1, verbose=0)
    twin.fit(X, y, epochs=1, verbose=0)
    assert _same_weights(model, twin)
    np.testing.assert_array_equal(model.predict(X), twin.predict(X))


def test_a_copy_is_independent_of_the_original():
    X, y = _data()
    model = _model()
    best = copy.deepcopy(model)
    model.fit(X, y, epochs=1, verbose=0)
    assert not _same_weights(model, best)  # keeping the best model: the copy did not move


def test_unbuilt_and_uncompiled_models_pickle():
    bare = pickle.loads(pickle.dumps(gb.Sequential([gb.Dense(3, activation="relu"), gb.Dense(2)], seed=1)))
    assert not bare.built and bare.optimizer is None and bare.layers[0].activation == "relu"
    unbuilt = pickle.loads(pickle.dumps(gb.Sequential([gb.Dense(1)]).compile(loss="mse", optimizer="sgd")))
    assert not unbuilt.built and unbuilt.loss.name == "mse"
    X, y = _data()
    unbuilt.fit(X, y[:, None].astype(float), epochs=1, verbose=0)
    assert unbuilt.built


@pytest.mark.parametrize("device", [pytest.param("gpu-sim", marks=gpu_sim)])
def test_a_model_on_the_simulated_gpu_pickles(device):
    X, y = _data()
    model = _model(backend=device)
    model.fit(X[:64], y[:64], epochs=1, batch_size=32, verbose=0)
    twin = pickle.loads(pickle.dumps(model))
    assert twin.backend.name == device and _same_weights(model, twin)

"""Backprop gradients against central differences in float64, on random architectures."""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import gpubp as gb
from helpers import random_batch

LOSSES = ["mse", "binary_cross_entropy", "softmax_cross_entropy"]


def _distance_to_relu_kinks(model, X):
    """Smallest |z| over ReLU units: a finite difference straddling z = 0 is not a derivative."""
    a, closest = np.asarray(X, dtype=np.float64), np.inf
    weights = model.get_weights()
    for layer, W, b in zip(model.layers, weights[0::2], weights[1::2]):
        z = a @ W + b
        if layer.activation == "relu":
            closest = min(closest, np.abs(z).min())
        a = {"relu": np.maximum(z, 0), "sigmoid": 1 / (1 + np.exp(-z)), "tanh": np.tanh(z)}.get(layer.activation, z)
    return closest


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    widths=st.lists(st.integers(1, 6), min_size=0, max_size=3),
    activations=st.lists(st.sampled_from(["sigmoid", "tanh", "relu", "linear"]), min_size=4, max_size=4),
    n_in=st.integers(1, 5),
    n_out=st.integers(1, 4),
    batch=st.integers(1, 9),
    loss=st.sampled_from(LOSSES),
    seed=st.integers(0, 2**16),
)
def test_gradients_match_finite_differences(widths, activations, n_in, n_out, batch, loss, seed):
    if loss == "softmax_cross_entropy":
        n_out = max(n_out, 2)
    # cross-entropy losses take logits; MSE may follow any output activation
    last = activations[-1] if loss == "mse" else "linear"
    layers = [gb.Dense(w, activation=a) for w, a in zip(widths, activations)] + [gb.Dense(n_out, activation=last)]
    model = gb.Sequential(layers, input_dim=n_in, backend="cpu", dtype="float64", seed=seed)
    model.compile(loss=loss, optimizer="sgd")
    X, y = random_batch(np.random.default_rng(seed), batch, n_in, n_out, loss)
    assume(_distance_to_relu_kinks(model, X) > 1e-4)
    result = gb.gradcheck(model, X, y)
    assert result.ok, str(result)
    assert result.max_relative_error < 1e-6


def test_gradcheck_checks_a_float32_model_in_float64():
    model = gb.Sequential([gb.Dense(5, activation="tanh"), gb.Dense(3)], input_dim=4, backend="cpu", seed=1)
    model.compile(loss="softmax_cross_entropy", optimizer="adam")
    X, y = random_batch(np.random.default_rng(0), 6, 4, 3, "softmax_cross_entropy")
    result = gb.gradcheck(model, X, y)
    assert result.ok and set(result.errors) == {"W1", "b1", "W2", "b2"}
    assert result.max_relative_error < 1e-7


def test_gradcheck_detects_a_wrong_derivative(monkeypatch):
    """A sabotaged sigmoid derivative must fail the check: the check can fail."""
    model = gb.Sequential([gb.Dense(4, activation="sigmoid"), gb.Dense(2)], input_dim=3, backend="cpu", seed=2)
    model.compile(loss="mse", optimizer="sgd")
    X, y = random_batch(np.random.default_rng(1), 5, 3, 2, "mse")
    from gpubp.layers import Dense

    monkeypatch.setattr(Dense, "activation_backward_", lambda self, kernels, dy, y, pre=None: dy)
    result = gb.gradcheck(model, X, y)
    assert not result.ok
    assert result.errors["W1"][1] > 1e-3 and result.errors["W2"][1] < 1e-6


def test_gradcheck_samples_entries_of_large_layers():
    model = gb.Sequential([gb.Dense(64, activation="relu"), gb.Dense(10)], input_dim=64, backend="cpu", seed=3)
    model.compile(loss="softmax_cross_entropy", optimizer="sgd")
    X, y = random_batch(np.random.default_rng(2), 16, 64, 10, "softmax_cross_entropy")
    result = gb.gradcheck(model, X, y, max_entries=50)
    assert result.ok, str(result)

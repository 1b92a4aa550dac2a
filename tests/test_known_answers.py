"""Hand-derived answers: the chain rule worked out with scalars, compared with the engine."""

import math

import numpy as np
import pytest

import gpubp as gb


def sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def tiny_network(backend_name, loss="mse", out_units=1):
    model = gb.Sequential([gb.Dense(2, activation="sigmoid"), gb.Dense(out_units)], input_dim=2,
                          backend=backend_name, dtype="float64", seed=0)
    W1 = np.array([[0.1, 0.2], [0.3, 0.4]])
    b1 = np.array([0.05, -0.05])
    W2 = np.array([[0.5], [-0.5]]) if out_units == 1 else np.array([[0.5, -0.2], [-0.5, 0.3]])
    b2 = np.array([0.1]) if out_units == 1 else np.array([0.1, 0.0])
    model.set_weights([W1, b1, W2, b2])
    model.compile(loss=loss, optimizer=gb.optim.SGD(lr=0.5))
    return model


def test_mse_two_layer_step_by_hand(backend_name):
    model = tiny_network(backend_name)
    x1, x2, t = 1.0, 2.0, 1.0
    # forward, one scalar at a time
    h1 = sig(x1 * 0.1 + x2 * 0.3 + 0.05)
    h2 = sig(x1 * 0.2 + x2 * 0.4 - 0.05)
    o = 0.5 * h1 - 0.5 * h2 + 0.1
    loss = 0.5 * (o - t) ** 2
    # backward: delta_out = dL/do; delta_h = W2 * delta_out * h (1 - h)
    d_o = o - t
    d1 = 0.5 * d_o * h1 * (1 - h1)
    d2 = -0.5 * d_o * h2 * (1 - h2)
    lr = 0.5
    expected = [
        np.array([[0.1 - lr * x1 * d1, 0.2 - lr * x1 * d2], [0.3 - lr * x2 * d1, 0.4 - lr * x2 * d2]]),
        np.array([0.05 - lr * d1, -0.05 - lr * d2]),
        np.array([[0.5 - lr * h1 * d_o], [-0.5 - lr * h2 * d_o]]),
        np.array([0.1 - lr * d_o]),
    ]
    assert model.predict([[x1, x2]])[0, 0] == pytest.approx(o, abs=1e-14)
    got_loss = model.train_on_batch(np.array([[x1, x2]]), np.array([t]))
    assert got_loss == pytest.approx(loss, abs=1e-14)  # the loss before the update
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)


def test_mse_batch_average_halves_gradient_of_duplicated_batch(backend_name):
    """L = 1/(2B) sum (o - t)^2: a batch of two identical rows gives the one-row gradient."""
    single = tiny_network(backend_name)
    double = tiny_network(backend_name)
    x = np.array([[1.0, 2.0]])
    single.train_on_batch(x, np.array([1.0]))
    double.train_on_batch(np.vstack([x, x]), np.array([1.0, 1.0]))
    for a, b in zip(single.get_weights(), double.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-14)


def test_softmax_cross_entropy_by_hand(backend_name):
    model = tiny_network(backend_name, loss="softmax_cross_entropy", out_units=2)
    x1, x2, label = 1.0, 2.0, 1
    h1 = sig(x1 * 0.1 + x2 * 0.3 + 0.05)
    h2 = sig(x1 * 0.2 + x2 * 0.4 - 0.05)
    z = [0.5 * h1 - 0.5 * h2 + 0.1, -0.2 * h1 + 0.3 * h2]
    p1 = math.exp(z[1]) / (math.exp(z[0]) + math.exp(z[1]))
    loss = -math.log(p1)
    np.testing.assert_allclose(model.predict([[x1, x2]]), [[1 - p1, p1]], atol=1e-14)
    assert model.train_on_batch(np.array([[x1, x2]]), np.array([label])) == pytest.approx(loss, abs=1e-14)
    # dL/dz = p - onehot; the output bias moves by -lr * that
    np.testing.assert_allclose(model.get_weights()[3], [0.1 - 0.5 * (1 - p1), 0.0 - 0.5 * (p1 - 1)], atol=1e-14)


def test_binary_cross_entropy_by_hand(backend_name):
    model = tiny_network(backend_name, loss="binary_cross_entropy")
    x1, x2, t = 1.0, 2.0, 0.0
    h1 = sig(x1 * 0.1 + x2 * 0.3 + 0.05)
    h2 = sig(x1 * 0.2 + x2 * 0.4 - 0.05)
    z = 0.5 * h1 - 0.5 * h2 + 0.1
    loss = -(t * math.log(sig(z)) + (1 - t) * math.log(1 - sig(z)))
    assert model.predict([[x1, x2]])[0, 0] == pytest.approx(sig(z), abs=1e-14)
    assert model.train_on_batch(np.array([[x1, x2]]), np.array([t])) == pytest.approx(loss, abs=1e-14)
    assert model.get_weights()[3][0] == pytest.approx(0.1 - 0.5 * (sig(z) - t), abs=1e-14)

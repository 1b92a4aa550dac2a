"""Losses through the model's public API against float64 NumPy formulas."""

import numpy as np
import pytest

import gpubp as gb


def linear_model(backend_name, n_in, n_out, loss):
    model = gb.Sequential([gb.Dense(n_out)], input_dim=n_in, backend=backend_name, dtype="float64", seed=0)
    model.compile(loss=loss, optimizer=gb.optim.SGD(lr=1.0))
    return model


def test_mse_loss_and_gradient(backend_name):
    rng = np.random.default_rng(0)
    X, T = rng.normal(size=(7, 3)), rng.normal(size=(7, 2))
    model = linear_model(backend_name, 3, 2, "mse")
    W, b = model.get_weights()
    O = X @ W + b
    assert model.evaluate(X, T)["loss"] == pytest.approx(((O - T) ** 2).sum() / (2 * 7), rel=1e-13)
    model.train_on_batch(X, T)
    np.testing.assert_allclose(model.get_weights()[0], W - X.T @ ((O - T) / 7), atol=1e-13)


def test_softmax_cross_entropy_accepts_labels_and_one_hot(backend_name):
    rng = np.random.default_rng(1)
    X, labels = rng.normal(size=(9, 4)), rng.integers(0, 3, size=9)
    model = linear_model(backend_name, 4, 3, "softmax_cross_entropy")
    W, b = model.get_weights()
    Z = X @ W + b
    logp = Z - Z.max(1, keepdims=True) - np.log(np.exp(Z - Z.max(1, keepdims=True)).sum(1, keepdims=True))
    expected = -logp[np.arange(9), labels].mean()
    assert model.evaluate(X, labels)["loss"] == pytest.approx(expected, rel=1e-13)
    assert model.evaluate(X, np.eye(3)[labels])["loss"] == pytest.approx(expected, rel=1e-13)
    np.testing.assert_allclose(model.predict(X), np.exp(logp), atol=1e-14)


def test_softmax_cross_entropy_is_stable_for_huge_logits(backend_name):
    model = linear_model(backend_name, 1, 2, "softmax_cross_entropy")
    model.set_weights([np.array([[1.0, -1.0]]), np.zeros(2)])
    X = np.array([[1e4], [-1e4]])
    result = model.evaluate(X, np.array([1, 0]))
    assert result["loss"] == pytest.approx(2e4, rel=1e-12) and np.isfinite(result["loss"])
    assert model.evaluate(X, np.array([0, 1]))["loss"] == 0.0


def test_binary_cross_entropy_mean_over_all_elements(backend_name):
    rng = np.random.default_rng(2)
    X, T = rng.normal(size=(5, 3)), (rng.random((5, 2)) > 0.5).astype(float)
    model = linear_model(backend_name, 3, 2, "binary_cross_entropy")
    W, b = model.get_weights()
    P = 1 / (1 + np.exp(-(X @ W + b)))
    expected = -(T * np.log(P) + (1 - T) * np.log(1 - P)).mean()
    assert model.evaluate(X, T)["loss"] == pytest.approx(expected, rel=1e-12)
    model.train_on_batch(X, T)
    np.testing.assert_allclose(model.get_weights()[1], b - ((P - T) / T.size).sum(0), atol=1e-14)


@pytest.mark.parametrize("last", ["sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "binary_cross_entropy"])
def test_cross_entropy_rejects_a_nonlinear_last_layer(loss, last):
    model = gb.Sequential([gb.Dense(2, activation=last)], input_dim=2, backend="cpu")
    with pytest.raises(gb.InvalidInputError, match="last Dense layer must be linear"):
        model.compile(loss=loss)


def test_softmax_activation_points_to_the_loss():
    with pytest.raises(gb.InvalidInputError, match="folded into the 'softmax_cross_entropy' loss"):
        gb.Dense(10, activation="softmax")


def test_unknown_loss_lists_valid_names():
    model = gb.Sequential([gb.Dense(2)], input_dim=2, backend="cpu")
    with pytest.raises(gb.InvalidInputError, match="valid names.*mse"):
        model.compile(loss="hinge")


def test_labels_outside_the_output_range_are_rejected():
    model = linear_model("cpu", 2, 3, "softmax_cross_entropy")
    with pytest.raises(gb.InvalidInputError, match=r"class labels must lie in \[0, 2\]"):
        model.fit(np.zeros((4, 2)), np.array([0, 1, 2, 3]), verbose=0)
    with pytest.raises(gb.InvalidInputError, match="non-integer"):
        model.fit(np.zeros((2, 2)), np.array([0.5, 1.0]), verbose=0)

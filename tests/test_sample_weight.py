"""Sample and class weights of the loss: Keras' semantics, sum_b w_b l_b / B."""

import numpy as np
import pytest

import gpubp as gb
from gpubp.errors import InvalidInputError
from gpubp.kernels import cpu, reference
from gpubp.weights import class_weights


def _model(loss="softmax_cross_entropy", outputs=3, dtype="float64"):
    model = gb.Sequential([gb.Dense(8, activation="tanh"), gb.Dense(outputs)], input_dim=4, backend="cpu",
                          dtype=dtype, seed=0)
    return model.compile(loss=loss, optimizer="sgd")


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)), rng.integers(0, 3, n)


def test_weights_of_one_are_bit_identical_to_no_weights():
    X, y = _data()
    a, b = _model(dtype="float32"), _model(dtype="float32")
    a.fit(X, y, batch_size=5, epochs=2, verbose=0)
    b.fit(X, y, batch_size=5, epochs=2, verbose=0, sample_weight=np.ones(len(y)))
    for u, v in zip(a.get_weights(), b.get_weights()):
        assert np.array_equal(u, v)


def test_integer_weights_equal_repeated_rows():
    """One full-batch step, float64: weights k_i on n rows give the gradient of the N = sum k_i rows with row
    i repeated k_i times, times N / n (the 1/B normalisation: B = n against B = N)."""
    X, y = _data(6)
    k = np.array([1, 3, 0, 2, 1, 4])
    Xr, yr = np.repeat(X, k, axis=0), np.repeat(y, k)
    a, b = _model(), _model()
    pa, pb = a.batch_plan(6, a.backend.asarray(y)), b.batch_plan(len(yr), b.backend.asarray(yr))
    pa.load(a.backend.asarray(X), a.backend.asarray(y))
    a.backend.kernels.copy_(np.asarray(k, np.float64), pa.weights)
    pb.load(b.backend.asarray(Xr), b.backend.asarray(yr))
    ga, la = a.compute_gradients(pa, weighted=True)
    gb_, lb = b.compute_gradients(pb)
    np.testing.assert_allclose(ga, gb_ * len(yr) / 6, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(la[0], lb[0] * len(yr) / 6, rtol=1e-12)


def test_balanced_class_weight_matches_scikit_learn():
    sklearn_utils = pytest.importorskip("sklearn.utils")
    y = np.array([0, 0, 0, 1, 2, 2, 0, 1])
    expected = sklearn_utils.compute_class_weight("balanced", classes=np.unique(y), y=y)
    np.testing.assert_allclose(class_weights("balanced", y, 3), expected)


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "binary_cross_entropy", "mse", "huber", "mae"])
def test_weighted_gradient_matches_finite_differences(name):
    rng = np.random.default_rng(1)
    B, K = 5, 3
    z = rng.normal(size=(B, K))
    t = rng.integers(0, K, B) if name == "softmax_cross_entropy" else rng.uniform(size=(B, K))
    w = rng.uniform(0, 2, B)
    grad, loss = np.zeros((B, K)), np.zeros(1)
    cpu.weighted_loss(name, z, t, w, grad, loss, 0.1 if name == "softmax_cross_entropy" else 1.0)
    h = 1e-6
    for b, j in [(0, 0), (2, 1), (4, 2)]:
        values = []
        for s in (h, -h):
            zz = z.copy()
            zz[b, j] += s
            out = np.zeros(1)
            reference.weighted_loss(name, zz, t, w, np.zeros((B, K)), out,
                                    0.1 if name == "softmax_cross_entropy" else 1.0)
            values.append(out[0])
        assert abs((values[0] - values[1]) / (2 * h) - grad[b, j]) < 1e-6


def test_loss_matches_torch_cross_entropy_weighted_by_hand():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    z, t, w = rng.normal(size=(7, 4)), rng.integers(0, 4, 7), rng.uniform(0, 3, 7)
    loss = np.zeros(1)
    cpu.weighted_loss("softmax_cross_entropy", z, t, w, np.zeros((7, 4)), loss, 0.0)
    rows = torch.nn.CrossEntropyLoss(reduction="none")(torch.tensor(z), torch.tensor(t)).numpy()
    assert loss[0] == pytest.approx((w * rows).sum() / 7, rel=1e-12)


def test_evaluate_weighs_the_loss():
    X, y = _data()
    model = _model()
    w = np.random.default_rng(3).uniform(0, 2, len(y))
    grad, loss = np.zeros((len(y), 3)), np.zeros(1)
    logits = np.log(model.predict(X))  # log softmax: the same cross-entropy
    cpu.weighted_loss("softmax_cross_entropy", logits, y, w, grad, loss, 0.0)
    assert model.evaluate(X, y, sample_weight=w, batch_size=7)["loss"] == pytest.approx(loss[0], rel=1e-10)


def test_fit_with_class_weight_and_weighted_validation():
    X, y = _data()
    model = _model()
    w = np.linspace(0.5, 1.5, len(y))
    history = model.fit(X, y, batch_size=8, epochs=2, verbose=0, sample_weight=w, class_weight={0: 2.0},
                        validation_data=(X, y, w))
    assert np.isfinite(history.history["val_loss"]).all()
    assert model.fit(X, y, epochs=1, verbose=0, class_weight="balanced", validation_split=0.25)


@pytest.mark.parametrize("kwargs, match", [
    ({"sample_weight": np.ones(3)}, "shape"),
    ({"sample_weight": -np.ones(24)}, ">= 0"),
    ({"sample_weight": np.full(24, np.nan)}, "finite"),
    ({"class_weight": {5: 1.0}}, "class_weight"),
    ({"class_weight": {0: -1.0}}, "class_weight"),
    ({"class_weight": "even"}, "class_weight"),
    ({"sample_weight": np.zeros(24)}, "zero for every row"),
    ({"class_weight": {0: 0.0, 1: 0.0, 2: 0.0}}, "zero for every row"),
    ({"validation_data": "zero weights"}, "validation_data sample_weight .*zero for every row"),
])
def test_bad_weights_raise(kwargs, match):
    X, y = _data()
    if kwargs.get("validation_data") == "zero weights":  # a loss of 0 whatever the model: early stopping's best
        kwargs = {"validation_data": (X, y, np.zeros(len(y)))}
    with pytest.raises(InvalidInputError, match=match):
        _model().fit(X, y, verbose=0, **kwargs)
    if "sample_weight" in kwargs:
        with pytest.raises(InvalidInputError, match=match):
            _model().evaluate(X, y, sample_weight=kwargs["sample_weight"])


def test_class_weight_with_a_regression_loss_raises():
    X, _ = _data()
    with pytest.raises(InvalidInputError, match="class_weight"):
        _model("mse", 1).fit(X, X[:, 0], verbose=0, class_weight={0: 1.0})

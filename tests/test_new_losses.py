"""The Huber and mean-absolute-error losses and label smoothing: against PyTorch, finite differences, saved configs."""

import numpy as np
import pytest

import gpubp as gb
from gpubp.checkpoint import restore_checkpoint, save_checkpoint

try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None

requires_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")


def linear_model(n_in, n_out, loss, backend="cpu", seed=0):
    model = gb.Sequential([gb.Dense(n_out)], input_dim=n_in, backend=backend, dtype="float64", seed=seed)
    return model.compile(loss=loss, optimizer=gb.optim.SGD(lr=1.0))


def _batch(loss_name, n=11, n_in=4, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in))
    y = rng.integers(0, n_out, n) if loss_name == "cross_entropy" else 2 * rng.normal(size=(n, n_out))
    return X, y


def _torch_loss_and_gradient(loss, outputs, targets):
    """PyTorch's loss of ``outputs`` and its gradient with respect to them, in float64."""
    o = torch.tensor(outputs, dtype=torch.float64, requires_grad=True)
    value = loss(o, torch.tensor(targets))
    value.backward()
    return value.item(), o.grad.numpy()


@requires_torch
@pytest.mark.parametrize("loss, torch_loss", [
    (gb.losses.Huber(), lambda: torch.nn.HuberLoss()),
    (gb.losses.Huber(delta=0.5), lambda: torch.nn.HuberLoss(delta=0.5)),
    (gb.losses.Huber(delta=3.0), lambda: torch.nn.HuberLoss(delta=3.0)),
    ("mae", lambda: torch.nn.L1Loss()),
    (gb.losses.SoftmaxCrossEntropy(label_smoothing=0.1), lambda: torch.nn.CrossEntropyLoss(label_smoothing=0.1)),
    (gb.losses.SoftmaxCrossEntropy(label_smoothing=0.5), lambda: torch.nn.CrossEntropyLoss(label_smoothing=0.5)),
], ids=["huber", "huber-0.5", "huber-3", "l1", "smoothing-0.1", "smoothing-0.5"])
def test_loss_and_gradient_match_pytorch(backend_name, loss, torch_loss):
    name = "cross_entropy" if isinstance(loss, gb.losses.SoftmaxCrossEntropy) else "regression"
    X, y = _batch(name)
    model = linear_model(4, 3, loss, backend_name)
    W, b = model.get_weights()
    O = X @ W + b
    expected_loss, dO = _torch_loss_and_gradient(torch_loss(), O, y)
    assert model.evaluate(X, y)["loss"] == pytest.approx(expected_loss, rel=1e-13)
    model.train_on_batch(X, y)  # SGD with lr 1: W - X^T dL/dO
    np.testing.assert_allclose(model.get_weights()[0], W - X.T @ dO, rtol=0, atol=1e-13)
    np.testing.assert_allclose(model.get_weights()[1], b - dO.sum(axis=0), rtol=0, atol=1e-13)


def test_huber_is_quadratic_inside_delta_and_linear_outside():
    model = linear_model(1, 1, gb.losses.Huber(delta=2.0))
    model.set_weights([np.ones((1, 1)), np.zeros(1)])
    X = np.array([[1.0], [5.0]])
    # residuals 1 (quadratic: 1/2) and 5 (linear: 2 (5 - 1) = 8); mean over the 2 elements
    assert model.evaluate(X, np.zeros(2))["loss"] == pytest.approx((0.5 + 8.0) / 2, rel=1e-15)


def test_mae_gradient_is_zero_where_the_output_equals_the_target():
    model = linear_model(1, 1, "mae")
    model.set_weights([np.ones((1, 1)), np.zeros(1)])
    model.train_on_batch(np.array([[2.0], [3.0]]), np.array([2.0, 3.0]))  # residuals exactly 0
    np.testing.assert_array_equal(model.get_weights()[0], [[1.0]])


@pytest.mark.parametrize("name, cls", [("huber", gb.Huber), ("mae", gb.MeanAbsoluteError),
                                       ("mean_absolute_error", gb.MeanAbsoluteError), ("l1", gb.MeanAbsoluteError)])
def test_losses_by_name(name, cls):
    model = linear_model(2, 2, name)
    assert type(model.loss) is cls and model.get_config()["loss"] == model.loss.name


@pytest.mark.parametrize("loss", ["huber", "mae", gb.losses.SoftmaxCrossEntropy(label_smoothing=0.2)])
def test_gradients_match_finite_differences(loss):
    """A tanh hidden layer; Huber with delta 0.3 so that residuals fall on both of its sides."""
    classify = isinstance(loss, gb.losses.SoftmaxCrossEntropy)
    loss = gb.losses.Huber(delta=0.3) if loss == "huber" else loss
    model = gb.Sequential([gb.Dense(5, activation="tanh"), gb.Dense(3)], input_dim=4, backend="cpu",
                          dtype="float64", seed=4)
    model.compile(loss=loss, optimizer="sgd")
    X, y = _batch("cross_entropy" if classify else "regression", n=7, seed=5)
    result = gb.gradcheck(model, X, y)
    assert result.max_relative_error < 1e-6, str(result)


def test_label_smoothing_changes_the_gradient():
    X, y = _batch("cross_entropy")
    plain, smoothed = (linear_model(4, 3, gb.losses.SoftmaxCrossEntropy(label_smoothing=eps)) for eps in (0.0, 0.3))
    plain.train_on_batch(X, y)
    smoothed.train_on_batch(X, y)
    assert np.abs(plain.get_weights()[0] - smoothed.get_weights()[0]).max() > 1e-3


@pytest.mark.parametrize("value, error", [(-0.1, gb.InvalidInputError), (1.0, gb.InvalidInputError),
                                          (float("nan"), gb.InvalidInputError), ("0.1", gb.InvalidTypeError),
                                          (True, gb.InvalidTypeError)])
def test_label_smoothing_outside_0_1_is_refused(value, error):
    with pytest.raises(error, match="label_smoothing"):
        gb.losses.SoftmaxCrossEntropy(label_smoothing=value)


@pytest.mark.parametrize("value, error", [(0.0, gb.InvalidInputError), (-1.0, gb.InvalidInputError),
                                          (float("inf"), gb.InvalidInputError), (None, gb.InvalidTypeError)])
def test_huber_delta_must_be_positive(value, error):
    with pytest.raises(error, match="delta"):
        gb.losses.Huber(delta=value)


def test_unknown_loss_parameters_are_refused():
    with pytest.raises(gb.InvalidInputError, match="takes the parameters"):
        gb.losses.get_loss({"name": "huber", "beta": 1.0})


@pytest.mark.parametrize("loss, saved", [
    ("huber", "huber"), (gb.losses.Huber(delta=2.5), {"name": "huber", "delta": 2.5}), ("mae", "mae"),
    ("softmax_cross_entropy", "softmax_cross_entropy"),
    (gb.losses.SoftmaxCrossEntropy(label_smoothing=0.1), {"name": "softmax_cross_entropy", "label_smoothing": 0.1}),
])
def test_loss_parameters_round_trip_through_a_model_file(tmp_path, loss, saved):
    model = linear_model(3, 2, loss)
    assert model.get_config()["loss"] == saved
    loaded = gb.load(model.save(tmp_path / "model"))
    assert type(loaded.loss) is type(model.loss) and loaded.loss.parameters() == model.loss.parameters()
    assert loaded.get_config() == model.get_config()


def test_a_checkpoint_keeps_the_loss_parameters_and_refuses_other_ones(tmp_path):
    model = linear_model(3, 2, gb.losses.Huber(delta=2.5))
    path = save_checkpoint(tmp_path, model, epoch=1)
    restore_checkpoint(path, linear_model(3, 2, gb.losses.Huber(delta=2.5)))
    with pytest.raises(gb.ModelFileError, match="loss"):
        restore_checkpoint(path, linear_model(3, 2, gb.losses.Huber(delta=1.0)))

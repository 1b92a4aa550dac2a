"""Divergence: a step whose loss, gradient or update is not finite changes nothing, and is reported exactly.

The promise (README, Reliability): after ``TrainingDiverged`` or
``on_divergence="stop"``, every parameter and every optimizer state is finite
and equal to its value before the step that first went bad, for every
optimizer, dtype and loss, at any learning rate a float32 can hold.
"""

import warnings

import numpy as np
import pytest

import gpubp as gb
from gpubp.callbacks import Callback
from helpers import random_batch, requires_simulator

OPTIMIZERS = {
    "sgd": lambda lr: gb.optim.SGD(lr=lr),
    "sgd_wd": lambda lr: gb.optim.SGD(lr=lr, weight_decay=1e-3),
    "momentum": lambda lr: gb.optim.SGD(lr=lr, momentum=0.9),
    "nesterov": lambda lr: gb.optim.SGD(lr=lr, momentum=0.9, nesterov=True),
    "adam": lambda lr: gb.optim.Adam(lr=lr),
    "rmsprop": lambda lr: gb.optim.RMSprop(lr=lr),
    "adam_clip": lambda lr: gb.optim.Adam(lr=lr, clip_norm=1.0, clip_value=0.5),
}
LOSSES = ["softmax_cross_entropy", "binary_cross_entropy", "mse", "huber", "mae"]


class Snapshots(Callback):
    """The parameters, optimizer state and step count before every step, keyed by (epoch, 1-based step)."""

    def __init__(self):
        self.before = {}
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        self.before[(self.epoch, batch + 1)] = (self.model.params.copy(),
                                                {k: v.copy() for k, v in optimizer.state.items()},
                                                optimizer.iterations)


def state_of(model):
    return model.params.copy(), {k: v.copy() for k, v in model.optimizer.state.items()}, model.optimizer.iterations


def assert_state_equal(model, expected):
    params, states, iterations = state_of(model)
    assert np.isfinite(params).all()
    np.testing.assert_array_equal(params, expected[0])
    for name, value in states.items():
        assert np.isfinite(value).all(), name
        np.testing.assert_array_equal(value, expected[1][name], err_msg=name)
    assert iterations == expected[2]


def make_model(optimizer, loss, dtype, seed=0, hidden=("relu", "tanh"), backend="cpu"):
    n_out = 1 if loss == "binary_cross_entropy" else 3
    model = gb.Sequential([gb.Dense(16, activation=hidden[0]), gb.Dense(8, activation=hidden[1]), gb.Dense(n_out)],
                          input_dim=5, backend=backend, dtype=dtype, seed=seed)
    return model.compile(loss=loss, optimizer=optimizer)


@pytest.mark.parametrize("lr", [1e10, 1e20, 1e38])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_diverged_run_keeps_the_state_from_before_the_bad_step(name, loss, dtype, lr):
    check_divergence_keeps_the_state(name, loss, dtype, lr, "cpu", batches=6, epochs=30)


@pytest.mark.gpu_sim
@requires_simulator
@pytest.mark.parametrize("name, loss", [(name, "softmax_cross_entropy") for name in sorted(OPTIMIZERS)]
                         + [("adam", loss) for loss in LOSSES[1:]])
def test_a_diverged_run_on_the_simulated_gpu_keeps_the_state_from_before_the_bad_step(name, loss):
    """The same guarantee from the GPU kernels (float32, lr 1e38): weights and optimizer state bit for bit."""
    check_divergence_keeps_the_state(name, loss, "float32", 1e38, "gpu-sim", batches=2, epochs=6)


def check_divergence_keeps_the_state(name, loss, dtype, lr, backend, batches, epochs):
    rng = np.random.default_rng(0)
    X, y = random_batch(rng, 16 * batches, 5, 1 if loss == "binary_cross_entropy" else 3, loss)
    X *= 5
    # linear hidden layers: no saturating or dying unit stops the weights from growing
    model = make_model(OPTIMIZERS[name](1e-4), loss, dtype, hidden=("linear", "linear"), backend=backend)
    model.fit(X, y, batch_size=16, epochs=1, verbose=0)  # optimizer state that is not all zero
    model.optimizer.schedule = gb.schedules.Constant(lr)
    snapshots = Snapshots()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's overflow warnings in the forward GEMM
        history = model.fit(X, y, batch_size=16, epochs=epochs, verbose=0, on_divergence="stop",
                            callbacks=[snapshots], check_every=3)
    if history.diverged is None:  # weights of 1e38 or more can stay finite in float64: nothing to check
        assert dtype == "float64" or lr < 1e38
        return
    where = (history.diverged["epoch"], history.diverged["step"])
    assert_state_equal(model, snapshots.before[where])
    assert history.diverged["reason"]


@pytest.mark.parametrize("check_every", [1, 4, None])
def test_the_first_bad_step_is_reported_exactly(check_every):
    """Batch 3 of each epoch holds a feature that overflows float32 in the first layer."""
    rng = np.random.default_rng(1)
    X, y = random_batch(rng, 80, 5, 3, "softmax_cross_entropy")
    X[40] = 3e38
    model = make_model(gb.optim.Adam(1e-3), "softmax_cross_entropy", "float32")
    snapshots = Snapshots()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(gb.TrainingDiverged, match="epoch 1, step 3 of 5: the loss is not finite") as info:
            model.fit(X, y, batch_size=16, epochs=3, shuffle=False, verbose=0, callbacks=[snapshots],
                      check_every=check_every)
    assert (info.value.epoch, info.value.step, info.value.iteration) == (0, 3, 2)
    assert "loss" in info.value.reason
    assert_state_equal(model, snapshots.before[(0, 3)])
    # the model trains on afterwards: the record was cleared and the step count rewound
    model.fit(X[:32], y[:32], batch_size=16, epochs=1, verbose=0)
    assert model.optimizer.iterations == 4


def test_train_on_batch_divergence_changes_nothing():
    rng = np.random.default_rng(0)
    X, y = random_batch(rng, 32, 5, 3, "mse")
    model = make_model(gb.optim.SGD(lr=1e38), "mse", "float32")
    with pytest.raises(gb.TrainingDiverged, match="those from before this batch") as info:
        for _ in range(20):
            before = state_of(model)
            model.train_on_batch(X * 1e3, y)
    assert isinstance(info.value, FloatingPointError)
    assert info.value.reason
    assert_state_equal(model, before)


def test_an_overflowing_update_is_not_applied():
    """Finite loss and gradient, but lr * g overflows float32: the update is refused as a whole."""
    rng = np.random.default_rng(0)
    X, y = random_batch(rng, 32, 5, 3, "mse")
    model = make_model(gb.optim.SGD(lr=1e38), "mse", "float32", hidden=("linear", "linear"))
    before = state_of(model)
    with pytest.raises(gb.TrainingDiverged, match="update overflowed"):
        model.train_on_batch(X * 1e3, y * 1e3)
    assert_state_equal(model, before)


def test_a_diverged_model_saves_and_loads(tmp_path):
    rng = np.random.default_rng(0)
    X, y = random_batch(rng, 64, 5, 3, "softmax_cross_entropy")
    model = make_model(gb.optim.SGD(lr=1e38), "softmax_cross_entropy", "float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        history = model.fit(X * 100, y, batch_size=16, epochs=5, verbose=0, on_divergence="stop")
    assert history.diverged is not None
    loaded = gb.load(model.save(tmp_path / "m.npz"), backend="cpu")
    np.testing.assert_array_equal(loaded.get_weights()[0], model.get_weights()[0])


@pytest.mark.parametrize("make", [lambda: gb.optim.Adam(eps=0), lambda: gb.optim.RMSprop(eps=0.0),
                                  lambda: gb.optim.Adam(eps=-1e-8)])
def test_eps_zero_is_refused_with_the_reason(make):
    with pytest.raises(gb.InvalidInputError, match="0/0"):
        make()


def test_eps_that_rounds_to_zero_in_float32_is_refused_at_compile():
    model = gb.Sequential([gb.Dense(2)], input_dim=3, backend="cpu", dtype="float32")
    with pytest.raises(gb.InvalidInputError, match="smallest normal float32"):
        model.compile(loss="mse", optimizer=gb.optim.Adam(eps=1e-50))
    gb.Sequential([gb.Dense(2)], input_dim=3, backend="cpu", dtype="float64").compile(
        loss="mse", optimizer=gb.optim.Adam(eps=1e-50))


def test_dead_units_with_a_small_eps_stay_finite():
    """An exactly-zero gradient entry (a constant-zero feature) with the smallest accepted eps."""
    rng = np.random.default_rng(0)
    X, y = random_batch(rng, 64, 5, 3, "softmax_cross_entropy")
    X[:, 2] = 0.0
    model = make_model(gb.optim.Adam(lr=1e-2, eps=float(np.finfo(np.float32).tiny)), "softmax_cross_entropy",
                       "float32")
    model.fit(X, y, batch_size=16, epochs=3, verbose=0)
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_clip_norm_bounds_the_step():
    rng = np.random.default_rng(0)
    X, y = random_batch(rng, 64, 5, 3, "mse")
    model = make_model(gb.optim.SGD(lr=1.0, clip_norm=0.5), "mse", "float64")
    before = model.params.copy()
    model.train_on_batch(X * 10, y * 100)
    assert np.linalg.norm(model.params - before) == pytest.approx(0.5, rel=1e-6)  # the raw gradient is far larger


def test_clip_value_bounds_every_entry():
    rng = np.random.default_rng(0)
    X, y = random_batch(rng, 64, 5, 3, "mse")
    model = make_model(gb.optim.SGD(lr=1.0, clip_value=0.01), "mse", "float64")
    before = model.params.copy()
    model.train_on_batch(X * 10, y * 100)
    step = np.abs(model.params - before)
    assert step.max() <= 0.01 + 1e-12 and step.max() > 0.009


def test_bad_divergence_arguments():
    model = make_model("sgd", "mse", "float32")
    X, y = random_batch(np.random.default_rng(0), 8, 5, 3, "mse")
    with pytest.raises(gb.InvalidInputError, match="on_divergence"):
        model.fit(X, y, verbose=0, on_divergence="ignore")
    with pytest.raises(gb.InvalidInputError, match="check_every"):
        model.fit(X, y, verbose=0, check_every=0)
    with pytest.raises(gb.InvalidInputError, match="clip_norm"):
        gb.optim.Adam(clip_norm=0)


def test_an_unrelated_arithmetic_error_is_not_called_divergence():
    """A schedule that overflows raises its own error, not TrainingDiverged."""
    model = make_model(gb.optim.SGD(lr=gb.schedules.StepDecay(0.1, step_size=1, gamma=1e300)), "mse", "float64")
    X, y = random_batch(np.random.default_rng(0), 64, 5, 3, "mse")
    with pytest.raises(OverflowError) as info:
        model.fit(X, y, batch_size=8, epochs=3, verbose=0)
    assert not isinstance(info.value, gb.TrainingDiverged)

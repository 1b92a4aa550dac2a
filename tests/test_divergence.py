"""Divergence stops training at the step where the loss (or clipped gradient) stops being finite."""

import warnings

import numpy as np
import pytest

import gpubp as gb


def exploding_model(optimizer):
    model = gb.Sequential([gb.Dense(8, activation="relu"), gb.Dense(1)], input_dim=3, backend="cpu", seed=0)
    return model.compile(loss="mse", optimizer=optimizer)


DATA = np.random.default_rng(0).normal(scale=10.0, size=(64, 3)), np.random.default_rng(1).normal(scale=100.0, size=64)


@pytest.mark.parametrize("make_optimizer", [lambda: gb.optim.SGD(lr=1.0), lambda: gb.optim.Adam(lr=1e12),
                                            lambda: gb.optim.SGD(lr=1.0, momentum=0.9)])
def test_divergence_raises_and_keeps_finite_weights(make_optimizer):
    model = exploding_model(make_optimizer())
    with pytest.raises(gb.TrainingDiverged, match=r"diverged at epoch \d+, step \d+ of 8.*smaller learning rate") as info:
        model.fit(*DATA, batch_size=8, epochs=200, verbose=0)
    assert info.value.epoch is not None and info.value.step >= 1
    assert isinstance(info.value, FloatingPointError)
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_on_divergence_stop_warns_and_returns_history():
    model = exploding_model(gb.optim.SGD(lr=1.0))
    with pytest.warns(RuntimeWarning, match="training diverged"):
        history = model.fit(*DATA, batch_size=8, epochs=200, verbose=0, on_divergence="stop")
    assert history.diverged is not None and "loss" in history.diverged["reason"]
    assert len(history.epoch) == history.diverged["epoch"]  # the diverged epoch is not logged
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_train_on_batch_divergence():
    model = exploding_model(gb.optim.SGD(lr=1.0))
    with pytest.raises(gb.TrainingDiverged, match="weights are those from before this batch"):
        for _ in range(200):
            model.train_on_batch(*DATA)
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_clip_norm_bounds_the_step():
    X, y = DATA
    model = exploding_model(gb.optim.SGD(lr=1.0, clip_norm=0.5))
    before = np.concatenate([w.ravel() for w in model.get_weights()])
    model.train_on_batch(X, y)
    after = np.concatenate([w.ravel() for w in model.get_weights()])
    assert np.linalg.norm(after - before) == pytest.approx(0.5, rel=1e-4)  # the raw gradient is far larger


def test_clip_value_bounds_every_entry():
    X, y = DATA
    model = exploding_model(gb.optim.SGD(lr=1.0, clip_value=0.01))
    before = np.concatenate([w.ravel() for w in model.get_weights()])
    model.train_on_batch(X, y)
    step = np.abs(np.concatenate([w.ravel() for w in model.get_weights()]) - before)
    assert step.max() <= 0.01 + 1e-6 and step.max() > 0.009


def test_clipping_keeps_training_stable():
    model = exploding_model(gb.optim.SGD(lr=0.01, clip_norm=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = model.fit(*DATA, batch_size=8, epochs=20, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_bad_divergence_and_clip_arguments():
    with pytest.raises(gb.InvalidInputError, match="on_divergence"):
        exploding_model("sgd").fit(*DATA, verbose=0, on_divergence="ignore")
    with pytest.raises(gb.InvalidInputError, match="clip_norm"):
        gb.optim.Adam(clip_norm=0)

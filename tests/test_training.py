"""Training end to end: accuracy on real data, reproducibility, the fit loop's contract."""

import numpy as np
import pytest

import gpubp as gb


def moons_model(backend_name, seed=0, dtype="float32"):
    model = gb.Sequential([gb.Dense(32, activation="tanh"), gb.Dense(32, activation="tanh"), gb.Dense(2)],
                          input_dim=2, backend=backend_name, dtype=dtype, seed=seed)
    return model.compile(loss="softmax_cross_entropy", optimizer=gb.optim.Adam(lr=0.01))


def test_two_moons_reaches_95_percent(backend_name, moons):
    Xtr, Xte, ytr, yte = moons
    model = moons_model(backend_name)
    history = model.fit(Xtr, ytr, batch_size=64, epochs=40, validation_data=(Xte, yte), verbose=0)
    accuracy = (model.predict(Xte).argmax(1) == yte).mean()
    assert accuracy >= 0.95
    assert history.history["val_accuracy"][-1] == pytest.approx(accuracy)


@pytest.mark.parametrize("activation,make_optimizer", [
    ("relu", lambda: gb.optim.Adam(lr=1e-3)),
    ("sigmoid", lambda: gb.optim.SGD(lr=0.5, momentum=0.9)),
    ("tanh", lambda: gb.optim.RMSprop(lr=1e-3)),
])
def test_digits_reaches_95_percent(backend_name, digits, activation, make_optimizer):
    Xtr, Xte, ytr, yte = digits
    model = gb.Sequential([gb.Dense(64, activation=activation), gb.Dense(10)], backend=backend_name, seed=0)
    model.compile(loss="softmax_cross_entropy", optimizer=make_optimizer())
    model.fit(Xtr, ytr, batch_size=32, epochs=30, verbose=0)
    assert model.evaluate(Xte, yte)["accuracy"] >= 0.95


def test_digits_with_mse_on_one_hot_targets(digits):
    Xtr, Xte, ytr, yte = digits
    model = gb.Sequential([gb.Dense(64, activation="sigmoid"), gb.Dense(10)], backend="cpu", seed=0)
    model.compile(loss="mse", optimizer=gb.optim.SGD(lr=0.1, momentum=0.9))
    model.fit(Xtr, ytr, batch_size=32, epochs=40, verbose=0)
    assert model.evaluate(Xte, yte)["accuracy"] >= 0.93


def test_same_seed_gives_bit_identical_weights(moons):
    Xtr, _, ytr, _ = moons
    runs = []
    for _ in range(2):
        model = moons_model("cpu", seed=7)
        model.fit(Xtr, ytr, batch_size=50, epochs=3, verbose=0)
        runs.append(model.get_weights())
    for a, b in zip(*runs):
        assert np.array_equal(a, b)
    other = moons_model("cpu", seed=8)
    other.fit(Xtr, ytr, batch_size=50, epochs=3, verbose=0)
    assert not np.array_equal(other.get_weights()[0], runs[0][0])


def test_partial_last_batch_and_history(moons):
    Xtr, Xte, ytr, yte = moons
    Xtr, ytr = Xtr[:1000], ytr[:1000]
    model = moons_model("cpu")
    history = model.fit(Xtr, ytr, batch_size=300, epochs=2, validation_data=(Xte, yte), verbose=0)
    assert model.optimizer.iterations == 2 * 4  # 300 + 300 + 300 + 100
    assert set(history.history) == {"loss", "val_loss", "val_accuracy", "epoch_time", "samples_per_sec"}
    assert history.epoch == [0, 1]
    # the epoch loss is the sample-weighted mean of the step losses
    assert all(np.isfinite(history.history["loss"]))
    assert history.history["samples_per_sec"][0] > 0


def test_each_sample_is_seen_once_per_epoch():
    """Mini-batches are drawn without replacement: with lr on one weight per sample, every one moves once."""
    n = 37
    X = np.eye(n)
    model = gb.Sequential([gb.Dense(1)], input_dim=n, backend="cpu", dtype="float64", seed=0)
    model.set_weights([np.zeros((n, 1)), np.zeros(1)])
    model.compile(loss="mse", optimizer=gb.optim.SGD(lr=0.1))  # the bias stays below the target 1
    model.fit(X, np.ones(n), batch_size=8, epochs=1, verbose=0)
    W = model.get_weights()[0].ravel()
    assert np.all(W > 0)  # every row of the identity contributed a gradient


def test_train_on_batch_returns_loss_before_the_update():
    model = moons_model("cpu", dtype="float64").compile(loss="softmax_cross_entropy", optimizer=gb.optim.SGD(lr=0.1))
    X, y = np.random.default_rng(0).normal(size=(16, 2)), np.arange(16) % 2
    before = model.evaluate(X, y)["loss"]
    assert model.train_on_batch(X, y) == pytest.approx(before, rel=1e-12)
    assert model.evaluate(X, y)["loss"] < before


def test_early_stopping_restores_best_weights(moons):
    Xtr, Xte, ytr, yte = moons
    model = moons_model("cpu")
    stopper = gb.EarlyStopping(monitor="val_loss", patience=2)
    # a learning rate far too high makes the validation loss stop improving quickly
    model.compile(loss="softmax_cross_entropy", optimizer=gb.optim.SGD(lr=5.0))
    history = model.fit(Xtr, ytr, batch_size=32, epochs=200, validation_data=(Xte, yte),
                        callbacks=[stopper], verbose=0)
    assert len(history.epoch) < 200 and stopper.stopped_epoch == history.epoch[-1]
    # stopped after exactly `patience` epochs without improvement
    assert history.epoch[-1] - stopper.best_epoch == 2
    best = min(history.history["val_loss"])
    assert model.evaluate(Xte, yte)["loss"] == pytest.approx(best, rel=1e-5)


def test_validation_split_holds_out_the_last_samples(moons):
    Xtr, _, ytr, _ = moons
    model = moons_model("cpu")
    history = model.fit(Xtr, ytr, epochs=1, validation_split=0.25, verbose=0)
    expected = model.evaluate(Xtr[-400:], ytr[-400:])["loss"]
    assert history.history["val_loss"][0] == pytest.approx(expected, rel=1e-6)


def test_predict_returns_host_numpy_probabilities(backend_name, moons):
    _, Xte, _, _ = moons
    model = moons_model(backend_name)
    proba = model.predict(Xte, batch_size=128)
    assert isinstance(proba, np.ndarray) and proba.dtype == np.float32 and proba.shape == (len(Xte), 2)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(proba, model.predict(Xte), atol=1e-7)  # chunking does not change results


def test_fit_prints_one_line_per_epoch_off_a_terminal(moons, capsys):
    Xtr, _, ytr, _ = moons
    moons_model("cpu").fit(Xtr, ytr, epochs=3, verbose=1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch 1/3") and "samples/s" in lines[0]


def test_model_builds_from_the_first_fit():
    model = gb.Sequential([gb.Dense(3, activation="relu"), gb.Dense(2)], backend="cpu", seed=0)
    model.compile(loss="softmax_cross_entropy", optimizer="adam")
    assert not model.built
    model.fit(np.random.default_rng(0).normal(size=(10, 5)), np.arange(10) % 2, verbose=0)
    assert model.input_dim == 5 and model.count_params() == 5 * 3 + 3 + 3 * 2 + 2


def test_recompiling_with_another_loss_rebuilds_the_buffers(moons):
    Xtr, Xte, ytr, yte = moons
    model = moons_model("cpu")
    model.fit(Xtr, ytr, batch_size=64, epochs=1, verbose=0)
    model.compile(loss="mse", optimizer=gb.optim.SGD(lr=0.05))  # labels (int) -> one-hot float targets
    model.fit(Xtr, ytr, batch_size=64, epochs=2, verbose=0)
    assert model.evaluate(Xte, yte)["accuracy"] > 0.8


def test_many_evaluation_sizes_keep_the_buffer_cache_bounded(moons):
    _, Xte, _, yte = moons
    model = moons_model("cpu")
    for n in range(50, 90):
        model.evaluate(Xte[:n], yte[:n])
    assert len(model._plans) <= 16


def test_mse_regression_reports_no_accuracy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3))
    T = np.stack([X[:, 0] - X[:, 1], X[:, 2]], axis=1)
    model = gb.Sequential([gb.Dense(8, activation="tanh"), gb.Dense(2)], input_dim=3, backend="cpu", seed=0)
    model.compile(loss="mse", optimizer=gb.optim.Adam(lr=0.01))
    history = model.fit(X, T, epochs=2, validation_data=(X, T), verbose=0)
    assert "val_accuracy" not in history.history and model.evaluate(X, T)["accuracy"] is None


def test_sigmoid_output_with_mse_learns_xor():
    """A non-linear output layer under MSE: its derivative must enter the backward pass."""
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    y = np.array([0.0, 1.0, 1.0, 0.0])
    model = gb.Sequential([gb.Dense(8, activation="tanh"), gb.Dense(1, activation="sigmoid")], input_dim=2,
                          backend="cpu", dtype="float64", seed=1)
    model.compile(loss="mse", optimizer=gb.optim.SGD(lr=2.0, momentum=0.9))
    model.fit(X, y, batch_size=4, epochs=500, verbose=0)
    np.testing.assert_array_equal(model.predict(X).ravel() > 0.5, y > 0.5)


def test_accuracy_metric_logs_training_accuracy(moons):
    Xtr, Xte, ytr, yte = moons
    model = moons_model("cpu")
    model.compile(loss="softmax_cross_entropy", optimizer=gb.optim.Adam(lr=0.01), metrics=["accuracy"])
    history = model.fit(Xtr, ytr, epochs=2, validation_data=(Xte, yte), verbose=0)
    assert history.history["accuracy"][-1] == pytest.approx(model.evaluate(Xtr, ytr)["accuracy"])
    with pytest.raises(gb.InvalidInputError, match="unknown metrics"):
        model.compile(loss="mse", metrics=["f2"])

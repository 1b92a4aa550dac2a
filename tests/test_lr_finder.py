"""The learning-rate range test: the model left as it was, the learning rates, the stop, the suggestion."""

import numpy as np
import pytest

import gpubp as gb
from gpubp.data import StandardScaler, load_builtin, train_test_split
from gpubp.errors import InvalidInputError, NotCompiledError
from gpubp.lr_finder import ExponentialRange, lr_find


def moons(n=400):
    X, y = load_builtin("moons", n_samples=n, noise=0.2, seed=0)
    return StandardScaler().fit_transform(X), y


def snapshot(model):
    state, optimizer = model.state_dict(), model.optimizer.state_dict()
    return {"params": state["params"].tobytes(), "rng": repr(state["shuffle_rng"]),
            "iterations": optimizer["iterations"],
            "state": {k: v.tobytes() for k, v in optimizer["state"].items()},
            "weights": [w.tobytes() for w in model.get_weights()]}


@pytest.mark.parametrize("optimizer", [lambda: gb.optim.Adam(lr=0.01), lambda: gb.optim.SGD(lr=0.05),
                                       lambda: gb.optim.SGD(lr=0.05, momentum=0.9, clip_norm=1.0)])
def test_the_model_is_left_bit_identical(optimizer):
    X, y = moons()
    model = gb.Sequential([gb.Dense(16, activation="tanh"), gb.Dense(2)], input_dim=2, backend="cpu", seed=0)
    model.compile(optimizer=optimizer())
    model.fit(X, y, batch_size=32, epochs=1, verbose=0)  # non-zero optimizer state and step count
    before = snapshot(model)
    result = lr_find(model, X, y, steps=60, batch_size=32)
    assert result.steps > 10
    assert snapshot(model) == before
    # and the model trains on exactly as an untouched twin does
    twin = gb.Sequential([gb.Dense(16, activation="tanh"), gb.Dense(2)], input_dim=2, backend="cpu", seed=0)
    twin.compile(optimizer=optimizer())
    twin.fit(X, y, batch_size=32, epochs=1, verbose=0)
    model.fit(X, y, batch_size=32, epochs=1, verbose=0)
    twin.fit(X, y, batch_size=32, epochs=1, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), twin.get_weights()))


def test_an_unbuilt_model_stays_unbuilt():
    X, y = moons()
    model = gb.Sequential([gb.Dense(8, activation="relu"), gb.Dense(2)], backend="cpu", seed=0).compile()
    lr_find(model, X, y, steps=20)
    assert not model.built and model.optimizer.iterations == 0


def test_the_learning_rate_grows_exponentially_between_the_bounds():
    X, y = moons()
    model = gb.Sequential([gb.Dense(8, activation="tanh"), gb.Dense(2)], input_dim=2, backend="cpu", seed=0)
    model.compile(optimizer="adam")
    result = lr_find(model, X, y, start_lr=1e-6, end_lr=1e-2, steps=41, batch_size=50)
    assert result.steps == 41 and not result.stopped_early
    assert result.lrs[0] == pytest.approx(1e-6, rel=1e-12) and result.lrs[-1] == pytest.approx(1e-2, rel=1e-12)
    np.testing.assert_allclose(result.lrs[1:] / result.lrs[:-1], 10 ** (4 / 40), rtol=1e-12)
    assert np.all(np.isfinite(result.losses)) and result.smoothed_losses.shape == result.losses.shape
    schedule = ExponentialRange(1e-6, 1e-2, 41)
    assert [schedule(i) for i in (0, 20, 40)] == pytest.approx([1e-6, 1e-4, 1e-2])
    # a range whose ratio overflows a float (1e308 / 1e-7) still runs from bound to bound
    schedule = ExponentialRange(1e-7, 1e308, 11)
    assert [schedule(i) for i in (0, 10)] == pytest.approx([1e-7, 1e308], rel=1e-9)
    result = lr_find(model, X, y, start_lr=1e-7, end_lr=1e308, steps=40, batch_size=50)
    assert result.stopped_early and 1e-7 <= result.suggestion < 1e308


def test_it_stops_when_the_loss_explodes():
    X, y = moons()
    model = gb.Sequential([gb.Dense(16, activation="relu"), gb.Dense(2)], input_dim=2, backend="cpu", seed=0)
    model.compile(optimizer=gb.optim.SGD(lr=0.1))
    result = lr_find(model, X, y, start_lr=1e-4, end_lr=1e6, steps=200, batch_size=32)
    assert result.stopped_early and result.steps < 200
    last = result.losses[-1]
    assert not np.isfinite(last) or last > result.losses[:-1].min()  # the step that exploded is the last
    assert result.lrs[-1] < 1e6 and result.suggestion < result.lrs[-1]
    assert "exploded" in result.summary()


def test_the_suggestion_on_digits_trains_a_good_model(tmp_path):
    X, y = load_builtin("digits")
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, seed=0)
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)

    def model(lr=1e-3):
        net = gb.Sequential([gb.Dense(64, activation="relu"), gb.Dense(10)], input_dim=64, backend="cpu", seed=0)
        return net.compile(optimizer=gb.optim.Adam(lr=lr))

    result = lr_find(model(), X_train, y_train, batch_size=64)
    assert 1e-4 <= result.suggestion <= 0.3, result
    assert result.suggestion < result.min_loss_lr
    trained = model(result.suggestion)
    trained.fit(X_train, y_train, batch_size=64, epochs=10, verbose=0)
    assert trained.evaluate(X_test, y_test)["accuracy"] >= 0.93

    pytest.importorskip("matplotlib")
    figure = result.plot(path=tmp_path / "lr.png")
    assert (tmp_path / "lr.png").stat().st_size > 10_000
    ax = figure.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel().startswith("learning rate")
    assert any(text.get_text().startswith("suggestion: lr") for text in ax.get_legend().get_texts())


def test_the_steps_read_the_losses_in_blocks_on_a_device():
    from test_host_reads import InstrumentedBackend, Reads

    X, y = moons()
    model = gb.Sequential([gb.Dense(8, activation="tanh"), gb.Dense(2)], input_dim=2,
                          backend=InstrumentedBackend(), seed=0).compile(optimizer="adam")
    Reads.count = 0
    result = lr_find(model, X, y, start_lr=1e-5, end_lr=1e-2, steps=40)
    assert result.steps == 40
    assert Reads.count <= 1 + 40 // 10  # the model's state once, then one block of losses per 10 steps


def test_bad_arguments_are_named():
    X, y = moons()
    model = gb.Sequential([gb.Dense(2)], input_dim=2, backend="cpu")
    with pytest.raises(NotCompiledError):
        lr_find(model, X, y)
    model.compile()
    with pytest.raises(InvalidInputError, match="end_lr must be greater than start_lr"):
        lr_find(model, X, y, start_lr=1.0, end_lr=0.1)
    with pytest.raises(InvalidInputError, match="steps"):
        lr_find(model, X, y, steps=1)
    with pytest.raises(InvalidInputError, match="smoothing"):
        lr_find(model, X, y, smoothing=1.0)

"""The gradient-flow monitor: its numbers against NumPy, its warnings, its cost and its plot."""

import warnings

import numpy as np
import pytest

import gpubp as gb
from gpubp.callbacks import GradientMonitor
from gpubp.data import StandardScaler, load_builtin
from gpubp.errors import InvalidInputError
from gpubp.gradient_monitor import GradientFlowWarning


def moons(n=600):
    X, y = load_builtin("moons", n_samples=n, noise=0.2, seed=0)
    return StandardScaler().fit_transform(X), y


def deep_net(activation, init, depth=10, width=32):
    layers = [gb.Dense(width, activation=activation, init=init) for _ in range(depth - 1)] + [gb.Dense(2)]
    return gb.Sequential(layers, input_dim=2, backend="cpu", seed=0)


def numpy_record(weights, X, y, lr, saturation=0.02):
    """One plain-SGD step of a sigmoid -> relu -> linear softmax net in float64 NumPy: per layer
    ||dL/dW||, ||W||, ||lr dW|| / ||W||, then the saturated / dead fractions after the update."""
    (W1, b1), (W2, b2), (W3, b3) = weights
    B = X.shape[0]
    y1 = 1 / (1 + np.exp(-(X @ W1 + b1)))
    y2 = np.maximum(y1 @ W2 + b2, 0)
    z3 = y2 @ W3 + b3
    p = np.exp(z3 - z3.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dz3 = (p - np.eye(3)[y]) / B
    dz2 = (dz3 @ W3.T) * (y2 > 0)
    dz1 = (dz2 @ W2.T) * y1 * (1 - y1)
    grads = [(X.T @ dz1, dz1.sum(0)), (y1.T @ dz2, dz2.sum(0)), (y2.T @ dz3, dz3.sum(0))]
    grad_norms = [np.linalg.norm(dW) for dW, _ in grads]
    weight_norms = [np.linalg.norm(W) for W, _ in weights]
    ratios = [lr * g / w for g, w in zip(grad_norms, weight_norms)]
    new = [(W - lr * dW, b - lr * db) for (W, b), (dW, db) in zip(weights, grads)]
    y1 = 1 / (1 + np.exp(-(X @ new[0][0] + new[0][1])))
    y2 = np.maximum(y1 @ new[1][0] + new[1][1], 0)
    saturated = np.mean((y1 < saturation) | (y1 > 1 - saturation))
    dead = np.mean(y2.max(axis=0) <= 0)
    return grad_norms, weight_norms, ratios, saturated, dead


def test_one_record_equals_numpy():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(32, 4))
    y = rng.integers(0, 3, size=32)
    model = gb.Sequential([gb.Dense(6, activation="sigmoid", init=lambda r, i, o: r.normal(0, 2.0, (i, o))),
                           gb.Dense(5, activation="relu"), gb.Dense(3)], input_dim=4, backend="cpu",
                          dtype="float64", seed=0)
    model.compile(optimizer=gb.optim.SGD(lr=0.5))  # plain SGD: the update would ride in the GEMMs
    w = model.get_weights()
    expected = numpy_record([(w[0], w[1]), (w[2], w[3]), (w[4], w[5])], X, y, 0.5)
    monitor = GradientMonitor(every=1, warn=False)
    model.fit(X, y, batch_size=32, epochs=1, shuffle=False, verbose=0, callbacks=[monitor])
    h = monitor.history
    assert h["step"] == [0]
    grad_norms, weight_norms, ratios, saturated, dead = expected
    np.testing.assert_allclose([v[0] for v in h["grad_norm"]], grad_norms, rtol=1e-10)
    np.testing.assert_allclose([v[0] for v in h["weight_norm"]], weight_norms, rtol=1e-12)
    np.testing.assert_allclose([v[0] for v in h["update_ratio"]], ratios, rtol=1e-9)
    assert h["saturated"][0][0] == pytest.approx(saturated) and 0 < saturated < 1
    assert h["dead"][1][0] == pytest.approx(dead)
    assert np.isnan(h["saturated"][1][0]) and np.isnan(h["dead"][0][0]) and np.isnan(h["dead"][2][0])
    # detached after fit: the hook is gone, the step is fused again and graphs are as they were
    assert model.optimizer.added_hooks == [] and model.cuda_graphs is True


def test_a_deep_sigmoid_net_with_small_weights_is_told_its_gradients_vanish():
    X, y = moons()
    model = deep_net("sigmoid", "normal").compile(optimizer=gb.optim.SGD(lr=0.1))
    monitor = GradientMonitor(every=10)
    with pytest.warns(GradientFlowWarning) as caught:
        model.fit(X, y, batch_size=32, epochs=2, verbose=0, callbacks=[monitor])
    messages = [str(w.message) for w in caught if issubclass(w.category, GradientFlowWarning)]
    vanishing = [m for m in messages if m.startswith("vanishing gradients")]
    assert len(vanishing) == 1  # once, not once per record
    assert "layers 1-" in vanishing[0] and "init='glorot'" in vanishing[0] and "relu" in vanishing[0]
    assert monitor.findings == messages
    first, last = monitor.history["grad_norm"][0], monitor.history["grad_norm"][-1]
    assert len(first) == len(monitor.history["step"]) == 4  # 38 steps, every 10
    assert max(first) < 1e-9 * min(last)
    assert "vanishing gradients" in monitor.report()


def test_a_relu_net_with_he_initialisation_is_healthy():
    X, y = moons()
    model = deep_net("relu", "he").compile(optimizer=gb.optim.SGD(lr=0.1), metrics=["accuracy"])
    monitor = GradientMonitor(every=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientFlowWarning)
        history = model.fit(X, y, batch_size=32, epochs=4, verbose=0, callbacks=[monitor])
    assert monitor.findings == [] and "no gradient-flow problems found" in monitor.report()
    assert history.history["accuracy"][-1] > 0.85
    ratios = np.array(monitor.history["grad_norm"]) / np.array(monitor.history["grad_norm"][-1])
    assert ratios.min() > 1e-2


def test_exploding_gradients_and_dead_units_are_named():
    X, y = moons()
    model = deep_net("relu", lambda rng, i, o: rng.normal(0, 1.5, (i, o)), depth=6)
    model.compile(optimizer=gb.optim.SGD(lr=0.01))
    monitor = GradientMonitor(every=1, warn=False)
    with pytest.raises(gb.TrainingDiverged):
        model.fit(X, y, batch_size=32, epochs=1, verbose=0, callbacks=[monitor])
    found = " ".join(monitor.findings)
    assert "exploding gradients at step 0" in found and "clip_norm" in found and "smaller learning rate" in found
    assert model.optimizer.added_hooks == []


def test_the_device_is_read_once_per_record():
    from test_host_reads import InstrumentedBackend, Reads

    X, y = moons(640)
    model = gb.Sequential([gb.Dense(16, activation="relu"), gb.Dense(8, activation="tanh"), gb.Dense(2)],
                          input_dim=2, backend=InstrumentedBackend(), seed=0).compile(optimizer="adam")
    model.fit(X, y, batch_size=64, epochs=1, verbose=0)
    Reads.count = 0
    model.fit(X, y, batch_size=64, epochs=2, verbose=0)
    baseline = Reads.count
    Reads.count = 0
    monitor = GradientMonitor(every=5, warn=False)
    model.fit(X, y, batch_size=64, epochs=2, verbose=0, callbacks=[monitor])
    assert len(monitor.history["step"]) == 4  # steps 20 .. 39 of the model: 20, 25, 30, 35
    assert Reads.count == baseline + 4


def test_the_plot_shows_every_layer(tmp_path):
    pytest.importorskip("matplotlib")
    X, y = moons(300)
    model = deep_net("sigmoid", "normal", depth=4).compile(optimizer=gb.optim.SGD(lr=0.1))
    monitor = GradientMonitor(every=2, warn=False)
    model.fit(X, y, batch_size=32, epochs=2, verbose=0, callbacks=[monitor])
    figure = monitor.plot(path=tmp_path / "flow.png")
    assert (tmp_path / "flow.png").stat().st_size > 20_000
    grad_ax, update_ax, unit_ax = figure.axes
    assert grad_ax.get_yscale() == "log" and len(grad_ax.lines) == 4
    assert "Update-to-weight" in update_ax.get_title() and len(unit_ax.lines) == 3  # the three sigmoid layers


def test_bad_arguments_are_named():
    with pytest.raises(InvalidInputError, match="every"):
        GradientMonitor(every=0)
    with pytest.raises(InvalidInputError, match="vanishing"):
        GradientMonitor(vanishing=2)
    with pytest.raises(InvalidInputError, match="exploding"):
        GradientMonitor(exploding=0.5)


@pytest.mark.slow
@pytest.mark.gpu_sim
def test_the_range_test_and_the_monitor_run_on_the_simulated_gpu():
    from helpers import requires_simulator

    if requires_simulator.args[0]:
        pytest.skip(requires_simulator.kwargs["reason"])
    X, y = moons(128)
    model = gb.Sequential([gb.Dense(8, activation="relu"), gb.Dense(2)], input_dim=2, backend="gpu-sim", seed=0)
    model.compile(optimizer=gb.optim.SGD(lr=0.1))
    before = [w.tobytes() for w in model.get_weights()]
    result = gb.lr_find(model, X, y, start_lr=1e-4, end_lr=1.0, steps=20, batch_size=32)
    assert result.steps == 20 and [w.tobytes() for w in model.get_weights()] == before
    monitor = GradientMonitor(every=3, warn=False)
    model.fit(X, y, batch_size=32, epochs=2, verbose=0, callbacks=[monitor])
    assert monitor.history["step"] == [0, 3, 6] and monitor.findings == []
    assert model.cuda_graphs is True and model.optimizer.added_hooks == []

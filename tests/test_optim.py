"""Optimizer updates through a one-layer model against hand-written float64 NumPy updates."""

import math

import numpy as np
import pytest

import gpubp as gb
from gpubp import schedules


def run_and_reference(backend_name, optimizer, reference_update, steps=4, weight_decay=0.0):
    """Train a linear MSE model for ``steps`` steps; replay the same math in NumPy."""
    rng = np.random.default_rng(0)
    X, T = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    model = gb.Sequential([gb.Dense(2)], input_dim=3, backend=backend_name, dtype="float64", seed=0)
    model.set_weights([rng.normal(size=(3, 2)), rng.normal(size=2)])
    model.compile(loss="mse", optimizer=optimizer)
    W, b = model.get_weights()
    state = {}
    for t in range(1, steps + 1):
        model.train_on_batch(X, T)
        G = (X @ W + b - T) / 6
        gW, gb_ = X.T @ G + weight_decay * W, G.sum(0)  # decay on weights only
        W = reference_update(W, gW, state, "W", t)
        b = reference_update(b, gb_, state, "b", t)
    got_W, got_b = model.get_weights()
    np.testing.assert_allclose(got_W, W, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(got_b, b, rtol=1e-12, atol=1e-13)


def test_plain_sgd(backend_name):
    run_and_reference(backend_name, gb.optim.SGD(lr=0.1), lambda p, g, s, k, t: p - 0.1 * g)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_and_weight_decay(backend_name, nesterov):
    def update(p, g, s, k, t):
        v = s[k] = 0.9 * s.get(k, 0) + g
        return p - 0.05 * (g + 0.9 * v if nesterov else v)

    run_and_reference(backend_name, gb.optim.SGD(lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.01),
                      update, weight_decay=0.01)


def test_adam(backend_name):
    def update(p, g, s, k, t):
        m = s[k + "m"] = 0.9 * s.get(k + "m", 0) + 0.1 * g
        v = s[k + "v"] = 0.999 * s.get(k + "v", 0) + 0.001 * g * g
        mhat, vhat = m / (1 - 0.9**t), v / (1 - 0.999**t)
        return p - 0.01 * mhat / (np.sqrt(vhat) + 1e-8)

    run_and_reference(backend_name, gb.optim.Adam(lr=0.01), update, steps=6)


def test_rmsprop(backend_name):
    def update(p, g, s, k, t):
        v = s[k] = 0.9 * s.get(k, 0) + 0.1 * g * g
        return p - 0.01 * g / (np.sqrt(v) + 1e-8)

    run_and_reference(backend_name, gb.optim.RMSprop(lr=0.01), update)


def test_schedule_drives_the_learning_rate(backend_name):
    sched = schedules.StepDecay(0.1, step_size=2, gamma=0.5)
    run_and_reference(backend_name, gb.optim.SGD(lr=sched),
                      lambda p, g, s, k, t: p - 0.1 * 0.5 ** ((t - 1) // 2) * g, steps=5)


def test_schedule_values():
    assert schedules.Constant(0.3)(100) == 0.3
    assert schedules.StepDecay(1.0, 10, 0.1)(25) == pytest.approx(0.01)
    assert schedules.ExponentialDecay(1.0, 10, 0.5)(20) == pytest.approx(0.25)
    assert schedules.InverseScaling(1.0, 0.5)(3) == pytest.approx(0.5)
    cos = schedules.Cosine(1.0, total_steps=100, min_lr=0.1)
    assert cos(0) == pytest.approx(1.0) and cos(50) == pytest.approx(0.55) and cos(100) == cos(500) == pytest.approx(0.1)


@pytest.mark.parametrize("bad", [0, -1e-3, float("nan"), float("inf"), "fast", None])
def test_bad_learning_rates_are_rejected(bad):
    with pytest.raises(gb.InvalidInputError, match="lr must be a finite number > 0"):
        gb.optim.SGD(lr=bad)


def test_bad_hyperparameters_are_rejected():
    with pytest.raises(gb.InvalidInputError, match="momentum"):
        gb.optim.SGD(momentum=1.5)
    with pytest.raises(gb.InvalidInputError, match="nesterov"):
        gb.optim.SGD(nesterov=True)
    with pytest.raises(gb.InvalidInputError, match="beta2"):
        gb.optim.Adam(beta2=1.0)
    with pytest.raises(gb.InvalidInputError, match="valid names"):
        gb.Sequential([gb.Dense(1)], input_dim=1, backend="cpu").compile(loss="mse", optimizer="lbfgs")


def test_optimizer_names_give_default_instances():
    model = gb.Sequential([gb.Dense(1)], input_dim=1, backend="cpu").compile(loss="mse", optimizer="RMSprop")
    assert isinstance(model.optimizer, gb.optim.RMSprop) and math.isclose(model.optimizer.lr, 1e-3)


@pytest.fixture(params=["openblas", "mkl", "matmul-fallback"])
def blas_route(request, monkeypatch):
    """Plain SGD runs inside the weight-gradient GEMM through a CBLAS (NumPy's OpenBLAS, or oneMKL serving
    every GEMM), or through the matmul fallback when there is none; each must give the textbook update."""
    from gpubp.kernels import blas

    library = None
    if request.param != "matmul-fallback":
        library = blas.load_openblas() if request.param == "openblas" else blas.load_mkl()
        if library is None:
            pytest.skip(f"{request.param} has no ILP64 CBLAS gemm here")
    monkeypatch.setattr(blas, "LIBRARY", library)
    monkeypatch.setattr(blas, "AVAILABLE", library is not None)
    monkeypatch.setattr(blas, "SERVES_ALL_GEMMS", request.param == "mkl")
    return request.param


def test_plain_sgd_with_weight_decay_fused_into_the_gemm(blas_route):
    run_and_reference("cpu", gb.optim.SGD(lr=0.1, weight_decay=0.05), lambda p, g, s, k, t: p - 0.1 * g,
                      steps=3, weight_decay=0.05)

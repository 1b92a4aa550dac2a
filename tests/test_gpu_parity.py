"""NumPy <-> CuPy parity: the same seed gives the same loss curve and weights within float32 tolerance."""

import numpy as np
import pytest

import gpubp as gb
from helpers import requires_gpu

pytestmark = [pytest.mark.gpu, requires_gpu]


@pytest.mark.parametrize("loss,activation,make_optimizer", [
    ("softmax_cross_entropy", "relu", lambda: gb.optim.Adam(lr=0.01)),
    ("mse", "sigmoid", lambda: gb.optim.SGD(lr=0.1, momentum=0.9)),
    ("binary_cross_entropy", "tanh", lambda: gb.optim.RMSprop(lr=0.01)),
    ("softmax_cross_entropy", "tanh", lambda: gb.optim.SGD(lr=0.1, weight_decay=1e-3)),  # fused into cuBLAS
])
def test_cpu_and_gpu_train_alike(moons, loss, activation, make_optimizer):
    Xtr, Xte, ytr, yte = moons
    curves, weights = [], []
    for backend in ("cpu", "gpu"):
        n_out = 1 if loss == "binary_cross_entropy" else 2
        model = gb.Sequential([gb.Dense(16, activation=activation), gb.Dense(16, activation=activation),
                               gb.Dense(n_out)], input_dim=2, backend=backend, seed=3)
        model.compile(loss=loss, optimizer=make_optimizer())
        history = model.fit(Xtr, ytr, batch_size=64, epochs=3, validation_data=(Xte, yte), verbose=0)
        curves.append(history.history["loss"] + history.history["val_loss"])
        weights.append(model.get_weights())
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-4)
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_fused_gpu_kernels_match_cpu_kernels():
    import cupy

    from gpubp.kernels import cpu, cuda

    rng = np.random.default_rng(0)
    z, b = rng.normal(scale=5, size=(300, 70)).astype(np.float32), rng.normal(size=70).astype(np.float32)
    for act in ("linear", "sigmoid", "tanh", "relu"):
        host, dev = z.copy(), cupy.asarray(z)  # the kernels work in place and return None
        cpu.bias_activation_(host, b, act)
        cuda.bias_activation_(dev, cupy.asarray(b), act)
        np.testing.assert_allclose(cupy.asnumpy(dev), host, atol=1e-6)
        d = rng.normal(size=z.shape).astype(np.float32)
        back_host, back_dev = host.copy(), dev.copy()
        cpu.activation_backward_(d, back_host, act)
        cuda.activation_backward_(cupy.asarray(d), back_dev, act)
        np.testing.assert_allclose(cupy.asnumpy(back_dev), back_host, atol=1e-6)
    labels = rng.integers(0, 70, size=300)
    g_host, g_dev = np.empty_like(z), cupy.empty(z.shape, cupy.float32)
    loss_host, loss_dev = np.zeros(1), cupy.zeros(1)
    cpu.softmax_cross_entropy(z, labels, g_host, loss_host, 0.0)
    cuda.softmax_cross_entropy(cupy.asarray(z), cupy.asarray(labels), g_dev, loss_dev, 0.0)
    assert float(loss_dev[0]) == pytest.approx(float(loss_host[0]), rel=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(g_dev), g_host, atol=1e-7)

"""Helpers shared by the test modules (imported by name: pytest puts this folder on sys.path)."""

import numpy as np
import pytest

from gpubp.backend import probe_cupy, simulator_enabled

_cupy, GPU_MISSING = probe_cupy()
requires_gpu = pytest.mark.skipif(_cupy is None, reason=f"no GPU backend: {GPU_MISSING}")
#: the GPU kernels and step on Numba's CUDA simulator (on by default where no NVIDIA driver is present)
requires_simulator = pytest.mark.skipif(
    not simulator_enabled(),
    reason="Numba's CUDA simulator is off (an NVIDIA driver is present, so the gpu tests run the kernels on "
           "the device); run with NUMBA_ENABLE_CUDASIM=1 to use it")
gpu_sim = [pytest.mark.gpu_sim, requires_simulator]
BACKENDS = ["cpu", pytest.param("gpu", marks=[pytest.mark.gpu, requires_gpu])]


def random_batch(rng, n, n_in, n_out, loss):
    """Random (X, y) in the target layout of ``loss``."""
    X = rng.normal(size=(n, n_in))
    if loss == "softmax_cross_entropy":
        y = rng.integers(0, n_out, size=n)
    elif loss == "binary_cross_entropy":
        y = (rng.random((n, n_out)) > 0.5).astype(np.float64)
    else:
        y = rng.normal(size=(n, n_out))
    return X, y

"""Shared fixtures: the backends to run on, and small data sets."""

import pytest

from helpers import BACKENDS


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    """Runs a test once per backend; the GPU run skips with the reason when CuPy or a device is missing."""
    return request.param


@pytest.fixture(scope="session")
def moons():
    """Two moons (2000 samples, noise 0.2, seed 0), standardized, 80/20 split."""
    from gpubp.data import StandardScaler, load_builtin, train_test_split

    X, y = load_builtin("moons", 2000, 0.2, 0)
    Xtr, Xte, ytr, yte = train_test_split(X, y, 0.2, seed=0)
    scaler = StandardScaler().fit(Xtr)
    return scaler.transform(Xtr), scaler.transform(Xte), ytr, yte


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled 8x8 digits scaled to [0, 1], stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


#: Largest size a simulated-GPU contract case may use: Numba's CUDA simulator runs a Python thread per CUDA
#: thread, so the simulated device takes the contract's small cases (rows that do not fill a block, K = 1,
#: K wider than a row's threads, every dtype and edge value) and leaves the 1001-row sizes to the CPU and GPU.
SIMULATOR_MAX_SIZE = 40


def _too_big_for_the_simulator(item):
    callspec = getattr(item, "callspec", None)
    if callspec is None or callspec.params.get("device") != "gpu-sim":
        return False
    for value in callspec.params.values():
        values = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, int) and not isinstance(v, bool) and v > SIMULATOR_MAX_SIZE for v in values):
            return True
    return False


def pytest_collection_modifyitems(config, items):
    kept = [item for item in items if not _too_big_for_the_simulator(item)]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if _too_big_for_the_simulator(item)])
        items[:] = kept
